// winograd.cu: 3×3, stride-1 convolution by Winograd's minimal filtering (Lavin & Gray 2016), NCHW float32:
// F(2×2, 3×3) and F(4×4, 3×3), forward and backward-filter. F(m×m, 3×3) computes each m×m block of outputs
// from an α×α input patch, α = m + 2, with α² multiplies a channel instead of 9·m²: F(2×2) 16 for 4 outputs
// (2.25× fewer FLOPs than the direct conv), F(4×4) 36 for 16 (4×).
//
// Forward (either size; tile t over TH = ⌈OH/m⌉ by TW = ⌈OW/m⌉ tiles an image):
//   U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ]                                  filter transform, w[k,c] 3×3
//   V[ξ][c][t] = (Bᵀ · d[c,t] · B)[ξ],  d[c,t][a][e] = x[n, c, m·th − pt + a, m·tw − pl + e]   (0 outside x)
//   M[ξ][k][t] = Σ_c U[ξ][c][k] · V[ξ][c][t]                           α² GEMMs, K×C by C×T
//   y[n, k, m·th + i, m·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j])   for the outputs inside y
// Backward-filter (either size): tile t's outputs are Aᵀ·(U ⊙ V[t])·A, so Σ dy·y = Σ_t ⟨dy[k,t], Aᵀ·(U ⊙ V[t])·A⟩
// = Σ_t Σ_ξ (A·dy[k,t]·Aᵀ)[ξ] · U[ξ][c][k] · V[ξ][c][t], and with U = G·w·Gᵀ its gradient in w is Gᵀ·(Σ_t …)·G:
//   DY[k][ξ][t] = (A · dy[k,t] · Aᵀ)[ξ],  dy[k,t][i][j] = dy[n, k, m·th + i, m·tw + j]      (0 past OH, OW)
//   V[c][ξ][t]  as the forward's (same patches, same B; another layout)
//   P[ξ·S + s][k][c] = Σ_{t in chunk s} DY[k][ξ][t] · V[c][ξ][t]     α²·S GEMMs, K×Tc by Tc×C
//   dw[k, c] = Gᵀ · (Σ_s P[ξ·S + s][k][c])[ξ as α×α] · G                3×3 from α×α
//
// F(2×2, 3×3):
//        ⎡1  0 −1  0⎤        ⎡1   0   0⎤                              ⎡1  ½  ½  0⎤
//   Bᵀ = ⎢0  1  1  0⎥    G = ⎢½   ½   ½⎥    Aᵀ = ⎡1  1  1  0⎤    Gᵀ = ⎢0  ½ −½  0⎥    A = (Aᵀ)ᵀ
//        ⎢0 −1  1  0⎥        ⎢½  −½   ½⎥         ⎣0  1 −1 −1⎦         ⎣0  ½  ½  1⎦
//        ⎣0  1  0 −1⎦        ⎣0   0   1⎦
// F(4×4, 3×3), interpolation points 0, ±2/3, ±3/2, ∞: Toom-Cook's matrices as wincnn builds them, with the columns
// of Aᵀ and rows of Bᵀ scaled so that their entries are exact in float32 (Aᵀ's of ±2/3 by 27/8; Bᵀ's by 9/4, of ±2/3
// by 3/2) and G's rows by the inverse:
//              ⎡36   0 −97   0  36   0⎤               ⎡260   0    0⎤
//              ⎢ 0 −36 −54  16  24   0⎥               ⎢−72 −48  −32⎥              ⎡8  27  27   8   8  0⎤
//   Bᵀ = 1/16 ·⎢ 0  36 −54 −16  24   0⎥    G = 1/585 ·⎢−72  48  −32⎥    Aᵀ = 1/8 ·⎢0  18 −18  12 −12  0⎥
//              ⎢ 0 −24 −16  54  36   0⎥               ⎢ 32  48   72⎥              ⎢0  12  12  18  18  0⎥
//              ⎢ 0  24 −16 −54  36   0⎥               ⎢ 32 −48   72⎥              ⎣0   8  −8  27 −27  8⎦
//              ⎣ 0  36   0 −97   0  36⎦               ⎣  0   0  260⎦
// and again A = (Aᵀ)ᵀ (6×4), Gᵀ = (G)ᵀ (3×6). Lavin & Gray's points 0, ±1, ±2, ∞ (Aᵀ's entries up to 8, G's down
// to 1/24) are 1.7 to 2.3× less accurate in float32 at the same cost (the tables' "0, ±1, ±2" columns). These were
// the best in a float32 emulation of every 5-point set of 0, ±1, ±2, ±3, ±4, ±1/2, ±1/3, ±1/4, ±3/2, ±2/3 and of
// every 0, ±a, ±b with a, b = p/q, p, q ≤ 5 (that the points matter: Barabasz et al., ACM TOMS 2020); the rows'
// scaling and the order of the sums inside the transforms moved its error by under 2 %, FMA contraction by 6 %.
// Norm-wise error ‖y − y_f64‖ / ‖y_f64‖ of a float32 NumPy emulation of these transforms (and of F(2×2)'s, and
// the direct conv) against the float64 direct conv, standard-normal x and w, the products as one running float32
// sum over c (the GEMM's order), N 1 or 2, worst of 3 draws:
//   C → K, H² (pad)             direct    F(2×2)   F(4×4)   0, ±1, ±2
//   64 → 64, 56² (1)           2.9e-7    2.7e-7   7.7e-7     1.7e-6
//   128 → 128, 28² (1)         3.0e-7    3.7e-7   1.0e-6     2.3e-6
//   256 → 256, 14² (1)         3.0e-7    5.0e-7   1.4e-6     3.0e-6
//   512 → 512, 7² (1)          3.0e-7    6.9e-7   1.9e-6     3.6e-6
//   512 → 256, 32² (0)         3.2e-7    6.9e-7   2.0e-6     4.2e-6
// so both stay under the tests' 1e-5 (and the bench's 1e-4); F(4×4)'s margin is 5× at 512 channels.
// Backward-filter's, the same emulation (dy and x standard normal; each product one running float32 FMA sum per
// output over its chunk's tiles in order, the chunks then summed in order, as gemm.cu and filter_grad_transform
// do; the direct kernel's likewise over its N·OH·OW splits) against the float64 direct dw, with 132 SMs' splits:
// at small N on all of K × C, at N 128 on 16 × 16 of them (dw[k, c] reads only dy[:, k] and x[:, c]; worst of 3
// draws):
//                      small N: N  direct  F(2×2)  F(4×4) 0, ±1, ±2   N 128: direct  F(2×2)  F(4×4) 0, ±1, ±2
//   64 → 64, 56² (1)            2  3.0e-7  3.4e-7  8.6e-7   1.9e-6           2.0e-6  2.3e-6  2.8e-6   6.2e-6
//   128 → 128, 28² (1)          2  2.9e-7  3.0e-7  9.3e-7   2.1e-6           2.0e-6  1.2e-6  2.5e-6   5.9e-6
//   256 → 256, 14² (1)          4  3.6e-7  2.9e-7  7.6e-7   1.5e-6           2.0e-6  1.1e-6  2.7e-6   5.5e-6
//   512 → 512, 7² (1)           8  3.3e-7  2.5e-7  5.4e-7   9.3e-7           1.4e-6  9.5e-7  1.8e-6   3.2e-6
//   512 → 256, 32² (0)          2  7.6e-7  3.9e-7  1.0e-6   2.1e-6           6.2e-6  3.1e-6  2.7e-6   5.9e-6
// The error grows with the running sums' length: at N 128 the grid alone would give F(4×4) chunks of 3136 and
// 8192 tiles on the first and last layers: 4.9e-6 and 7.6e-6 (1.2e-5 and 1.6e-5 with 0, ±1, ±2); cnn_gpu/ops/conv/winograd.py bounds
// them to 1024 tiles (_WINOGRAD_FILTER_SIZES), which keeps them near the direct kernel's own error (its splits run
// 6272 to 115 200 pixels long), under 1e-5 and the bench's 1e-4. The tests' shapes (T ≤ 816) stay under 6e-7
// (F(2×2)) and 1.5e-6 (F(4×4)).
//
// ξ = α·row + col indexes the α×α transformed tile. Tile t = (n·TH + th)·TW + tw, T = N·TH·TW; tile (th, tw)
// reads input rows m·th − pt + [0, α) and columns m·tw − pl + [0, α) (neighbouring tiles overlap by 2) and
// covers outputs m·th + [0, m), m·tw + [0, m), of which those past OH / OW are dropped (forward) or read as 0
// (backward). pt / pl are conv2d.cu's pads (any padding, 'same' too).
// The products are not here: each direction's is one launch of gemm.cu (cnn_gpu.ops.gemm.cuda_gemm_k_slices)
// whose split-K slices are kept apart instead of summed. Forward: gemm_tn reads U as the K × α²·C matrix op(A)
// and V as the α²·C × T matrix B, slice ξ writes M[ξ]. Backward-filter: the reduction over T is long (25 088
// 2×2 tiles for ResNet 28², N 128) and K×C has few GEMM tiles, so it is split into S chunks of Tc tiles for
// parallelism (and, F(4×4), for precision: Tc ≤ 1024), deterministically: T is padded to T_padded = S·Tc with
// zero tiles (written by the two transforms), DY is (K, α², T_padded), i.e. the K × α²·T_padded matrix A, V is
// (C, α², T_padded), read in place as the transposed B (gemm_nt), and slice ξ·S + s (k from (ξ·S + s)·Tc) writes
// P[ξ·S + s]; Tc is a multiple of 16, so slices start 16-byte aligned on whole slabs. The filter-gradient
// transform sums the S chunks in a fixed order.
//
// Launch (all ten): 1-D, one thread per item, WINOGRAD_THREADS a block, cdiv(items, WINOGRAD_THREADS)
// blocks, no shared memory. The host checks that U, V, M, DY and P (α²·C·K, α²·C·T_padded, α²·K·T,
// α²·K·T_padded, α²·S·K·C floats) have fewer than 2^31 elements, so the items and every offset into them are
// 32-bit; offsets into x, y, dy and dw are 64-bit. Items run along k (filter), t (input, output, dy) or c
// (filter gradient) fastest, so each of a warp's α² stores into U / V / M / DY (and loads in the output and
// filter-gradient transforms) is 128 contiguous bytes; neighbouring tiles' input patches overlap and
// meet in L1 / L2. Each thread issues all its loads before the first arithmetic.
// Floors. Forward: FLOPs are the GEMM's 2·α²·K·C·T (the direct conv's 2·9·K·C·N·OH·OW, ≈ 2·9·m²·K·C·T); bytes
// moved 4·(N·C·H·W + 2·α²·C·T + 2·α²·K·T + N·K·OH·OW) beyond the GEMM's operand re-reads. The 100×100 network's conv2
// (N 128, C 512 → K 256, 32² → 30²): F(2×2) T 28 800: 121 GFLOP, V 0.94 GB, M 0.47 GB, 1.80 GB through the
// transforms; F(4×4) T 8192 (8×8 tiles of 4×4 cover 32² of the 30² outputs): 77 GFLOP, V 0.60 GB, M 0.30 GB,
// 1.29 GB. ResNet 128 → 128, 28², pad 1, N 128: F(2×2) T 25 088: 13.2 GFLOP, 0.51 GB; F(4×4) T 6272:
// 7.4 GFLOP (1.78× fewer), 0.33 GB.
// Backward-filter: 2·α²·K·C·T_padded FLOPs; bytes 4·(N·C·H·W + N·K·OH·OW + 2·α²·(C + K)·T_padded
// + 2·α²·S·K·C + 9·K·C) at least. The 100×100 network's conv2, N 128 on 132 SMs: F(2×2) T 28 800 (S 3, Tc 9600): 121 GFLOP,
// V 0.94 GB, DY 0.47 GB, ≈ 3.3 GB moved: ≥ 2.5 ms of GEMM at 48 TFLOP/s + ≈ 0.45 ms of transforms (1.8 GB);
// F(4×4) T 8192 (S 8, Tc 1024): 77 GFLOP, V 0.60 GB, DY 0.30 GB, P 0.15 GB, ≈ 1.6 GB beside the GEMM's operand
// reads: ≈ 1.7 ms of GEMM at 45 TFLOP/s + ≈ 0.45 ms. ResNet 128 → 128, 28², pad 1, N 128: F(2×2) T 25 088 (S 17,
// Tc 1488, T_padded 25 296): 13.3 GFLOP, V and DY 0.21 GB each, ≈ 0.97 GB moved: ≈ 0.28 ms of GEMM + ≈ 0.12 ms
// of transforms (0.52 GB); F(4×4) T 6272 (S 8, Tc 784): 7.4 GFLOP (1.8× fewer), V and DY 0.12 GB each: ≈ 0.16 ms
// of GEMM + ≈ 0.10 ms of transforms (0.37 GB).
// Deterministic: no atomics, a fixed order of operations per element.
#include "common.cuh"

