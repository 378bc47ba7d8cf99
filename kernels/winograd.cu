// winograd.cu: 3×3, stride-1 convolution forward by Winograd's minimal filtering F(2×2, 3×3)
// (Lavin & Gray 2016), NCHW float32: each 2×2 block of outputs from a 4×4 input patch with 16
// multiplies a channel instead of 36, so the GEMM below does 2.25× fewer FLOPs than the direct conv.
//
//   U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ]                                  filter transform, w[k,c] 3×3
//   V[ξ][c][t] = (Bᵀ · d[c,t] · B)[ξ],  d[c,t][a][e] = x[n, c, 2·th − pt + a, 2·tw − pl + e]   (0 outside x)
//   M[ξ][k][t] = Σ_c U[ξ][c][k] · V[ξ][c][t]                           16 GEMMs, K×C by C×T
//   y[n, k, 2·th + i, 2·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j])   for the outputs inside y
//
//        ⎡1  0 −1  0⎤        ⎡1   0   0⎤
//   Bᵀ = ⎢0  1  1  0⎥    G = ⎢½   ½   ½⎥    Aᵀ = ⎡1  1  1  0⎤
//        ⎢0 −1  1  0⎥        ⎢½  −½   ½⎥         ⎣0  1 −1 −1⎦
//        ⎣0  1  0 −1⎦        ⎣0   0   1⎦
//
// ξ = 4·row + col indexes the 4×4 transformed tile. Tile t = (n·TH + th)·TW + tw over TH = ⌈OH/2⌉ by
// TW = ⌈OW/2⌉ tiles an image, T = N·TH·TW; tile (th, tw) reads input rows 2·th − pt + [0, 4) and columns
// 2·tw − pl + [0, 4) (neighbouring tiles overlap by 2) and writes outputs 2·th + [0, 2), 2·tw + [0, 2), of
// which those past an odd OH / OW are dropped. pt / pl are conv2d.cu's pads (any padding, 'same' too).
// The 16 products are not here: they are one launch of gemm.cu's gemm_tn (cnn_gpu.ops.gemm.cuda_gemm_k_slices)
// reading U as the K × 16·C matrix op(A) and V as the 16·C × T matrix B, whose split-K slices of C are kept
// apart (slice ξ writes M[ξ]) instead of summed.
//
// Launch (all three): 1-D, one thread per item, WINOGRAD_THREADS a block, cdiv(items, WINOGRAD_THREADS)
// blocks, no shared memory. The host checks that U, V and M (16·C·K, 16·C·T, 16·K·T floats) have fewer
// than 2^31 elements, so the items and every offset into them are 32-bit; offsets into x and y are 64-bit.
// Items run along k (filter) or t (input, output) fastest, so a warp's 16 stores into U / V / M (and the
// output transform's 16 loads from M) are each 128 contiguous bytes; neighbouring tiles' input patches
// overlap and meet in L1 / L2. Each thread issues all its loads before the first arithmetic.
// Floors: FLOPs are the GEMM's 2·16·K·C·T (the direct conv's 2·9·K·C·N·OH·OW, ≈ 2·36·K·C·T); bytes moved
// 4·(N·C·H·W + 2·16·C·T + 2·16·K·T + N·K·OH·OW) beyond the GEMM's operand reads. Seed002 conv2 (N 128,
// C 512 → K 256, 32² → 30²): 121 GFLOP, V 0.94 GB, M 0.47 GB.
// Deterministic: no atomics, a fixed order of operations per element.
#include "common.cuh"

#define WINOGRAD_THREADS 256

// This thread's item in a launch over [0, n) items, n < 2^31; false for the threads past the end.
__device__ __forceinline__ bool item_of_thread(int n, int& item) {
    const uint32 i = blockIdx.x * blockDim.x + threadIdx.x;  // < 2^31 + blockDim.x: no unsigned wrap
    item = (int)i;
    return i < (uint32)n;
}

__device__ __forceinline__ bool inside(int i, int n) { return (unsigned)i < (unsigned)n; }

// The one-axis transforms, in place on v[0], v[stride], v[2·stride], v[3·stride] of a 4×4 row-major tile
// (stride 4: every column, from the left; stride 1: every row, i.e. multiplying by the matrix's transpose
// from the right).
template <int STRIDE>
__device__ __forceinline__ void input_axis(float* v) {  // Bᵀ·v
    const float d0 = v[0], d1 = v[STRIDE], d2 = v[2 * STRIDE], d3 = v[3 * STRIDE];
    v[0] = d0 - d2;
    v[STRIDE] = d1 + d2;
    v[2 * STRIDE] = d2 - d1;
    v[3 * STRIDE] = d1 - d3;
}

