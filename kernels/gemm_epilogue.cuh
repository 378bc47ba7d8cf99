// gemm_epilogue.cuh: what the GEMMs of gemm_core.cuh do with a thread's accumulators once the main loop is done:
// the fused bias + activation, and the row-major store of the tile. Shared by kernels/gemm.cu and kernels/conv2d.cu.
#pragma once
#include "gemm_core.cuh"

// acc[i][j] = act(acc[i][j] + bias(ALONG_ROWS ? i : j)) for one activation known at compile time; bias(i) is
// asked once per row, bias(j) once per element (a lookup in registers).
template <int ACT, bool ALONG_ROWS, int TM, int TN, class Bias>
__device__ __forceinline__ void bias_act_tile(float (&acc)[TM][TN], const Bias& bias, float slope) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const float row_bias = ALONG_ROWS ? bias(i) : 0.f;
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = apply_activation(acc[i][j] + (ALONG_ROWS ? row_bias : bias(j)), ACT, slope);
    }
}

// acc = act(acc + bias): bias(i) gives accumulator row i's value (ALONG_ROWS: conv2d's filters) or bias(j) column
// j's (gemm's output features); act one of common.cuh's ACT_* codes. One activation branch per tile, not per
// element: keeps the epilogue's registers low.
template <bool ALONG_ROWS, int TM, int TN, class Bias>
__device__ __forceinline__ void bias_act(float (&acc)[TM][TN], const Bias& bias, int act, float slope) {
    switch (act) {
        case ACT_RELU: bias_act_tile<ACT_RELU, ALONG_ROWS>(acc, bias, slope); break;
        case ACT_LEAKY_RELU: bias_act_tile<ACT_LEAKY_RELU, ALONG_ROWS>(acc, bias, slope); break;
        case ACT_SIGMOID: bias_act_tile<ACT_SIGMOID, ALONG_ROWS>(acc, bias, slope); break;
        case ACT_TANH: bias_act_tile<ACT_TANH, ALONG_ROWS>(acc, bias, slope); break;
        default: bias_act_tile<ACT_NONE, ALONG_ROWS>(acc, bias, slope);
    }
}

// C[z][m][n] = acc, z = blockIdx.z (a split's slice; 0 without a split), for the block's rows m = t.row(m0, i) < M
// and columns n = t.col(n0, j) < N of a stack of dense row-major M × N matrices. A thread's 4 consecutive columns
// go out as one float4 where vec (N % 4 == 0 and C 16-byte aligned) and all 4 are inside C, else as masked
// scalar stores. Index: the type of the tile's coordinates (int where a kernel keeps M·N in 32 bits); the
// slice and row offsets are 64-bit either way.
template <class Tile, class Index>
__device__ __forceinline__ void store_row_major(float* __restrict__ C, const float (&acc)[Tile::TM][Tile::TN],
                                                const typename Tile::Thread& t, Index m0, Index n0, Index M, Index N,
                                                bool vec) {
    C += (int64)blockIdx.z * M * N;
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i) {
        const Index m = t.row(m0, i);
        if (m >= M) continue;
        float* c_row = C + (int64)m * N;
#pragma unroll
        for (int q = 0; q < Tile::TN / 4; ++q) {
            const Index n = t.col4(n0, q);
            const float* v = &acc[i][4 * q];
            if (vec && n + 4 <= N) {
                store_float4(c_row + n, make_float4(v[0], v[1], v[2], v[3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (n + j < N) c_row[n + j] = v[j];
            }
        }
    }
}
