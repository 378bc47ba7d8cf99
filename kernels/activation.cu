// activation.cu: element-wise activations, forward and backward.
//
//   activation_fwd:  y[i]  = f(x[i])                      f in {relu, leaky_relu, sigmoid, tanh}
//   activation_bwd:  dx[i] = dy[i] * f'(x[i]) computed from the forward output y[i]
//
// Launch: 1-D, 256 threads a block, blocks = cdiv(items, 256 * ELEMENTWISE_UNROLL), no loop: each
// thread takes ELEMENTWISE_UNROLL = 4 items (unrolled_item, common.cuh), loading all of them before
// computing: 64 bytes of each input in flight a thread. When every pointer is 16-byte aligned (vec4 = 1) an item is a
// float4 (items = n/4) and the last n % 4 elements go as scalars; otherwise (vec4 = 0) every element
// is a scalar (items = n), in the same tail loop.
// Memory bound: floor = bytes / bandwidth (8 bytes an element forward, 12 backward); 1 transcendental
// per element at most.
#include "common.cuh"

__device__ __forceinline__ float4 activate4(float4 v, int act, float slope) {
    return make_float4(apply_activation(v.x, act, slope), apply_activation(v.y, act, slope),
                       apply_activation(v.z, act, slope), apply_activation(v.w, act, slope));
}

__device__ __forceinline__ float4 activation_grad4(float4 dy, float4 y, int act, float slope) {
    return make_float4(activation_grad_from_output(dy.x, y.x, act, slope),
                       activation_grad_from_output(dy.y, y.y, act, slope),
                       activation_grad_from_output(dy.z, y.z, act, slope),
                       activation_grad_from_output(dy.w, y.w, act, slope));
}

extern "C" __global__ void activation_fwd(const float* __restrict__ x, float* __restrict__ y,
                                          int64 n, int act, float slope, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    float4 v[ELEMENTWISE_UNROLL];
    load_items(x, n4, v);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        if (unrolled_item(k) < n4) store_float4(y + 4 * unrolled_item(k), activate4(v[k], act, slope));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        y[i] = apply_activation(x[i], act, slope);
    }
}

extern "C" __global__ void activation_bwd(const float* __restrict__ dy, const float* __restrict__ y,
                                          float* __restrict__ dx, int64 n, int act, float slope, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    float4 g[ELEMENTWISE_UNROLL], o[ELEMENTWISE_UNROLL];
    load_items(dy, n4, g);
    load_items(y, n4, o);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        if (unrolled_item(k) < n4) store_float4(dx + 4 * unrolled_item(k), activation_grad4(g[k], o[k], act, slope));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        dx[i] = activation_grad_from_output(dy[i], y[i], act, slope);
    }
}
