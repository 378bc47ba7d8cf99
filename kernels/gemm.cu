// gemm.cu: single-precision GEMM with a fused bias + activation epilogue, and the deterministic split sum.
//
//   gemm_{nn,nt,tn,tt}:   C[z][m][n] = act( sum_{k in split z} op(A)[m][k] * op(B)[k][n] + bias[n] )
//       op(A)[m][k] = A[m*lda + k] (n) or A[k*lda + m] (t);  op(B)[k][n] = B[k*ldb + n] (n) or B[n*ldb + k] (t)
//       so x·Wᵀ (nt), dy·W (nn), dyᵀ·x (tn) all read their operands in place, no transpose materialised.
//       C is dense M×N (ldc = N); split-K slice z (blockIdx.z) covers k in [z*k_per_split, (z+1)*k_per_split)
//       and writes C + z*M*N. With more than one slice the host passes bias = NULL, act = none and sums the
//       slices with sum_splits_bias_act, which then applies bias and activation.
//   sum_splits_bias_act (sum_splits.cuh): out[c] = act( sum_{r = 0..rows-1} x[r*cols + c] + bias[c % N] )
//       the bias gradient (x = dy, no bias, no act) and the split-K reduction (x = slices, rows = splits).
//
// GEMM launch: grid (cdiv(M, TILE_M), cdiv(N, TILE_N), splits), block THREADS = (TILE_M/THREAD_M)·(TILE_N/THREAD_N),
// static smem 2·TILE_K·(TILE_M + TILE_N + 2·SMEM_PAD)·4 B (17 KB at the defaults); __launch_bounds__ asks for
// MIN_BLOCKS_PER_SM resident blocks, i.e. at most 64K / (THREADS·MIN_BLOCKS_PER_SM) registers a thread.
// Tiling: gemm_core.cuh's block tile and main loop (shared with conv2d.cu's implicit GEMMs): a block computes a
// TILE_M×TILE_N tile of C, stepping through K in TILE_K slabs. Each slab of op(A) and op(B) goes global →
// registers → shared memory (As[k][m], Bs[k][n], k-major so the inner loop reads float4 rows); two smem
// buffers, so slab t+1 is fetched from global memory while slab t is multiplied and one barrier per slab
// suffices. The SlabLoaders below are this file's loaders. Operands contiguous along the slab's long side (op(A) of tn/tt, op(B)
// of nn/tn) are read as float4 and stored as float4; operands contiguous along k are read as float4 along k
// and stored transposed (SMEM_PAD = 4 puts the two k-halves of a warp's stores in different banks).
// float4 global reads need a 16-byte aligned base and ld % 4 == 0 (host flags vec_a/vec_b); a float4 that
// would cross the matrix edge is read as masked scalars, so any M, N, K works and edges read zeros. A block
// whose tile lies inside C, with both operands float4-readable and its split a whole number of slabs
// (most blocks of a large product) runs the same loop without any of these checks (gemm_mainloop<INTERIOR>).
// Who writes what: thread (tx, ty) owns THREAD_M×THREAD_N outputs in gemm_core.cuh's mapping: 4×4 blocks,
// rows q·4·THREADS_Y + 4·ty + i and columns q·4·THREADS_X + 4·tx + j, so its smem reads are float4 and a
// warp (8 tx × 4 ty) reads 4 distinct As and 8 distinct Bs float4 per k. The epilogue (gemm_epilogue.cuh)
// adds the bias, applies the activation and stores float4 when vec_c (N % 4 == 0), masked to m < M, n < N.
// Floor: 2·M·N·K FLOP; at least 4·(M·K + K·N + M·N) bytes. 4096³: 137 GFLOP vs 201 MB, compute bound
// (~2.0 ms at H100 SXM's 67 TFLOP/s FP32). A block does 2·TILE_M·TILE_N FLOP per 4·(TILE_M + TILE_N) bytes
// it loads: 32 FLOP/B at 128×128, so the L2 keeps up; per k a thread does THREAD_M·THREAD_N FMAs per
// (THREAD_M + THREAD_N)/4 LDS.128, 64 per 4 at 8×8.
// Indexing: element offsets are 64-bit; per-thread row pointers advance by a slab each step.
#include "gemm_epilogue.cuh"
#include "sum_splits.cuh"