#ifndef WINOGRAD_THREADS
#error "WINOGRAD_THREADS comes from cnn_gpu/cuda/loader.py's FAMILY_DEFINES"
#endif

// This thread's item in a launch over [0, n) items, n < 2^31; false for the threads past the end.
__device__ __forceinline__ bool item_of_thread(int n, int& item) {
    const uint32 i = blockIdx.x * blockDim.x + threadIdx.x;  // < 2^31 + blockDim.x: no unsigned wrap
    item = (int)i;
    return i < (uint32)n;
}

__device__ __forceinline__ bool inside(int i, int n) { return (unsigned)i < (unsigned)n; }

// Each size's one-axis transforms, in place on v[0], v[stride], ..., v[(α − 1)·stride] of an α×α row-major tile
// (stride α: every column, from the left; stride 1: every row, i.e. multiplying by the matrix's transpose from
// the right). M: the output tile's side; ALPHA = M + 2, the input patch's and transformed tile's.
struct F2x2 {
    static constexpr int M = 2, ALPHA = 4;

    template <int STRIDE>
    static __device__ __forceinline__ void input_axis(float* v) {  // Bᵀ·v
        const float d0 = v[0], d1 = v[STRIDE], d2 = v[2 * STRIDE], d3 = v[3 * STRIDE];
        v[0] = d0 - d2;
        v[STRIDE] = d1 + d2;
        v[2 * STRIDE] = d2 - d1;
        v[3 * STRIDE] = d1 - d3;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void filter_axis(float* v) {  // G·v: v[0..2] in, v[0..3] out
        const float g0 = v[0], g1 = v[STRIDE], g2 = v[2 * STRIDE];
        v[0] = g0;
        v[STRIDE] = 0.5f * (g0 + g1 + g2);
        v[2 * STRIDE] = 0.5f * (g0 - g1 + g2);
        v[3 * STRIDE] = g2;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void output_axis(float* v) {  // Aᵀ·v: v[0..3] in, v[0..1] out
        const float m0 = v[0], m1 = v[STRIDE], m2 = v[2 * STRIDE], m3 = v[3 * STRIDE];
        v[0] = m0 + m1 + m2;
        v[STRIDE] = m1 - m2 - m3;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void output_grad_axis(float* v) {  // A·v: v[0..1] in, v[0..3] out
        const float d0 = v[0], d1 = v[STRIDE];
        v[0] = d0;
        v[STRIDE] = d0 + d1;
        v[2 * STRIDE] = d0 - d1;
        v[3 * STRIDE] = -d1;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void filter_grad_axis(float* v) {  // Gᵀ·v: v[0..3] in, v[0..2] out
        const float m0 = v[0], m1 = v[STRIDE], m2 = v[2 * STRIDE], m3 = v[3 * STRIDE];
        v[0] = m0 + 0.5f * (m1 + m2);
        v[STRIDE] = 0.5f * (m1 - m2);
        v[2 * STRIDE] = 0.5f * (m1 + m2) + m3;
    }
};

// F(4×4)'s, factored into the even and odd halves that the rows of each ± pair of points share (as NNPACK and
// wincnn do): 12, 11, 12, 10 and 12 adds / multiplies / FMAs instead of dense 6×6, 6×3, 4×6, 6×4 and 3×6
// products. Aᵀ's and Bᵀ's constants (1, 3/2, 9/4, 27/8, 97/16) are exact in float32; G's carry the rest.
struct F4x4 {
    static constexpr int M = 4, ALPHA = 6;

    template <int STRIDE>
    static __device__ __forceinline__ void input_axis(float* v) {  // Bᵀ·v
        const float d0 = v[0], d1 = v[STRIDE], d2 = v[2 * STRIDE], d3 = v[3 * STRIDE], d4 = v[4 * STRIDE],
                    d5 = v[5 * STRIDE];
        const float a_even = d4 - 2.25f * d2, a_odd = d3 - 2.25f * d1;  // rows 1, 2 (±2/3): 1.5·even ± odd
        const float b_even = 2.25f * d4 - d2, b_odd = 2.25f * d3 - d1;  // rows 3, 4 (±3/2): even ± 1.5·odd
        v[0] = 2.25f * (d0 - 2.25f * d2) + b_even;
        v[STRIDE] = 1.5f * a_even + a_odd;
        v[2 * STRIDE] = 1.5f * a_even - a_odd;
        v[3 * STRIDE] = b_even + 1.5f * b_odd;
        v[4 * STRIDE] = b_even - 1.5f * b_odd;
        v[5 * STRIDE] = 2.25f * (d5 - 2.25f * d3) - a_odd;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void filter_axis(float* v) {  // G·v: v[0..2] in, v[0..5] out
        const float g0 = v[0], g1 = v[STRIDE], g2 = v[2 * STRIDE];
        const float odd = (16.f / 195.f) * g1;  // rows 1, 2 (±2/3): a_even ∓ odd; rows 3, 4 (±3/2): b_even ± odd
        const float a_even = (-8.f / 65.f) * g0 + (-32.f / 585.f) * g2;
        const float b_even = (32.f / 585.f) * g0 + (8.f / 65.f) * g2;
        v[0] = (4.f / 9.f) * g0;
        v[STRIDE] = a_even - odd;
        v[2 * STRIDE] = a_even + odd;
        v[3 * STRIDE] = b_even + odd;
        v[4 * STRIDE] = b_even - odd;
        v[5 * STRIDE] = (4.f / 9.f) * g2;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void output_axis(float* v) {  // Aᵀ·v: v[0..5] in, v[0..3] out
        const float m0 = v[0], m1 = v[STRIDE], m2 = v[2 * STRIDE], m3 = v[3 * STRIDE], m4 = v[4 * STRIDE],
                    m5 = v[5 * STRIDE];
        const float a_sum = m1 + m2, a_diff = m1 - m2, b_sum = m3 + m4, b_diff = m3 - m4;
        v[0] = (m0 + b_sum) + 3.375f * a_sum;
        v[STRIDE] = 2.25f * a_diff + 1.5f * b_diff;
        v[2 * STRIDE] = 1.5f * a_sum + 2.25f * b_sum;
        v[3 * STRIDE] = (a_diff + m5) + 3.375f * b_diff;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void output_grad_axis(float* v) {  // A·v: v[0..3] in, v[0..5] out
        const float d0 = v[0], d1 = v[STRIDE], d2 = v[2 * STRIDE], d3 = v[3 * STRIDE];
        const float a_even = 3.375f * d0 + 1.5f * d2, a_odd = 2.25f * d1 + d3;  // rows 1, 2: even ± odd
        const float b_even = d0 + 2.25f * d2, b_odd = 1.5f * d1 + 3.375f * d3;  // rows 3, 4: even ± odd
        v[0] = d0;
        v[STRIDE] = a_even + a_odd;
        v[2 * STRIDE] = a_even - a_odd;
        v[3 * STRIDE] = b_even + b_odd;
        v[4 * STRIDE] = b_even - b_odd;
        v[5 * STRIDE] = d3;
    }

    template <int STRIDE>
    static __device__ __forceinline__ void filter_grad_axis(float* v) {  // Gᵀ·v: v[0..5] in, v[0..2] out
        const float m0 = v[0], m1 = v[STRIDE], m2 = v[2 * STRIDE], m3 = v[3 * STRIDE], m4 = v[4 * STRIDE],
                    m5 = v[5 * STRIDE];
        const float a_sum = m1 + m2, a_diff = m1 - m2, b_sum = m3 + m4, b_diff = m3 - m4;
        v[0] = (4.f / 9.f) * m0 + (-8.f / 65.f) * a_sum + (32.f / 585.f) * b_sum;
        v[STRIDE] = (16.f / 195.f) * (b_diff - a_diff);
        v[2 * STRIDE] = (4.f / 9.f) * m5 + (-32.f / 585.f) * a_sum + (8.f / 65.f) * b_sum;
    }
};

// The transforms for one size F (F2x2 or F4x4), each an extern "C" kernel per size at the end: the forward's
// three, then backward-filter's dy and filter-gradient transforms (its input transform is the forward's).

// filter_transform: U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ]. Item c·K + k; reads w[k, c, 0..2, 0..2] (9 floats, strided
// across the warp: the filter is small), writes α² floats. Bytes: 4·9·K·C + 4·α²·C·K.
template <class F>
__device__ __forceinline__ void filter_transform(const float* __restrict__ w, float* __restrict__ U, int C, int K) {
    constexpr int A = F::ALPHA;
    int item;
    if (!item_of_thread(C * K, item)) return;
    const int c = item / K, k = item - c * K;
    const float* g = w + ((int64)k * C + c) * 9;
    float u[A * A];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int s = 0; s < 3; ++s) u[A * r + s] = __ldg(g + 3 * r + s);
#pragma unroll
    for (int s = 0; s < 3; ++s) F::template filter_axis<A>(u + s);  // columns: (G·g), α×3
#pragma unroll
    for (int r = 0; r < A; ++r) F::template filter_axis<1>(u + A * r);  // rows: (G·g)·Gᵀ, α×α
    const int plane = C * K;
#pragma unroll
    for (int xi = 0; xi < A * A; ++xi) U[xi * plane + item] = u[xi];
}

// input_transform: V[c·channel_stride + ξ·point_stride + t] = (Bᵀ · d[c,t] · B)[ξ] for t < T, 0 for
// T ≤ t < T_padded. Item c·T_padded + t; reads the tile's α×α input patch (zeros outside x), writes α² floats.
// The forward's V is (α², C, T) (strides C·T, T; T_padded = T), F(2×2) backward-filter's (C, 16, T_padded)
// (strides 16·T_padded, T_padded). Bytes: ≥ 4·N·C·H·W read, 4·α²·C·T_padded written.
template <class F>
__device__ __forceinline__ void input_transform(const float* __restrict__ x, float* __restrict__ V, int C, int H,
                                                int W, int TH, int TW, int T, int T_padded, int channel_stride,
                                                int point_stride, int pt, int pl) {
    constexpr int A = F::ALPHA;
    int item;
    if (!item_of_thread(C * T_padded, item)) return;
    const int c = item / T_padded, t = item - c * T_padded;
    float d[A * A];
    if (t < T) {
        const int image_row = t / TW, tw = t - image_row * TW;  // image_row = n·TH + th
        const int n = image_row / TH, th = image_row - n * TH;
        const float* plane = x + ((int64)n * C + c) * H * W;
        const int h0 = F::M * th - pt, w0 = F::M * tw - pl;
#pragma unroll
        for (int a = 0; a < A; ++a)
#pragma unroll
            for (int e = 0; e < A; ++e)
                d[A * a + e] = inside(h0 + a, H) && inside(w0 + e, W) ? __ldg(plane + (h0 + a) * W + (w0 + e)) : 0.f;
#pragma unroll
        for (int e = 0; e < A; ++e) F::template input_axis<A>(d + e);  // columns: Bᵀ·d
#pragma unroll
        for (int a = 0; a < A; ++a) F::template input_axis<1>(d + A * a);  // rows: (Bᵀ·d)·B
    } else {
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) d[xi] = 0.f;
    }
    float* out = V + c * channel_stride + t;
#pragma unroll
    for (int xi = 0; xi < A * A; ++xi) out[xi * point_stride] = d[xi];
}

// output_transform: y[n, k, m·th + i, m·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j]) for the outputs inside y
// (b may be NULL: no bias; act codes as common.cuh). Item k·T + t; reads α² floats of M, writes up to m² of y.
// Bytes: 4·α²·K·T read, 4·N·K·OH·OW written.
template <class F>
__device__ __forceinline__ void output_transform(const float* __restrict__ M, const float* __restrict__ bias,
                                                 float* __restrict__ y, int K, int OH, int OW, int TH, int TW, int T,
                                                 int act, float slope) {
    constexpr int A = F::ALPHA, TILE = F::M;
    int item;
    if (!item_of_thread(K * T, item)) return;
    const int k = item / T, t = item - k * T;
    const int image_row = t / TW, tw = t - image_row * TW;
    const int n = image_row / TH, th = image_row - n * TH;
    const int plane_size = K * T;
    float m[A * A];
#pragma unroll
    for (int xi = 0; xi < A * A; ++xi) m[xi] = __ldg(M + xi * plane_size + item);
#pragma unroll
    for (int e = 0; e < A; ++e) F::template output_axis<A>(m + e);  // columns: Aᵀ·m, rows 0..m−1
#pragma unroll
    for (int i = 0; i < TILE; ++i) F::template output_axis<1>(m + A * i);  // rows: (Aᵀ·m)·A, columns 0..m−1
    const float b = bias != nullptr ? __ldg(bias + k) : 0.f;
    float* out = y + ((int64)n * K + k) * OH * OW;
#pragma unroll
    for (int i = 0; i < TILE; ++i)
#pragma unroll
        for (int j = 0; j < TILE; ++j) {
            const int oh = TILE * th + i, ow = TILE * tw + j;
            if (oh < OH && ow < OW) out[oh * OW + ow] = apply_activation(m[A * i + j] + b, act, slope);
        }
}

// dy_transform: DY[k·α²·T_padded + ξ·T_padded + t] = (A · dy[k,t] · Aᵀ)[ξ] for t < T, 0 for T ≤ t < T_padded,
// dy[k,t][i][j] = dy[n, k, m·th + i, m·tw + j] (0 past OH / OW). Item k·T_padded + t; reads up to m² floats of dy,
// writes α². Bytes: 4·N·K·OH·OW read, 4·α²·K·T_padded written.
template <class F>
__device__ __forceinline__ void dy_transform(const float* __restrict__ dy, float* __restrict__ DY, int K, int OH,
                                             int OW, int TH, int TW, int T, int T_padded) {
    constexpr int A = F::ALPHA, TILE = F::M;
    int item;
    if (!item_of_thread(K * T_padded, item)) return;
    const int k = item / T_padded, t = item - k * T_padded;
    float d[A * A];
    if (t < T) {
        const int image_row = t / TW, tw = t - image_row * TW;
        const int n = image_row / TH, th = image_row - n * TH;
        const float* plane = dy + ((int64)n * K + k) * OH * OW;
#pragma unroll
        for (int i = 0; i < TILE; ++i)
#pragma unroll
            for (int j = 0; j < TILE; ++j) {
                const int oh = TILE * th + i, ow = TILE * tw + j;
                d[A * i + j] = oh < OH && ow < OW ? __ldg(plane + oh * OW + ow) : 0.f;
            }
#pragma unroll
        for (int j = 0; j < TILE; ++j) F::template output_grad_axis<A>(d + j);  // columns: A·dy, α×m
#pragma unroll
        for (int a = 0; a < A; ++a) F::template output_grad_axis<1>(d + A * a);  // rows: (A·dy)·Aᵀ, α×α
    } else {
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) d[xi] = 0.f;
    }
    float* out = DY + k * A * A * T_padded + t;
#pragma unroll
    for (int xi = 0; xi < A * A; ++xi) out[xi * T_padded] = d[xi];
}

// filter_grad_transform: dw[k, c] = Gᵀ · M[·][k][c] · G with M[ξ][k][c] = Σ_{s = 0..S−1} P[ξ·S + s][k][c], the S
// chunk products of point ξ summed in that order. Item k·C + c; reads α²·S floats of P (a warp's α² loads of one
// s are each 128 contiguous bytes), writes dw[k, c, 0..2, 0..2]. Bytes: 4·α²·S·K·C read, 4·9·K·C written.
template <class F>
__device__ __forceinline__ void filter_grad_transform(const float* __restrict__ P, float* __restrict__ dw, int K,
                                                      int C, int S) {
    constexpr int A = F::ALPHA;
    int item;
    if (!item_of_thread(K * C, item)) return;
    const int plane = K * C;
    float m[A * A];
#pragma unroll
    for (int xi = 0; xi < A * A; ++xi) m[xi] = 0.f;
    for (int s = 0; s < S; ++s) {
        const float* chunk = P + s * plane + item;
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) m[xi] += __ldg(chunk + xi * S * plane);
    }
#pragma unroll
    for (int e = 0; e < A; ++e) F::template filter_grad_axis<A>(m + e);  // columns: Gᵀ·m, rows 0..2
#pragma unroll
    for (int r = 0; r < 3; ++r) F::template filter_grad_axis<1>(m + A * r);  // rows: (Gᵀ·m)·G, columns 0..2
    float* out = dw + (int64)item * 9;
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int q = 0; q < 3; ++q) out[3 * r + q] = m[A * r + q];
}

// The entry points: winograd_* are F(2×2), winograd4x4_* F(4×4); either size's input transform serves its
// backward-filter too.
#define WINOGRAD_KERNELS(PREFIX, F)                                                                                   \
    extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS)                                                    \
        PREFIX##filter_transform(const float* __restrict__ w, float* __restrict__ U, int C, int K) {                  \
        filter_transform<F>(w, U, C, K);                                                                              \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS) PREFIX##input_transform(                           \
        const float* __restrict__ x, float* __restrict__ V, int C, int H, int W, int TH, int TW, int T, int T_padded, \
        int channel_stride, int point_stride, int pt, int pl) {                                                       \
        input_transform<F>(x, V, C, H, W, TH, TW, T, T_padded, channel_stride, point_stride, pt, pl);                 \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS) PREFIX##output_transform(                          \
        const float* __restrict__ M, const float* __restrict__ bias, float* __restrict__ y, int K, int OH, int OW,    \
        int TH, int TW, int T, int act, float slope) {                                                                \
        output_transform<F>(M, bias, y, K, OH, OW, TH, TW, T, act, slope);                                            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS) PREFIX##dy_transform(                              \
        const float* __restrict__ dy, float* __restrict__ DY, int K, int OH, int OW, int TH, int TW, int T,           \
        int T_padded) {                                                                                               \
        dy_transform<F>(dy, DY, K, OH, OW, TH, TW, T, T_padded);                                                      \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS)                                                    \
        PREFIX##filter_grad_transform(const float* __restrict__ P, float* __restrict__ dw, int K, int C, int S) {     \
        filter_grad_transform<F>(P, dw, K, C, S);                                                                     \
    }

WINOGRAD_KERNELS(winograd_, F2x2)
WINOGRAD_KERNELS(winograd4x4_, F4x4)
