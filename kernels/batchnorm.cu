// batchnorm.cu: batch normalisation, per channel c over the M = N * HW values x[n, c, s] of a
// contiguous x viewed as (N, C, HW) (a 2-D input (N, C) is HW = 1).
//
//   training statistics:  mean_c = (1/M) sum_{n,s} x[n,c,s],   var_c = (1/M) sum_{n,s} (x[n,c,s] - mean_c)^2
//                         invstd_c = 1 / sqrt(var_c + eps)
//   normalise:            y[n,c,s] = (x[n,c,s] - mean_c) * invstd_c * gamma_c + beta_c
//   backward (training):  xhat = (x - mean_c) * invstd_c,  dbeta_c = sum dy,  dgamma_c = sum dy * xhat
//                         dx = gamma_c * invstd_c * (dy - dbeta_c / M - xhat * dgamma_c / M)
//
// Reductions are split so that few channels still fill the GPU: grid (C, splits), block (c, z) reducing
// the contiguous chunk m in [z * chunk, min((z + 1) * chunk, M)) of channel c's values m = n * HW + s.
// With one split the block writes the channel's result itself; otherwise it writes per-split partials
// and a small kernel combines the splits of each channel in increasing z. Every sum runs in a fixed
// order and there are no atomics, so the same inputs give the same bits run after run (on one GPU: the
// split count follows its SM count).
//
// Statistics in one read of x: each warp reduces tiles of 256 consecutive values held in registers,
// taking a tile's mean and then its exactly centred sum of squares M2 from those registers, and merges
// the tiles' (count, mean, M2) with Chan et al.'s pairwise update, then warps in order, then splits in
// order. Every square is centred on a mean of its own 256 values, so this is as exact as the two-pass
// centred variance (a one-pass sum of squares would cancel for x = 1000 + noise), while x is read once
// (4 bytes a value) instead of twice.
// Element-wise kernels (batchnorm_normalize, batchnorm_bwd_data): 1-D grid-stride, one thread an element,
// its channel found by FastDivmod (common.cuh).
// Indices are 32-bit: the caller checks that x has fewer than 2^31 elements.
// Floors, bytes an element: training forward 12 (read x for the statistics, read x and write y),
// inference forward 8, backward 20 (read dy and x to reduce, read them again and write dx).
#include "common.cuh"

constexpr int VALUES_PER_LANE = 8;               // independent loads each lane has in flight per tile
constexpr int WARP_TILE = 32 * VALUES_PER_LANE;  // consecutive values of a channel one warp reduces at once

// ---- walking one channel ------------------------------------------------------------------------
// Value m = n * hw + s of channel c lies at offset (n * channels + c) * hw + s. A cursor holds (s, offset)
// for one m and moves m forward by a fixed step with one compare, no division. Offsets are unsigned: a
// cursor that has walked past the channel's end may leave int range, but it is never dereferenced.
struct ChannelCursor {
    int s;
    unsigned offset;
};

struct ChannelStep {
    int s;            // step % hw
    unsigned offset;  // (step / hw) whole rows, plus step % hw
};

struct ChannelWalk {
    int hw;
    unsigned row_stride;    // channels * hw: from (n, c, s) to (n + 1, c, s)
    unsigned channel_base;  // c * hw

    __device__ ChannelWalk(int c, int channels, int hw)
        : hw(hw), row_stride((unsigned)channels * hw), channel_base((unsigned)c * hw) {}

    __device__ ChannelCursor at(unsigned m) const {
        const unsigned n = m / hw, s = m - n * hw;
        return {(int)s, n * row_stride + channel_base + s};
    }
    __device__ ChannelStep step(unsigned by) const {
        const unsigned rows = by / hw, s = by - rows * hw;
        return {(int)s, rows * row_stride + s};
    }
    __device__ void advance(ChannelCursor& p, ChannelStep d) const {
        p.s += d.s;
        p.offset += d.offset;
        if (p.s >= hw) {  // d.s < hw, so one carry at most
            p.s -= hw;
            p.offset += row_stride - hw;
        }
    }
};

