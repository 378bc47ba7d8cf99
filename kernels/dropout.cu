// dropout.cu: inverted dropout with a counter-based keep mask, forward and backward.
//
//   dropout_fwd:  mask[i] = (hash_seed_index(seed, i) >> 8) >= threshold     threshold = round(rate * 2^24)
//                 y[i]    = x[i] * (mask[i] * scale)                          scale = 1 / (1 - rate)
//   dropout_bwd:  dx[i]   = dy[i] * (mask[i] * scale)
//
// i is the flat C-order index, so the mask is a function of (seed, i) alone: independent of the launch
// shape, and reproduced bit for bit by the NumPy path (cnn_gpu/ops/dropout.py). mask * scale is 0 or
// scale exactly, so y is one rounding of x * scale, as on the host.
// seed comes by value, or from device memory when seed_from is not NULL (*seed_from, read as the kernel
// runs): a captured CUDA graph replays the same launch with the seed its host writes there each step.
// Launch: 1-D grid-stride, 256 threads a block, blocks = min(cdiv(n/4, 256), SMs * 8). When the float
// pointers are 16-byte aligned and mask is 4-byte aligned (vec4 = 1), each thread moves 4 consecutive
// elements (float4 data, uchar4 mask); the last n % 4 go as scalars.
// Memory bound: floor = 9 bytes an element / bandwidth, both ways. The hash costs ~20 integer ops an
// element (its seed half is loop-invariant and hoisted).
#include "common.cuh"

typedef unsigned char uint8;

__device__ __forceinline__ uint8 keep_element(uint64 seed, int64 i, uint32 threshold) {
    return (hash_seed_index(seed, (uint64)i) >> 8) >= threshold;
}

// The factor an element is multiplied by: scale if kept, 0 if dropped.
__device__ __forceinline__ float kept_scale(uint8 kept, float scale) { return (float)kept * scale; }

extern "C" __global__ void dropout_fwd(const float* __restrict__ x, float* __restrict__ y,
                                       uint8* __restrict__ mask, int64 n, uint64 seed,
                                       const uint64* __restrict__ seed_from, uint32 threshold, float scale,
                                       int vec4) {
    if (seed_from != nullptr) seed = *seed_from;
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        const int64 e = 4 * i;
        const float4 v = load_float4(x + e);
        const uchar4 k = make_uchar4(keep_element(seed, e, threshold), keep_element(seed, e + 1, threshold),
                                     keep_element(seed, e + 2, threshold), keep_element(seed, e + 3, threshold));
        store_float4(y + e, make_float4(v.x * kept_scale(k.x, scale), v.y * kept_scale(k.y, scale),
                                        v.z * kept_scale(k.z, scale), v.w * kept_scale(k.w, scale)));
        *reinterpret_cast<uchar4*>(mask + e) = k;
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        const uint8 k = keep_element(seed, i, threshold);
        mask[i] = k;
        y[i] = x[i] * kept_scale(k, scale);
    }
}

extern "C" __global__ void dropout_bwd(const float* __restrict__ dy, const uint8* __restrict__ mask,
                                       float* __restrict__ dx, int64 n, float scale, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        const float4 g = load_float4(dy + 4 * i);
        const uchar4 k = *reinterpret_cast<const uchar4*>(mask + 4 * i);
        store_float4(dx + 4 * i, make_float4(g.x * kept_scale(k.x, scale), g.y * kept_scale(k.y, scale),
                                             g.z * kept_scale(k.z, scale), g.w * kept_scale(k.w, scale)));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        dx[i] = dy[i] * kept_scale(mask[i], scale);
    }
}
