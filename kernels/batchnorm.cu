// batchnorm.cu: batch normalisation, per channel c over the M = N * HW values x[n, c, s] of a
// contiguous x viewed as (N, C, HW) (a 2-D input (N, C) is HW = 1).
//
//   training statistics:  mean_c = (1/M) sum_{n,s} x[n,c,s],   var_c = (1/M) sum_{n,s} (x[n,c,s] - mean_c)^2
//                         invstd_c = 1 / sqrt(var_c + eps)
//   normalise:            y[n,c,s] = (x[n,c,s] - mean_c) * invstd_c * gamma_c + beta_c
//   backward (training):  xhat = (x - mean_c) * invstd_c,  dbeta_c = sum dy,  dgamma_c = sum dy * xhat
//                         dx = gamma_c * invstd_c * (dy - dbeta_c / M - xhat * dgamma_c / M)
//
// Reductions (batchnorm_stats, batchnorm_bwd_reduce) give each channel to one block and add in a fixed
// order (per-thread strided sums, then block_sum): no atomics, so the same inputs give the same bits.
// With fewer channels than SMs some SMs idle; the statistics stay exact and reproducible.
// Element-wise kernels (batchnorm_normalize, batchnorm_bwd_data): 1-D grid-stride, one thread an element.
// Indices are 32-bit: the caller checks that x has fewer than 2^31 elements.
// Floors, bytes an element: training forward 12 (read x for the statistics, read x and write y),
// inference forward 8, backward 20 (read dy and x to reduce, read them again and write dx).
#include "common.cuh"

// Calls visit(offset) for the offsets (n * channels + c) * hw + s of channel c's M = n_count * hw
// values, thread t taking m = n * hw + s = t, t + blockDim.x, ... in order; n and s are stepped
// without a division in the loop.
template <typename Visit>
__device__ __forceinline__ void for_each_in_channel(int c, int n_count, int channels, int hw, Visit visit) {
    const int64 m_count = (int64)n_count * hw;
    const int step_n = blockDim.x / hw, step_s = blockDim.x % hw;
    int n = threadIdx.x / hw, s = threadIdx.x % hw;
    for (int64 m = threadIdx.x; m < m_count; m += blockDim.x) {
        visit((n * channels + c) * hw + s);
        n += step_n;
        s += step_s;
        if (s >= hw) {
            s -= hw;
            ++n;
        }
    }
}

// batchnorm_stats: block c computes mean_c, then the centred var_c (a second pass over the channel,
// mostly from L2: exact where a one-pass sum of squares would cancel). Thread 0 writes
// saved_mean[c], saved_invstd[c] and, when update_running, updates the running statistics in place:
//   running_mean[c] = (1 - momentum) running_mean[c] + momentum mean_c
//   running_var[c]  = (1 - momentum) running_var[c]  + momentum var_c * M / (M - 1)   (unbiased; M >= 2)
// Launch: grid = C, block = a multiple of 32 up to 1024, 128 B static smem.
extern "C" __global__ void batchnorm_stats(const float* __restrict__ x, float* __restrict__ saved_mean,
                                           float* __restrict__ saved_invstd, float* __restrict__ running_mean,
                                           float* __restrict__ running_var, int n_count, int channels, int hw,
                                           float eps, float momentum, int update_running) {
    __shared__ float warp_totals[32];
    const int c = blockIdx.x;
    const float count = (float)n_count * (float)hw;

    float acc = 0.f;
    for_each_in_channel(c, n_count, channels, hw, [&](int i) { acc += x[i]; });
    const float mean = block_sum(acc, warp_totals) / count;

    acc = 0.f;
    for_each_in_channel(c, n_count, channels, hw, [&](int i) {
        const float d = x[i] - mean;
        acc += d * d;
    });
    const float var = block_sum(acc, warp_totals) / count;

    if (threadIdx.x == 0) {
        saved_mean[c] = mean;
        saved_invstd[c] = 1.f / sqrtf(var + eps);
        if (update_running) {
            running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
            running_var[c] = (1.f - momentum) * running_var[c] + momentum * (var * count / (count - 1.f));
        }
    }
}

// batchnorm_normalize: y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c], c = (i / hw) % channels.
// mean / invstd are the batch statistics (training) or the running ones (inference).
// Launch: 1-D grid-stride, 256 threads a block; thread writes y at the indices it visits.
extern "C" __global__ void batchnorm_normalize(const float* __restrict__ x, const float* __restrict__ mean,
                                               const float* __restrict__ invstd, const float* __restrict__ gamma,
                                               const float* __restrict__ beta, float* __restrict__ y,
                                               int total, int channels, int hw) {
    // unsigned: i + stride stays below 2^32 since total < 2^31
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total; i += gridDim.x * blockDim.x) {
        const unsigned c = (i / hw) % channels;
        y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
    }
}

// batchnorm_bwd_reduce: block c writes dbeta[c] = sum dy and dgamma[c] = sum dy * (x - mean_c) * invstd_c
// over channel c (thread 0 writes; fixed-order sums).
// Launch: grid = C, block = a multiple of 32 up to 1024, 128 B static smem.
extern "C" __global__ void batchnorm_bwd_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                                const float* __restrict__ mean, const float* __restrict__ invstd,
                                                float* __restrict__ dgamma, float* __restrict__ dbeta,
                                                int n_count, int channels, int hw) {
    __shared__ float warp_totals[32];
    const int c = blockIdx.x;
    const float mean_c = mean[c], invstd_c = invstd[c];
    float sum_dy = 0.f, sum_dy_xhat = 0.f;
    for_each_in_channel(c, n_count, channels, hw, [&](int i) {
        const float g = dy[i];
        sum_dy += g;
        sum_dy_xhat += g * ((x[i] - mean_c) * invstd_c);
    });
    sum_dy = block_sum(sum_dy, warp_totals);
    sum_dy_xhat = block_sum(sum_dy_xhat, warp_totals);
    if (threadIdx.x == 0) {
        dbeta[c] = sum_dy;
        dgamma[c] = sum_dy_xhat;
    }
}

// batchnorm_bwd_data: dx[i] = gamma[c] * invstd[c] * (dy[i] - dbeta[c] * inv_count - xhat * dgamma[c] * inv_count),
// xhat = (x[i] - mean[c]) * invstd[c], c = (i / hw) % channels, inv_count = 1 / M.
// Launch: 1-D grid-stride, 256 threads a block, after batchnorm_bwd_reduce; thread writes dx at the indices it visits.
extern "C" __global__ void batchnorm_bwd_data(const float* __restrict__ dy, const float* __restrict__ x,
                                              const float* __restrict__ mean, const float* __restrict__ invstd,
                                              const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                              const float* __restrict__ dbeta, float* __restrict__ dx,
                                              int total, int channels, int hw, float inv_count) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total; i += gridDim.x * blockDim.x) {
        const unsigned c = (i / hw) % channels;
        const float xhat = (x[i] - mean[c]) * invstd[c];
        dx[i] = gamma[c] * invstd[c] * (dy[i] - dbeta[c] * inv_count - xhat * dgamma[c] * inv_count);
    }
}