// Calls visit(offset, count) once a warp tile of the chunk [begin, end) of a channel, the tiles of warp w
// being those starting at m0 = begin + (w + k * warps) * WARP_TILE, in increasing k. count = values of
// the tile (WARP_TILE but for the last one, the same on every lane); offset[j] is where the lane's value
// m0 + 32 j + lane lies, to be read only when 32 j + lane < count. Every lane of a warp calls visit
// the same number of times, so visit may use warp_sum.
template <typename Visit>
__device__ __forceinline__ void for_each_warp_tile(const ChannelWalk& walk, int64 begin, int64 end, Visit visit) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned tile_stride = blockDim.x * VALUES_PER_LANE;
    const ChannelStep to_next_value = walk.step(32), to_next_tile = walk.step(tile_stride);
    ChannelCursor tile = walk.at((unsigned)(begin + warp * WARP_TILE + lane));
    for (int64 m0 = begin + warp * WARP_TILE; m0 < end; m0 += tile_stride) {
        unsigned offset[VALUES_PER_LANE];
        ChannelCursor p = tile;
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) {
            offset[j] = p.offset;
            walk.advance(p, to_next_value);
        }
        visit(offset, (int)min((int64)WARP_TILE, end - m0));
        walk.advance(tile, to_next_tile);
    }
}

// ---- statistics ---------------------------------------------------------------------------------
// count values with mean `mean` and centred sum of squares m2 = sum (v - mean)^2.
struct Moments {
    int count;
    float mean, m2;
};

// Chan, Golub & LeVeque's pairwise combination of two disjoint sets' moments (an empty side returns
// the other exactly): delta = mean_b - mean_a, mean = mean_a + delta n_b / n,
// m2 = m2_a + m2_b + delta^2 n_a n_b / n. No cancellation: every term is >= 0.
__device__ __forceinline__ Moments merge_moments(Moments a, Moments b) {
    if (a.count == 0) return b;
    if (b.count == 0) return a;
    const int count = a.count + b.count;
    const float weight_b = (float)b.count / (float)count, delta = b.mean - a.mean;
    return {count, a.mean + delta * weight_b, a.m2 + b.m2 + delta * delta * ((float)a.count * weight_b)};
}

// Writes channel c's saved_mean, saved_invstd and, when update_running, the running statistics in place:
//   running_mean[c] = (1 - momentum) running_mean[c] + momentum mean_c
//   running_var[c]  = (1 - momentum) running_var[c]  + momentum m2_c / (M - 1)   (unbiased; M >= 2)
__device__ __forceinline__ void finish_channel_stats(int c, Moments channel, float* __restrict__ saved_mean,
                                                     float* __restrict__ saved_invstd, float* __restrict__ running_mean,
                                                     float* __restrict__ running_var, float eps, float momentum,
                                                     int update_running) {
    saved_mean[c] = channel.mean;
    saved_invstd[c] = 1.f / sqrtf(channel.m2 / (float)channel.count + eps);
    if (update_running) {
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * channel.mean;
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * (channel.m2 / (float)(channel.count - 1));
    }
}

// batchnorm_stats: block (c, z) computes the Moments of chunk z of channel c (tiles, then its warps
// merged in order by thread 0). gridDim.y == 1: thread 0 finishes the channel (finish_channel_stats;
// partials unused). Otherwise thread 0 writes partials[z][0][c] = mean, partials[z][1][c] = m2
// ((splits, 2, C) floats) and batchnorm_stats_finalize finishes. Launch: grid (C, splits), block a
// multiple of 32 up to 1024 (the host uses 256), 384 B static smem.
extern "C" __global__ void batchnorm_stats(const float* __restrict__ x, float* __restrict__ partials,
                                           float* __restrict__ saved_mean, float* __restrict__ saved_invstd,
                                           float* __restrict__ running_mean, float* __restrict__ running_var,
                                           int n_count, int channels, int hw, int chunk, float eps, float momentum,
                                           int update_running) {
    __shared__ Moments warp_moments[32];
    const int c = blockIdx.x, split = blockIdx.y, lane = threadIdx.x % 32;
    const int64 begin = (int64)split * chunk, end = min(begin + chunk, (int64)n_count * hw);

    Moments moments = {0, 0.f, 0.f};
    for_each_warp_tile(ChannelWalk(c, channels, hw), begin, end, [&](const unsigned* offset, int count) {
        float v[VALUES_PER_LANE], sum = 0.f;
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) v[j] = 32 * j + lane < count ? x[offset[j]] : 0.f;
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) sum += v[j];
        const float mean = warp_sum(sum) / (float)count;
        float m2 = 0.f;
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) {
            const float d = v[j] - mean;
            if (32 * j + lane < count) m2 += d * d;
        }
        moments = merge_moments(moments, {count, mean, warp_sum(m2)});
    });
    if (lane == 0) warp_moments[threadIdx.x / 32] = moments;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < (int)(blockDim.x / 32); ++w) moments = merge_moments(moments, warp_moments[w]);
    if (gridDim.y == 1) {
        finish_channel_stats(c, moments, saved_mean, saved_invstd, running_mean, running_var, eps, momentum,
                             update_running);
    } else {
        partials[(2 * split) * channels + c] = moments.mean;
        partials[(2 * split + 1) * channels + c] = moments.m2;
    }
}

