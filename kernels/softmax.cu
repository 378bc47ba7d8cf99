// softmax.cu: softmax / log-softmax over the last axis, and the losses fused with their gradients.
//
// Every loss is two launches: a fused kernel computes each loss term and its gradient in one pass and
// writes one partial sum per block; sum_scaled then adds the partials in a fixed order and scales
// by 1/count. No atomics anywhere, so the same inputs give the same loss bits, run after run.
//
// Row kernels (softmax_fwd, softmax_xent_fwd_bwd) give each row to one warp, ROWS_PER_BLOCK warps a
// block: block = 32 * ROWS_PER_BLOCK threads, grid = cdiv(rows, ROWS_PER_BLOCK). Lane l visits
// columns l, l + 32, ... (coalesced), keeping a running (max m, sum s of exp(v - m)) with one expf
// a value; the warp merges its 32 pairs by an xor butterfly, then the lanes revisit their columns
// (from L1/L2) to write. Memory bound: floor = 8 bytes an element (read the input, write the output).
#include "common.cuh"

#define ROWS_PER_BLOCK 8

#define LOSS_SIGMOID_BCE 0  // codes shared with cnn_gpu/ops/softmax.py (LOSS_CODES)
#define LOSS_MSE 1

// ---- running max and sum of exponentials (the online softmax normaliser) --------------------------
struct MaxSumExp {
    float max;  // largest value seen (-inf before the first)
    float sum;  // sum of exp(v - max) over the values seen
};

__device__ __forceinline__ float negative_infinity() { return -__int_as_float(0x7f800000); }

// Fold one value in. A NaN lands in the sum and makes the row NaN, as in NumPy; -inf adds nothing.
__device__ __forceinline__ void add_value(MaxSumExp& a, float v) {
    if (v > a.max) {
        a.sum = a.sum * expf(a.max - v) + 1.f;
        a.max = v;
    } else {
        a.sum += v == negative_infinity() ? 0.f : expf(v - a.max);
    }
}

// merge(a, b) and merge(b, a) give the same bits (no FMA contraction), so after the butterfly every
// lane holds the same (max, sum).
__device__ __forceinline__ MaxSumExp merge(MaxSumExp a, MaxSumExp b) {
    const float m = fmaxf(a.max, b.max);
    if (m == negative_infinity()) return {m, __fadd_rn(a.sum, b.sum)};  // nothing but -inf so far
    return {m, __fadd_rn(__fmul_rn(a.sum, expf(a.max - m)), __fmul_rn(b.sum, expf(b.max - m)))};
}

// The row's (max, sum) in every lane of the warp.
__device__ __forceinline__ MaxSumExp row_max_sum_exp(const float* __restrict__ row, int64 k, int lane) {
    MaxSumExp acc = {negative_infinity(), 0.f};
    for (int64 j = lane; j < k; j += 32) add_value(acc, row[j]);
    for (int offset = 16; offset > 0; offset /= 2) {
        const MaxSumExp other = {__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)};
        acc = merge(acc, other);
    }
    return acc;
}

