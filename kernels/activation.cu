// activation.cu: element-wise activations, forward and backward.
//
//   activation_fwd:  y[i]  = f(x[i])                      f in {relu, leaky_relu, sigmoid, tanh}
//   activation_bwd:  dx[i] = dy[i] * f'(x[i]) computed from the forward output y[i]
//
// Launch: 1-D grid-stride, 256 threads a block, blocks = min(cdiv(n/4, 256), SMs * 8).
// When every pointer is 16-byte aligned (vec4 = 1) each thread moves float4s: the first n/4*4
// elements go as float4, the last n % 4 as scalars. Memory bound: floor = bytes / bandwidth
// (8 bytes an element forward, 12 backward); 1 transcendental per element at most.
#include "common.cuh"

extern "C" __global__ void activation_fwd(const float* __restrict__ x, float* __restrict__ y,
                                          int64 n, int act, float slope, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        float4 v = load_float4(x + 4 * i);
        v.x = apply_activation(v.x, act, slope);
        v.y = apply_activation(v.y, act, slope);
        v.z = apply_activation(v.z, act, slope);
        v.w = apply_activation(v.w, act, slope);
        store_float4(y + 4 * i, v);
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        y[i] = apply_activation(x[i], act, slope);
    }
}

extern "C" __global__ void activation_bwd(const float* __restrict__ dy, const float* __restrict__ y,
                                          float* __restrict__ dx, int64 n, int act, float slope, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        const float4 g = load_float4(dy + 4 * i);
        const float4 o = load_float4(y + 4 * i);
        float4 r;
        r.x = activation_grad_from_output(g.x, o.x, act, slope);
        r.y = activation_grad_from_output(g.y, o.y, act, slope);
        r.z = activation_grad_from_output(g.z, o.z, act, slope);
        r.w = activation_grad_from_output(g.w, o.w, act, slope);
        store_float4(dx + 4 * i, r);
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        dx[i] = activation_grad_from_output(dy[i], y[i], act, slope);
    }
}
