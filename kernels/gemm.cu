// gemm.cu: single-precision GEMM with a fused bias + activation epilogue, and a deterministic column sum.
//
//   gemm_{nn,nt,tn,tt}:   C[z][m][n] = act( sum_{k in split z} op(A)[m][k] * op(B)[k][n] + bias[n] )
//       op(A)[m][k] = A[m*lda + k] (n) or A[k*lda + m] (t);  op(B)[k][n] = B[k*ldb + n] (n) or B[n*ldb + k] (t)
//       so x·Wᵀ (nt), dy·W (nn), dyᵀ·x (tn) all read their operands in place, no transpose materialised.
//       C is dense M×N (ldc = N); split-K slice z (blockIdx.z) covers k in [z*k_per_split, (z+1)*k_per_split)
//       and writes C + z*M*N. With more than one slice the host passes bias = NULL, act = none and sums the
//       slices with sum_rows_bias_act, which then applies bias and activation.
//   sum_rows_bias_act:    out[c] = act( sum_{r = 0..rows-1} x[r*cols + c] + bias[c % bias_period] )
//       the bias gradient (x = dy, no bias, no act) and the split-K reduction (x = slices, rows = splits).
//
// GEMM launch: grid (cdiv(M, TILE_M), cdiv(N, TILE_N), splits), block THREADS = (TILE_M/THREAD_M)·(TILE_N/THREAD_N),
// static smem 2·TILE_K·(TILE_M + TILE_N + 2·SMEM_PAD)·4 B (17 KB at the defaults); __launch_bounds__ asks for
// MIN_BLOCKS_PER_SM resident blocks, i.e. at most 64K / (THREADS·MIN_BLOCKS_PER_SM) registers a thread.
// Tiling: a block computes a TILE_M×TILE_N tile of C, stepping through K in TILE_K slabs. Each slab of
// op(A) and op(B) goes global → registers → shared memory (As[k][m], Bs[k][n], k-major so the inner loop
// reads float4 rows); two smem buffers, so slab t+1 is fetched from global memory while slab t is multiplied
// and one barrier per slab suffices. Operands contiguous along the slab's long side (op(A) of tn/tt, op(B)
// of nn/tn) are read as float4 and stored as float4; operands contiguous along k are read as float4 along k
// and stored transposed (SMEM_PAD = 4 puts the two k-halves of a warp's stores in different banks).
// float4 global reads need a 16-byte aligned base and ld % 4 == 0 (host flags vec_a/vec_b); a float4 that
// would cross the matrix edge is read as masked scalars, so any M, N, K works and edges read zeros. A block
// whose tile lies inside C, with both operands float4-readable and its split a whole number of slabs
// (most blocks of a large product) runs the same loop without any of these checks (multiply_slabs<true>).
// Who writes what: thread (tx, ty) owns THREAD_M×THREAD_N outputs as (THREAD_M/4)×(THREAD_N/4) 4×4 blocks,
// rows q·4·THREADS_Y + 4·ty + i and columns q·4·THREADS_X + 4·tx + j, so its smem reads are float4 and a
// warp (8 tx × 4 ty) reads 4 distinct As and 8 distinct Bs float4 per k. Stores are float4 when vec_c
// (N % 4 == 0), masked to m < M, n < N.
// Floor: 2·M·N·K FLOP; at least 4·(M·K + K·N + M·N) bytes. 4096³: 137 GFLOP vs 201 MB, compute bound
// (~2.0 ms at H100 SXM's 67 TFLOP/s FP32). A block does 2·TILE_M·TILE_N FLOP per 4·(TILE_M + TILE_N) bytes
// it loads: 32 FLOP/B at 128×128, so the L2 keeps up; per k a thread does THREAD_M·THREAD_N FMAs per
// (THREAD_M + THREAD_N)/4 LDS.128, 64 per 4 at 8×8.
// Indexing: element offsets are 64-bit; per-thread row pointers advance by a slab each step.
#include "common.cuh"