// softmax_fwd: for each row r of x (rows x k, contiguous), m = max_j x[r,j], s = sum_j exp(x[r,j] - m):
//   y[r,j] = exp(x[r,j] - m) / s                 (log_output = 0)
//   y[r,j] = (x[r,j] - m) - log s                (log_output = 1)
// Launch: row kernel (see the file header); warp w of block b owns row b * ROWS_PER_BLOCK + w and
// writes all of y's row.
extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)
softmax_fwd(const float* __restrict__ x, float* __restrict__ y, int64 rows, int64 k, int log_output) {
    const int lane = threadIdx.x % 32;
    const int64 r = (int64)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (r >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
    const float* xr = x + r * k;
    float* yr = y + r * k;
    const MaxSumExp n = row_max_sum_exp(xr, k, lane);
    const float log_s = logf(n.sum);
    for (int64 j = lane; j < k; j += 32) {
        const float shifted = xr[j] - n.max;
        yr[j] = log_output ? shifted - log_s : expf(shifted) / n.sum;
    }
}

// softmax_xent_fwd_bwd: softmax cross-entropy on logits z (rows x k) with integer labels t:
//   loss_r   = log s_r - (z[r, t_r] - m_r)                        (= -log softmax(z)[r, t_r])
//   dz[r,j]  = (exp(z[r,j] - m_r) / s_r - [j == t_r]) * inv_rows
//   block_loss[b] = sum of loss_r over block b's rows (block_sum: fixed order)
// Launch: row kernel (see the file header), grid = cdiv(rows, ROWS_PER_BLOCK); every lane writes its
// columns of dz, lane 0 reads z[r, t_r], thread 0 writes block_loss[b]. Labels are checked to lie in
// [0, k) before the launch. Then sum_scaled(block_loss, grid, 1 / rows) gives the mean loss.
extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)
softmax_xent_fwd_bwd(const float* __restrict__ z, const int64* __restrict__ labels, float* __restrict__ dz,
                     float* __restrict__ block_loss, int64 rows, int64 k, float inv_rows) {
    __shared__ float warp_totals[32];
    const int lane = threadIdx.x % 32;
    const int64 r = (int64)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    float row_loss = 0.f;
    if (r < rows) {  // no return: every warp must reach block_sum
        const float* zr = z + r * k;
        float* dzr = dz + r * k;
        const int64 label = labels[r];
        const MaxSumExp n = row_max_sum_exp(zr, k, lane);
        for (int64 j = lane; j < k; j += 32) {
            const float p = expf(zr[j] - n.max) / n.sum;
            dzr[j] = (p - (j == label ? 1.f : 0.f)) * inv_rows;
        }
        if (lane == 0) row_loss = logf(n.sum) - (zr[label] - n.max);
    }
    const float total = block_sum(row_loss, warp_totals);
    if (threadIdx.x == 0) block_loss[blockIdx.x] = total;
}

// elementwise_loss_fwd_bwd: for i in [0, n), with p = pred[i], t = target[i]:
//   LOSS_SIGMOID_BCE (p = logit z): loss_i = max(z, 0) - z t + log(1 + exp(-|z|)),  g = sigmoid(z) - t
//   LOSS_MSE:                       loss_i = (p - t)^2,                             g = 2 (p - t)
//   grad[i] = g * inv_n;  block_loss[b] = sum of loss_i over the elements block b visits (fixed order)
// Launch: 1-D grid-stride, 256 threads a block, grid = grid_stride_blocks(n) (fixed for a device, so
// each block's share of the elements, and so the loss bits, are reproducible). Each thread writes the
// grad of the elements it visits; thread 0 writes block_loss[b]. Then sum_scaled(block_loss, grid, 1/n).
// Floor: 12 bytes an element (read pred and target, write grad), one expf + one log1pf for BCE.
extern "C" __global__ void elementwise_loss_fwd_bwd(const float* __restrict__ pred, const float* __restrict__ target,
                                                    float* __restrict__ grad, float* __restrict__ block_loss,
                                                    int64 n, float inv_n, int loss) {
    __shared__ float warp_totals[32];
    float thread_loss = 0.f;
    GRID_STRIDE_LOOP(i, n) {
        const float p = pred[i], t = target[i];
        float term, g;
        if (loss == LOSS_SIGMOID_BCE) {
            const float e = expf(-fabsf(p));  // exp of a non-positive number only: stable in both tails
            term = fmaxf(p, 0.f) - p * t + log1pf(e);
            g = (p >= 0.f ? 1.f / (1.f + e) : e / (1.f + e)) - t;
        } else {
            const float d = p - t;
            term = d * d;
            g = 2.f * d;
        }
        grad[i] = g * inv_n;
        thread_loss += term;
    }
    const float total = block_sum(thread_loss, warp_totals);
    if (threadIdx.x == 0) block_loss[blockIdx.x] = total;
}

// sum_scaled: out[0] = scale * sum_i partials[i], i in [0, n).
// Launch: ONE block of 256 threads; thread t adds partials t, t + 256, ... in order, then block_sum.
// Fixed order: the same partials give the same bits. Thread 0 writes out[0].
extern "C" __global__ void sum_scaled(const float* __restrict__ partials, int64 n, float scale, float* __restrict__ out) {
    __shared__ float warp_totals[32];
    float acc = 0.f;
    for (int64 i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
    const float total = block_sum(acc, warp_totals);
    if (threadIdx.x == 0) out[0] = total * scale;
}
