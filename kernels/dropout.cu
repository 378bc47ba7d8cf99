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
// Launch: 1-D, 256 threads a block, blocks = cdiv(items, 256 * ELEMENTWISE_UNROLL), no loop: each
// thread takes ELEMENTWISE_UNROLL = 4 items (unrolled_item, common.cuh), loading all of them before
// computing. When the float
// pointers are 16-byte aligned and mask is 4-byte aligned (vec4 = 1), an item is 4 consecutive
// elements (float4 data, uchar4 mask; items = n/4) and the last n % 4 go as scalars; otherwise
// (vec4 = 0) every element is a scalar (items = n), in the same tail loop.
// Memory bound: floor = 9 bytes an element / bandwidth, both ways. The hash costs ~20 integer ops an
// element (its seed half is computed once a thread).
#include "common.cuh"

typedef unsigned char uint8;

__device__ __forceinline__ uint8 keep_element(uint64 seed, int64 i, uint32 threshold) {
    return (hash_seed_index(seed, (uint64)i) >> 8) >= threshold;
}

// The factor an element is multiplied by: scale if kept, 0 if dropped.
__device__ __forceinline__ float kept_scale(uint8 kept, float scale) { return (float)kept * scale; }

// The 4 keep flags of the elements e .. e + 3.
__device__ __forceinline__ uchar4 keep_elements4(uint64 seed, int64 e, uint32 threshold) {
    return make_uchar4(keep_element(seed, e, threshold), keep_element(seed, e + 1, threshold),
                       keep_element(seed, e + 2, threshold), keep_element(seed, e + 3, threshold));
}

__device__ __forceinline__ float4 scaled_by_mask4(float4 v, uchar4 k, float scale) {
    return make_float4(v.x * kept_scale(k.x, scale), v.y * kept_scale(k.y, scale), v.z * kept_scale(k.z, scale),
                       v.w * kept_scale(k.w, scale));
}

extern "C" __global__ void dropout_fwd(const float* __restrict__ x, float* __restrict__ y,
                                       uint8* __restrict__ mask, int64 n, uint64 seed,
                                       const uint64* __restrict__ seed_from, uint32 threshold, float scale,
                                       int vec4) {
    if (seed_from != nullptr) seed = *seed_from;
    const int64 n4 = vec4 ? n / 4 : 0;
    float4 v[ELEMENTWISE_UNROLL];
    load_items(x, n4, v);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        const int64 e = 4 * unrolled_item(k);
        if (unrolled_item(k) < n4) {
            const uchar4 kept = keep_elements4(seed, e, threshold);
            store_float4(y + e, scaled_by_mask4(v[k], kept, scale));
            *reinterpret_cast<uchar4*>(mask + e) = kept;
        }
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
    float4 g[ELEMENTWISE_UNROLL];
    uchar4 kept[ELEMENTWISE_UNROLL];
    load_items(dy, n4, g);
    load_items(mask, n4, kept);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        if (unrolled_item(k) < n4) store_float4(dx + 4 * unrolled_item(k), scaled_by_mask4(g[k], kept[k], scale));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        dx[i] = dy[i] * kept_scale(mask[i], scale);
    }
}
