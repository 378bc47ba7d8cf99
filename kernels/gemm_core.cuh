// gemm_core.cuh: the block-tiled single-precision GEMM that kernels/gemm.cu (gemm_*) and kernels/conv2d.cu (the
// implicit-GEMM convolutions) share: the block tile with its thread mapping, and the double-buffered main loop
// over two loader objects. The epilogue (bias + activation, stores) is gemm_epilogue.cuh.
//
//   acc += Σ_q A[m][q] · B[q][n] for the block's BM × BN tile of C, the reduction in BK-deep steps.
//   Block: THREADS = (BM/TM)·(BN/TN) threads; a warp is 8 (tx, along n) × 4 (ty, along m) threads. Thread (tx, ty)
//   owns TM × TN outputs as (TM/4)×(TN/4) 4×4 blocks: rows row(i) = (i/4)·4·THREADS_Y + 4·ty + i%4 and columns
//   col(j) = (j/4)·4·THREADS_X + 4·tx + j%4 of the block tile, so both of its fragments are float4 shared reads
//   (per k, TM/4 + TN/4 LDS.128 for TM·TN FMAs; a warp's 8 tx read 128 consecutive bytes of Bs, its 4 ty 4
//   float4 of As: no bank conflict).
//   Shared memory (the caller's): As[2][BK][BM + SMEM_PAD], Bs[2][BK][BN + SMEM_PAD], k-major so that a k step
//   reads float4 rows; SMEM_PAD = 4 breaks the power-of-two row stride (a warp's transposed stores fall in
//   different banks) and keeps every float4 16-byte aligned. Two buffers: step t+1 is fetched from global
//   memory into registers while step t is multiplied, then stored to the other buffer; one barrier a step.
//
// Loaders: the main loop knows nothing of where A and B come from. A loader of one operand provides
//   template <bool INTERIOR> void load_first(int k_valid)   this thread's share of the reduction's first step
//   template <bool INTERIOR> void load_next(int k_valid)    ... of the step after the last one loaded
//       into registers. k_valid (1..BK): how many of the step's k lie inside the reduction; INTERIOR: the caller
//       knows every element of every step is in bounds.
//   void store(float (*tile)[EXTENT + SMEM_PAD]) const
//       write the loaded share into one shared buffer (EXTENT = BM for A, BN for B).
//   static constexpr bool CHECKS_OWN_BOUNDS
//       true for a loader that ignores k_valid and INTERIOR and loads zeros wherever it is out of bounds
//       (conv2d.cu's gathers): the first step is then loaded without asking whether the reduction is empty.
// Everything about the operands' layout (transposes, strides, padding, dilation, im2col decoding) lives in
// the loaders: a new way to read an operand is a new loader, and the loop stays as it is.
#pragma once
#include "common.cuh"

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct BlockTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
    static constexpr int THREADS_X = BN / TN;  // threads along n (a row of the block tile)
    static constexpr int THREADS_Y = BM / TM;  // threads along m
    static constexpr int THREADS = THREADS_X * THREADS_Y;
    static constexpr int SMEM_PAD = 4;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "a thread's outputs are 4x4 blocks (float4 fragments)");
    static_assert(BM % TM == 0 && BN % TN == 0, "the block tile must split into thread tiles");
    static_assert(THREADS_X % 8 == 0 && THREADS_Y % 4 == 0, "warps are 8 (n) x 4 (m) threads");

    // This thread's coordinates in the block tile.
    static __device__ __forceinline__ int thread_x() { return (threadIdx.x / 32 % (THREADS_X / 8)) * 8 + threadIdx.x % 8; }
    static __device__ __forceinline__ int thread_y() { return (threadIdx.x / 32 / (THREADS_X / 8)) * 4 + threadIdx.x % 32 / 8; }

    // A thread's place in the block tile: its acc[i][j] holds C[origin_m + row(i)][origin_n + col(j)] for the
    // tile's corner (origin_m, origin_n). Worked out once (Tile::thread()) where a kernel's epilogue begins; the
    // origin is added first, in its own type (64-bit where the kernel indexes C in 64 bits).
    struct Thread {
        int tx, ty;
        template <class Index>
        __device__ __forceinline__ Index row(Index origin_m, int i) const { return origin_m + (i / 4) * 4 * THREADS_Y + 4 * ty + i % 4; }
        template <class Index>
        __device__ __forceinline__ Index col(Index origin_n, int j) const { return origin_n + (j / 4) * 4 * THREADS_X + 4 * tx + j % 4; }
        // col(origin_n, 4·q): the first of the thread's q-th group of 4 consecutive columns
        template <class Index>
        __device__ __forceinline__ Index col4(Index origin_n, int q) const { return origin_n + q * 4 * THREADS_X + 4 * tx; }
    };
    static __device__ __forceinline__ Thread thread() { return {thread_x(), thread_y()}; }
};

template <int TM, int TN>
__device__ __forceinline__ void zero_accumulators(float (&acc)[TM][TN]) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
}

// acc += A · B over the k_left values of k from the loaders' current position (nothing when k_left <= 0).
// INTERIOR: every step is whole and in bounds (passed on to the loaders). Every thread of the block
// must call it; it ends with a barrier, so the buffers may be reused at once.
template <class Tile, bool INTERIOR, class ALoader, class BLoader>
__device__ __forceinline__ void gemm_mainloop(ALoader& a, BLoader& b, float (*As)[Tile::BK][Tile::BM + Tile::SMEM_PAD],
                                              float (*Bs)[Tile::BK][Tile::BN + Tile::SMEM_PAD], int k_left,
                                              float (&acc)[Tile::TM][Tile::TN]) {
    constexpr int BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
    const int tx = Tile::thread_x(), ty = Tile::thread_y();
    // k_left: how much of the reduction remains from the first k of the step in As[cur] / Bs[cur] (32-bit: the
    // host keeps a reduction shorter than 2^31).
    if ((ALoader::CHECKS_OWN_BOUNDS && BLoader::CHECKS_OWN_BOUNDS) || k_left > 0) {
        const int k_valid = min(k_left, BK);
        a.template load_first<INTERIOR>(k_valid);
        b.template load_first<INTERIOR>(k_valid);
        a.store(As[0]);
        b.store(Bs[0]);
        __syncthreads();
    }
    for (int cur = 0; k_left > 0; k_left -= BK, cur ^= 1) {
        const bool has_next = k_left > BK;  // uniform across the block
        if (has_next) {                     // global loads in flight during the FMAs below
            const int k_valid = min(k_left - BK, BK);
            a.template load_next<INTERIOR>(k_valid);
            b.template load_next<INTERIOR>(k_valid);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float af[TM], bf[TN];
#pragma unroll
            for (int q = 0; q < TM / 4; ++q) {
                const float4 v = load_float4(&As[cur][k][q * 4 * Tile::THREADS_Y + 4 * ty]);
                af[4 * q + 0] = v.x; af[4 * q + 1] = v.y; af[4 * q + 2] = v.z; af[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < TN / 4; ++q) {
                const float4 v = load_float4(&Bs[cur][k][q * 4 * Tile::THREADS_X + 4 * tx]);
                bf[4 * q + 0] = v.x; bf[4 * q + 1] = v.y; bf[4 * q + 2] = v.z; bf[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
        }
        if (has_next) {  // the other buffer was last read before the previous barrier
            a.store(As[cur ^ 1]);
            b.store(Bs[cur ^ 1]);
        }
        __syncthreads();
    }
}