// Tile sizes: defaults for large GEMMs; cnn_gpu/ops/gemm.py compiles its TILE_CONFIGS variants with -DTILE_M=...,
// and cnn_gpu/cuda/autotune.py picks one of them (with a split-K) per shape by timing them on the first call.
#ifndef TILE_M
#define TILE_M 128
#endif
#ifndef TILE_N
#define TILE_N 128
#endif
#ifndef TILE_K
#define TILE_K 8
#endif
#ifndef THREAD_M
#define THREAD_M 8
#endif
#ifndef THREAD_N
#define THREAD_N 8
#endif
#ifndef SMEM_PAD
#define SMEM_PAD 4
#endif
#ifndef MIN_BLOCKS_PER_SM
#define MIN_BLOCKS_PER_SM 2
#endif

constexpr int THREADS_X = TILE_N / THREAD_N;  // threads along n
constexpr int THREADS_Y = TILE_M / THREAD_M;  // threads along m
constexpr int THREADS = THREADS_X * THREADS_Y;

static_assert(THREAD_M % 4 == 0 && THREAD_N % 4 == 0, "a thread's outputs are 4x4 blocks");
static_assert(TILE_M % THREAD_M == 0 && TILE_N % THREAD_N == 0, "threads must tile the block tile");
static_assert(THREADS_X % 8 == 0 && THREADS_Y % 4 == 0 && THREADS % 32 == 0, "warps are 8 (n) x 4 (m) threads");
static_assert(TILE_K % 4 == 0 && SMEM_PAD % 4 == 0, "float4 slabs and smem rows");

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

// This thread's coordinates in the block tile: a warp is 8 (tx, along n) x 4 (ty, along m) threads.
__device__ __forceinline__ int thread_x() { return (threadIdx.x / 32 % (THREADS_X / 8)) * 8 + threadIdx.x % 8; }
__device__ __forceinline__ int thread_y() { return (threadIdx.x / 32 / (THREADS_X / 8)) * 4 + threadIdx.x % 32 / 8; }

template <int ACT>
__device__ __forceinline__ void bias_act_tile(float (&acc)[THREAD_M][THREAD_N], const float (&col_bias)[THREAD_N], float slope) {
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) acc[i][j] = apply_activation(acc[i][j] + col_bias[j], ACT, slope);
}