// batchnorm_stats_finalize: channel c merges the splits' Moments from batchnorm_stats in increasing z
// (split z counts min(chunk, M - z * chunk) values) and finishes the channel (finish_channel_stats).
// Launch: 1-D grid-stride over C, any block size; thread writes the channels it visits.
extern "C" __global__ void batchnorm_stats_finalize(const float* __restrict__ partials, float* __restrict__ saved_mean,
                                                    float* __restrict__ saved_invstd, float* __restrict__ running_mean,
                                                    float* __restrict__ running_var, int n_count, int channels, int hw,
                                                    int chunk, int splits, float eps, float momentum,
                                                    int update_running) {
    const int64 m_count = (int64)n_count * hw;
    GRID_STRIDE_LOOP(i, channels) {
        const int c = (int)i;
        Moments channel = {0, 0.f, 0.f};
        for (int z = 0; z < splits; ++z) {
            const int count = (int)min((int64)chunk, m_count - (int64)z * chunk);
            channel = merge_moments(channel, {count, partials[(2 * z) * channels + c], partials[(2 * z + 1) * channels + c]});
        }
        finish_channel_stats(c, channel, saved_mean, saved_invstd, running_mean, running_var, eps, momentum,
                             update_running);
    }
}

// batchnorm_inference_stats: saved_mean[c] = running_mean[c], saved_invstd[c] = 1 / sqrt(running_var[c] + eps),
// the statistics inference normalises with. Launch: 1-D grid-stride over C, any block size.
extern "C" __global__ void batchnorm_inference_stats(const float* __restrict__ running_mean,
                                                     const float* __restrict__ running_var,
                                                     float* __restrict__ saved_mean, float* __restrict__ saved_invstd,
                                                     int channels, float eps) {
    GRID_STRIDE_LOOP(c, channels) {
        saved_mean[c] = running_mean[c];
        saved_invstd[c] = 1.f / sqrtf(running_var[c] + eps);
    }
}

// Channel of the flat index i of x viewed as (N, C, HW): (i / hw) % channels, by two FastDivmods
// (a multiply-high each instead of two ~20-instruction divisions per element).
__device__ __forceinline__ int channel_of(int i, FastDivmod hw, FastDivmod channels) {
    const int row = hw.div(i);
    return row - channels.div(row) * channels.divisor;
}

// The kernel arguments of channel_of's two FastDivmods: divisor, then cnn_gpu.cuda.grid.fast_divmod_params
// (multiplier, shift), of hw and then of C.
#define CHANNEL_OF_PARAMS int hw, uint32 hw_multiplier, uint32 hw_shift, int channels, uint32 channels_multiplier, \
                          uint32 channels_shift
#define CHANNEL_OF_DIVISORS FastDivmod{hw, hw_multiplier, hw_shift}, FastDivmod{channels, channels_multiplier, channels_shift}

// batchnorm_normalize: y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c], c = (i / hw) % channels.
// mean / invstd are the batch statistics (training) or the running ones (inference).
// Launch: 1-D grid-stride, 256 threads a block; thread writes y at the indices it visits.
extern "C" __global__ void batchnorm_normalize(const float* __restrict__ x, const float* __restrict__ mean,
                                               const float* __restrict__ invstd, const float* __restrict__ gamma,
                                               const float* __restrict__ beta, float* __restrict__ y, int total,
                                               CHANNEL_OF_PARAMS) {
    // unsigned: i + stride stays below 2^32 since total < 2^31
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total; i += gridDim.x * blockDim.x) {
        const int c = channel_of((int)i, CHANNEL_OF_DIVISORS);
        y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
    }
}