template <int STRIDE>
__device__ __forceinline__ void filter_axis(float* v) {  // G·v: v[0..2] in, v[0..3] out
    const float g0 = v[0], g1 = v[STRIDE], g2 = v[2 * STRIDE];
    v[0] = g0;
    v[STRIDE] = 0.5f * (g0 + g1 + g2);
    v[2 * STRIDE] = 0.5f * (g0 - g1 + g2);
    v[3 * STRIDE] = g2;
}

template <int STRIDE>
__device__ __forceinline__ void output_axis(float* v) {  // Aᵀ·v: v[0..3] in, v[0..1] out
    const float m0 = v[0], m1 = v[STRIDE], m2 = v[2 * STRIDE], m3 = v[3 * STRIDE];
    v[0] = m0 + m1 + m2;
    v[STRIDE] = m1 - m2 - m3;
}

// winograd_filter_transform: U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ]. Item c·K + k; reads w[k, c, 0..2, 0..2]
// (9 floats, strided across the warp: the filter is small), writes 16 floats. Bytes: 4·9·K·C + 4·16·C·K.
extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS)
winograd_filter_transform(const float* __restrict__ w, float* __restrict__ U, int C, int K) {
    int item;
    if (!item_of_thread(C * K, item)) return;
    const int c = item / K, k = item - c * K;
    const float* g = w + ((int64)k * C + c) * 9;
    float u[16];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int s = 0; s < 3; ++s) u[4 * r + s] = __ldg(g + 3 * r + s);
#pragma unroll
    for (int s = 0; s < 3; ++s) filter_axis<4>(u + s);  // columns: (G·g), 4×3
#pragma unroll
    for (int r = 0; r < 4; ++r) filter_axis<1>(u + 4 * r);  // rows: (G·g)·Gᵀ, 4×4
    const int plane = C * K;
#pragma unroll
    for (int xi = 0; xi < 16; ++xi) U[xi * plane + item] = u[xi];
}

// winograd_input_transform: V[ξ][c][t] = (Bᵀ · d[c,t] · B)[ξ]. Item c·T + t; reads the tile's 4×4 input
// patch (zeros outside x), writes 16 floats. Bytes: ≥ 4·N·C·H·W read, 4·16·C·T written.
extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS)
winograd_input_transform(const float* __restrict__ x, float* __restrict__ V, int C, int H, int W, int TH, int TW,
                         int T, int pt, int pl) {
    int item;
    if (!item_of_thread(C * T, item)) return;
    const int c = item / T, t = item - c * T;
    const int image_row = t / TW, tw = t - image_row * TW;  // image_row = n·TH + th
    const int n = image_row / TH, th = image_row - n * TH;
    const float* plane = x + ((int64)n * C + c) * H * W;
    const int h0 = 2 * th - pt, w0 = 2 * tw - pl;
    float d[16];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            d[4 * a + e] = inside(h0 + a, H) && inside(w0 + e, W) ? __ldg(plane + (h0 + a) * W + (w0 + e)) : 0.f;
#pragma unroll
    for (int e = 0; e < 4; ++e) input_axis<4>(d + e);  // columns: Bᵀ·d
#pragma unroll
    for (int a = 0; a < 4; ++a) input_axis<1>(d + 4 * a);  // rows: (Bᵀ·d)·B
    const int plane_size = C * T;
#pragma unroll
    for (int xi = 0; xi < 16; ++xi) V[xi * plane_size + item] = d[xi];
}

// winograd_output_transform: y[n, k, 2·th + i, 2·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j]) for the
// outputs inside y (b may be NULL: no bias; act codes as common.cuh). Item k·T + t; reads 16 floats of M,
// writes up to 4 of y. Bytes: 4·16·K·T read, 4·N·K·OH·OW written.
extern "C" __global__ void __launch_bounds__(WINOGRAD_THREADS)
winograd_output_transform(const float* __restrict__ M, const float* __restrict__ bias, float* __restrict__ y, int K,
                          int OH, int OW, int TH, int TW, int T, int act, float slope) {
    int item;
    if (!item_of_thread(K * T, item)) return;
    const int k = item / T, t = item - k * T;
    const int image_row = t / TW, tw = t - image_row * TW;
    const int n = image_row / TH, th = image_row - n * TH;
    const int plane_size = K * T;
    float m[16];
#pragma unroll
    for (int xi = 0; xi < 16; ++xi) m[xi] = __ldg(M + xi * plane_size + item);
#pragma unroll
    for (int e = 0; e < 4; ++e) output_axis<4>(m + e);  // columns: Aᵀ·m, rows 0..1
#pragma unroll
    for (int i = 0; i < 2; ++i) output_axis<1>(m + 4 * i);  // rows: (Aᵀ·m)·A, columns 0..1
    const float b = bias != nullptr ? __ldg(bias + k) : 0.f;
    float* out = y + ((int64)n * K + k) * OH * OW;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int oh = 2 * th + i, ow = 2 * tw + j;
            if (oh < OH && ow < OW) out[oh * OW + ow] = apply_activation(m[4 * i + j] + b, act, slope);
        }
}