// acc += op(A) · op(B) over this split's k_left values of k: the double-buffered slab loop described in
// the file header. INTERIOR: every slab is whole and in bounds (see gemm_bias_act), so the loaders skip
// all edge logic: in the main loop that leaves the FFMAs, the LDS.128s and a handful of instructions a slab.
template <bool INTERIOR, class ALoader, class BLoader>
__device__ __forceinline__ void multiply_slabs(ALoader& a_slab, BLoader& b_slab, float (*As)[TILE_K][TILE_M + SMEM_PAD],
                                               float (*Bs)[TILE_K][TILE_N + SMEM_PAD], int k_left,
                                               float (&acc)[THREAD_M][THREAD_N]) {
    const int tx = thread_x(), ty = thread_y();
    // k_left: how much of this split remains from the first k of the slab in As[cur] / Bs[cur] (32-bit: the
    // host rejects a split longer than 2^31 - 1).
    if (k_left > 0) {
        const int k_valid = min(k_left, TILE_K);
        a_slab.template fetch<INTERIOR>(k_valid);
        b_slab.template fetch<INTERIOR>(k_valid);
        a_slab.store(As[0]);
        b_slab.store(Bs[0]);
        __syncthreads();
    }
    for (int cur = 0; k_left > 0; k_left -= TILE_K, cur ^= 1) {
        const bool has_next = k_left > TILE_K;
        if (has_next) {  // global loads in flight during the FMAs below
            const int k_valid = min(k_left - TILE_K, TILE_K);
            a_slab.template fetch<INTERIOR>(k_valid);
            b_slab.template fetch<INTERIOR>(k_valid);
        }
#pragma unroll
        for (int k = 0; k < TILE_K; ++k) {
            float a[THREAD_M], b[THREAD_N];
#pragma unroll
            for (int q = 0; q < THREAD_M / 4; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&As[cur][k][q * 4 * THREADS_Y + 4 * ty]);
                a[4 * q + 0] = v.x; a[4 * q + 1] = v.y; a[4 * q + 2] = v.z; a[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < THREAD_N / 4; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&Bs[cur][k][q * 4 * THREADS_X + 4 * tx]);
                b[4 * q + 0] = v.x; b[4 * q + 1] = v.y; b[4 * q + 2] = v.z; b[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
                for (int j = 0; j < THREAD_N; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (has_next) {  // the other buffer was last read before the previous barrier
            a_slab.store(As[cur ^ 1]);
            b_slab.store(Bs[cur ^ 1]);
        }
        __syncthreads();
    }
}

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
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) acc[i][j] = 0.f;

    // A block whose tile lies inside C, whose operands are float4-readable and whose split is whole
    // slabs (most blocks of a large product) takes the loop without edge checks; the others the general one.
    const int64 k_span = k_end - k_begin;
    const bool interior = vec_a && vec_b && m0 + TILE_M <= M && n0 + TILE_N <= N && k_span % TILE_K == 0;
    if (interior)
        multiply_slabs<true>(a_slab, b_slab, As, Bs, (int)k_span, acc);
    else
        multiply_slabs<false>(a_slab, b_slab, As, Bs, (int)k_span, acc);

    // Epilogue: bias + activation in registers, then float4 or masked scalar stores.
    const int tx = thread_x(), ty = thread_y();
    float col_bias[THREAD_N];
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
        const int64 n = n0 + (j / 4) * 4 * THREADS_X + 4 * tx + j % 4;
        col_bias[j] = bias != nullptr && n < N ? bias[n] : 0.f;
    }
    switch (act) {  // one branch per tile, not per element: keeps the epilogue within the register budget
        case ACT_RELU: bias_act_tile<ACT_RELU>(acc, col_bias, slope); break;
        case ACT_LEAKY_RELU: bias_act_tile<ACT_LEAKY_RELU>(acc, col_bias, slope); break;
        case ACT_SIGMOID: bias_act_tile<ACT_SIGMOID>(acc, col_bias, slope); break;
        case ACT_TANH: bias_act_tile<ACT_TANH>(acc, col_bias, slope); break;
        default: bias_act_tile<ACT_NONE>(acc, col_bias, slope);
    }

    C += (int64)blockIdx.z * M * N;
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i) {
        const int64 m = m0 + (i / 4) * 4 * THREADS_Y + 4 * ty + i % 4;
        if (m >= M) continue;
        float* c_row = C + m * N;
#pragma unroll
        for (int q = 0; q < THREAD_N / 4; ++q) {
            const int64 n = n0 + q * 4 * THREADS_X + 4 * tx;
            const float* v = &acc[i][4 * q];
            if (vec_c && n + 4 <= N) {
                store_float4(c_row + n, make_float4(v[0], v[1], v[2], v[3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (n + j < N) c_row[n + j] = v[j];
            }
        }
    }
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

// Launch: grid (min(cdiv(cols, 32), 65535)), block (32, SUM_ROW_GROUPS); blocks stride over 32-column tiles.
// Thread (c, g) adds rows g, g + SUM_ROW_GROUPS, ... of column c in increasing order (a warp reads 32
// consecutive floats of one row), then thread (c, 0) adds the SUM_ROW_GROUPS partials in order: the same
// bits on every run, no atomics. Memory bound: floor = 4·rows·cols bytes read.
#define SUM_ROW_GROUPS 8

extern "C" __global__ void __launch_bounds__(32 * SUM_ROW_GROUPS)
sum_rows_bias_act(const float* __restrict__ x, float* __restrict__ out, int64 rows, int64 cols,
                  const float* __restrict__ bias, int64 bias_period, int act, float slope) {
    __shared__ float partial[SUM_ROW_GROUPS][33];
    for (int64 c0 = (int64)blockIdx.x * 32; c0 < cols; c0 += (int64)gridDim.x * 32) {
        const int64 c = c0 + threadIdx.x;
        float sum = 0.f;
        if (c < cols)
            for (int64 r = threadIdx.y; r < rows; r += SUM_ROW_GROUPS) sum += x[r * cols + c];
        partial[threadIdx.y][threadIdx.x] = sum;
        __syncthreads();
        if (threadIdx.y == 0 && c < cols) {
            float total = partial[0][threadIdx.x];
#pragma unroll
            for (int g = 1; g < SUM_ROW_GROUPS; ++g) total += partial[g][threadIdx.x];
            if (bias != nullptr) total += bias[c % bias_period];
            out[c] = apply_activation(total, act, slope);
        }
        __syncthreads();  // partial is rewritten by the next column tile
    }
}