// ---- backward -----------------------------------------------------------------------------------
// batchnorm_bwd_reduce: block (c, z) sums over chunk z of channel c (as batchnorm_stats chunks it)
//   dgamma_part = invstd_c * sum dy * (x - mean_c),   dbeta_part = sum dy
// (per-lane sums in tile order, then block_sum; thread 0 writes partials[z][0][c] = dgamma_part,
// partials[z][1][c] = dbeta_part). With gridDim.y == 1, partials is (dgamma; dbeta) itself; otherwise
// batchnorm_sum_splits adds the splits. Launch: grid (C, splits), block a multiple of 32 up to 1024
// (the host uses 256), 128 B static smem.
extern "C" __global__ void batchnorm_bwd_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                                const float* __restrict__ mean, const float* __restrict__ invstd,
                                                float* __restrict__ partials, int n_count, int channels, int hw,
                                                int chunk) {
    __shared__ float warp_totals[32];
    const int c = blockIdx.x, split = blockIdx.y, lane = threadIdx.x % 32;
    const int64 begin = (int64)split * chunk, end = min(begin + chunk, (int64)n_count * hw);
    const float mean_c = mean[c];

    float sum_dy = 0.f, sum_dy_centred = 0.f;
    for_each_warp_tile(ChannelWalk(c, channels, hw), begin, end, [&](const unsigned* offset, int count) {
        float g[VALUES_PER_LANE], v[VALUES_PER_LANE];
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) {
            const bool valid = 32 * j + lane < count;
            g[j] = valid ? dy[offset[j]] : 0.f;
            v[j] = valid ? x[offset[j]] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < VALUES_PER_LANE; ++j) {
            if (32 * j + lane < count) {
                sum_dy += g[j];
                sum_dy_centred += g[j] * (v[j] - mean_c);
            }
        }
    });
    sum_dy = block_sum(sum_dy, warp_totals);
    sum_dy_centred = block_sum(sum_dy_centred, warp_totals);
    if (threadIdx.x == 0) {
        partials[(2 * split) * channels + c] = invstd[c] * sum_dy_centred;
        partials[(2 * split + 1) * channels + c] = sum_dy;
    }
}

// batchnorm_sum_splits: out[i] = sum_{z < splits} partials[z * n + i], z in increasing order (n = 2C: the
// (dgamma; dbeta) rows of batchnorm_bwd_reduce's splits). Launch: 1-D grid-stride, any block size.
extern "C" __global__ void batchnorm_sum_splits(const float* __restrict__ partials, float* __restrict__ out, int n,
                                                int splits) {
    GRID_STRIDE_LOOP(i, n) {
        float sum = 0.f;
        for (int z = 0; z < splits; ++z) sum += partials[(int64)z * n + i];
        out[i] = sum;
    }
}

// batchnorm_bwd_data: dx[i] = gamma[c] * invstd[c] * (dy[i] - dbeta[c] * inv_count - xhat * dgamma[c] * inv_count),
// xhat = (x[i] - mean[c]) * invstd[c], c = (i / hw) % channels, inv_count = 1 / M.
// Launch: 1-D grid-stride, 256 threads a block, after the reduction; thread writes dx at the indices it visits.
extern "C" __global__ void batchnorm_bwd_data(const float* __restrict__ dy, const float* __restrict__ x,
                                              const float* __restrict__ mean, const float* __restrict__ invstd,
                                              const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                              const float* __restrict__ dbeta, float* __restrict__ dx, float inv_count,
                                              int total, CHANNEL_OF_PARAMS) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total; i += gridDim.x * blockDim.x) {
        const int c = channel_of((int)i, CHANNEL_OF_DIVISORS);
        const float xhat = (x[i] - mean[c]) * invstd[c];
        dx[i] = gamma[c] * invstd[c] * (dy[i] - dbeta[c] * inv_count - xhat * dgamma[c] * inv_count);
    }
}
