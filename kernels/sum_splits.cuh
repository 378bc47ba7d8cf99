// sum_splits.cuh: the deterministic second pass of every split reduction in kernels/gemm.cu and kernels/conv2d.cu
// (split-K slices, split convolution partials, the bias gradients' partial sums), compiled into both families.
//
//   sum_splits_bias_act:  out[c] = act( Σ_{r = 0..rows-1} x[r·cols + c] + bias[(c / bias_stride) % bias_period] )
//       x: rows partial results (splits, or a gradient's rows) of cols values each; bias may be null; act one
//       of common.cuh's ACT_* codes. gemm's bias is per column (stride 1, period N), conv2d's per channel of an
//       NCHW output (stride OH·OW, period K).
//
// Launch: grid (min(cdiv(cols, SPLIT_SUM_COLUMNS), ...)), block (SPLIT_SUM_COLUMNS, SPLIT_SUM_ROW_GROUPS), both
// sizes compile-time defines (cnn_gpu/cuda/loader.py's FAMILY_DEFINES: 32 × 8 in gemm.cu, whose sums can run over
// a batch of rows; 256 × 1 in conv2d.cu, whose sums are over a few splits of many values). Blocks stride over
// tiles of SPLIT_SUM_COLUMNS columns. Thread (c, g) adds rows g, g + ROW_GROUPS, ... of column c in increasing
// order (a warp reads consecutive floats of one row), then thread (c, 0) adds the ROW_GROUPS partials in order:
// the same bits on every run, no atomics. With one row group the rows are added in plain increasing order.
// Memory bound: floor = 4·(rows + 1)·cols bytes.
#pragma once
#include "common.cuh"

#if !defined(SPLIT_SUM_COLUMNS) || !defined(SPLIT_SUM_ROW_GROUPS)
#error "SPLIT_SUM_COLUMNS and SPLIT_SUM_ROW_GROUPS come from cnn_gpu/cuda/loader.py's FAMILY_DEFINES"
#endif

extern "C" __global__ void __launch_bounds__(SPLIT_SUM_COLUMNS * SPLIT_SUM_ROW_GROUPS)
sum_splits_bias_act(const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ out, int64 rows,
                    int64 cols, int64 bias_stride, int64 bias_period, int act, float slope) {
    constexpr int COLUMNS = SPLIT_SUM_COLUMNS, GROUPS = SPLIT_SUM_ROW_GROUPS;
    const int group = GROUPS > 1 ? (int)threadIdx.y : 0;
    for (int64 c0 = (int64)blockIdx.x * COLUMNS; c0 < cols; c0 += (int64)gridDim.x * COLUMNS) {
        const int64 c = c0 + threadIdx.x;
        float sum = 0.f;
        if (c < cols)
            for (int64 r = group; r < rows; r += GROUPS) sum += x[r * cols + c];
        if constexpr (GROUPS > 1) {
            __shared__ float partial[GROUPS][COLUMNS + 1];
            partial[group][threadIdx.x] = sum;
            __syncthreads();
            if (group == 0)
#pragma unroll
                for (int g = 1; g < GROUPS; ++g) sum += partial[g][threadIdx.x];
        }
        if (group == 0 && c < cols) {
            if (bias != nullptr) sum += __ldg(bias + (bias_stride == 1 ? c : c / bias_stride) % bias_period);
            out[c] = apply_activation(sum, act, slope);
        }
        if constexpr (GROUPS > 1) __syncthreads();  // partial is rewritten by the next column tile
    }
}