// Tile sizes: defines from Python, the default variant's in cnn_gpu/cuda/loader.py's FAMILY_DEFINES; cnn_gpu/ops/gemm.py
// compiles its other TILE_CONFIGS with -DTILE_M=..., and cnn_gpu/cuda/autotune.py picks one of them (with a split-K)
// per shape by timing them on the first call.
#if !defined(TILE_M) || !defined(TILE_N) || !defined(TILE_K) || !defined(THREAD_M) || !defined(THREAD_N) || !defined(MIN_BLOCKS_PER_SM)
#error "the tile sizes come from cnn_gpu/cuda/loader.py (FAMILY_DEFINES, a variant's defines)"
#endif

using Tile = BlockTile<TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N>;
constexpr int THREADS = Tile::THREADS, SMEM_PAD = Tile::SMEM_PAD;
static_assert(TILE_K % 4 == 0, "float4 slabs along k");

// One operand's share of a TILE_K × EXTENT slab (smem[k][mn]) of op(X), staged through registers.
//   K_CONTIGUOUS:  element (mn, k) is X[mn*ld + k]: a chunk is 4 consecutive k of one mn line.
//   otherwise:     element (mn, k) is X[k*ld + mn]: a chunk is 4 consecutive mn of one k line.
// Thread tid owns chunks tid + i·THREADS: line tid/CHUNKS_PER_LINE + i·LINES_PER_PASS, offset pos along it.
template <bool K_CONTIGUOUS, int EXTENT>
struct SlabLoader {
    static constexpr int LINE_LENGTH = K_CONTIGUOUS ? TILE_K : EXTENT;
    static constexpr int CHUNKS_PER_LINE = LINE_LENGTH / 4;
    static constexpr int LINES_PER_PASS = THREADS / CHUNKS_PER_LINE;
    static constexpr int CHUNKS = TILE_K * EXTENT / 4 / THREADS;
    static_assert(EXTENT % 4 == 0 && THREADS % CHUNKS_PER_LINE == 0 && CHUNKS * THREADS * 4 == TILE_K * EXTENT,
                  "every thread loads the same number of whole float4 chunks per slab");

    const float* next[CHUNKS];  // chunk addresses in the next slab to load (dereferenced only when in bounds)
    int64 slab_step;            // address step from one slab to the next
    int mn_valid[CHUNKS];       // K_CONTIGUOUS: 1 if the chunk's mn line is inside X; else in-bounds mn count (0..4)
    bool vec;
    float4 staged[CHUNKS];

    // This thread's first line and its offset along the lines (recomputed where used: fewer live registers).
    static __device__ __forceinline__ int line0() { return threadIdx.x / CHUNKS_PER_LINE; }
    static __device__ __forceinline__ int pos() { return (threadIdx.x % CHUNKS_PER_LINE) * 4; }

    __device__ SlabLoader(const float* __restrict__ x, int64 ld, int64 extent_mn, int64 mn0, int64 k_begin, bool vec_ok) {
        const int line0 = SlabLoader::line0(), pos = SlabLoader::pos();
        vec = vec_ok;
        slab_step = K_CONTIGUOUS ? (int64)TILE_K : (int64)TILE_K * ld;
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int line = line0 + i * LINES_PER_PASS;
            if constexpr (K_CONTIGUOUS) {
                next[i] = x + (mn0 + line) * ld + (k_begin + pos);
                mn_valid[i] = mn0 + line < extent_mn;
            } else {
                next[i] = x + (k_begin + line) * ld + (mn0 + pos);
                mn_valid[i] = (int)max((int64)0, min((int64)4, extent_mn - (mn0 + pos)));
            }
        }
    }

    // Fetch the next slab, of which the first k_valid (1..TILE_K) k lie inside this split, and step past it.
    // INTERIOR: the caller knows every chunk is in bounds and float4-readable (no checks at all).
    template <bool INTERIOR>
    __device__ __forceinline__ void fetch(int k_valid) {
        const int line0 = SlabLoader::line0(), pos = SlabLoader::pos();
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int line = line0 + i * LINES_PER_PASS;
            // in-bounds elements of this chunk along its length, 0..4
            const int n_ok = K_CONTIGUOUS ? (mn_valid[i] ? max(0, min(4, k_valid - pos)) : 0)
                                          : (line < k_valid ? mn_valid[i] : 0);
            const float* p = next[i];
            if (INTERIOR || (vec && n_ok == 4)) {
                staged[i] = load_float4(p);
            } else {
                staged[i].x = n_ok > 0 ? p[0] : 0.f;
                staged[i].y = n_ok > 1 ? p[1] : 0.f;
                staged[i].z = n_ok > 2 ? p[2] : 0.f;
                staged[i].w = n_ok > 3 ? p[3] : 0.f;
            }
            next[i] += slab_step;
        }
    }

    // gemm_core.cuh's loader interface: the first slab and each following one are read alike, k_valid bounding them.
    static constexpr bool CHECKS_OWN_BOUNDS = false;
    template <bool INTERIOR>
    __device__ __forceinline__ void load_first(int k_valid) { fetch<INTERIOR>(k_valid); }
    template <bool INTERIOR>
    __device__ __forceinline__ void load_next(int k_valid) { fetch<INTERIOR>(k_valid); }

    __device__ __forceinline__ void store(float (*slab)[EXTENT + SMEM_PAD]) const {
        const int line0 = SlabLoader::line0(), pos = SlabLoader::pos();
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int line = line0 + i * LINES_PER_PASS;
            if constexpr (K_CONTIGUOUS) {
                slab[pos + 0][line] = staged[i].x;
                slab[pos + 1][line] = staged[i].y;
                slab[pos + 2][line] = staged[i].z;
                slab[pos + 3][line] = staged[i].w;
            } else {
                store_float4(&slab[line][pos], staged[i]);
            }
        }
    }
};

template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void gemm_bias_act(const float* __restrict__ A, const float* __restrict__ B,
                                              const float* __restrict__ bias, float* __restrict__ C,
                                              int64 M, int64 N, int64 K, int64 lda, int64 ldb, int64 k_per_split,
                                              int act, float slope, int vec_a, int vec_b, int vec_c) {
    __shared__ __align__(16) float As[2][TILE_K][TILE_M + SMEM_PAD];
    __shared__ __align__(16) float Bs[2][TILE_K][TILE_N + SMEM_PAD];

    const int64 m0 = (int64)blockIdx.x * TILE_M;
    const int64 n0 = (int64)blockIdx.y * TILE_N;
    const int64 k_begin = (int64)blockIdx.z * k_per_split;
    const int64 k_end = min(K, k_begin + k_per_split);

    SlabLoader<!TRANS_A, TILE_M> a_slab(A, lda, M, m0, k_begin, vec_a);
    SlabLoader<TRANS_B, TILE_N> b_slab(B, ldb, N, n0, k_begin, vec_b);

    float acc[THREAD_M][THREAD_N];
    zero_accumulators(acc);

    // A block whose tile lies inside C, whose operands are float4-readable and whose split is whole
    // slabs (most blocks of a large product) takes the loop without edge checks; the others the general one.
    const int64 k_span = k_end - k_begin;
    const bool interior = vec_a && vec_b && m0 + TILE_M <= M && n0 + TILE_N <= N && k_span % TILE_K == 0;
    if (interior)
        gemm_mainloop<Tile, true>(a_slab, b_slab, As, Bs, (int)k_span, acc);
    else
        gemm_mainloop<Tile, false>(a_slab, b_slab, As, Bs, (int)k_span, acc);

    // Epilogue: bias + activation in registers, then float4 or masked scalar stores.
    const Tile::Thread t = Tile::thread();
    float col_bias[THREAD_N];
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
        const int64 n = t.col(n0, j);
        col_bias[j] = bias != nullptr && n < N ? bias[n] : 0.f;
    }
    bias_act</*ALONG_ROWS=*/false>(acc, [&](int j) { return col_bias[j]; }, act, slope);
    store_row_major<Tile>(C, acc, t, m0, n0, M, N, vec_c);
}

#define GEMM_ENTRY(name, TRANS_A, TRANS_B)                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS_PER_SM)                                                        \
    name(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias,                 \
         float* __restrict__ C, int64 M, int64 N, int64 K, int64 lda, int64 ldb, int64 k_per_split, int act,       \
         float slope, int vec_a, int vec_b, int vec_c) {                                                           \
        gemm_bias_act<TRANS_A, TRANS_B>(A, B, bias, C, M, N, K, lda, ldb, k_per_split, act, slope, vec_a, vec_b,  \
                                        vec_c);                                                                    \
    }

GEMM_ENTRY(gemm_nn, false, false)
GEMM_ENTRY(gemm_nt, false, true)
GEMM_ENTRY(gemm_tn, true, false)
GEMM_ENTRY(gemm_tt, true, true)
