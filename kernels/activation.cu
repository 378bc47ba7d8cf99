// activation.cu: element-wise activations, forward and backward.
//
//   activation_fwd:  y[i]  = f(x[i])                      f in {relu, leaky_relu, sigmoid, tanh}
//   activation_bwd:  dx[i] = dy[i] * f'(x[i]) computed from the forward output y[i]
//   smooth_activation_fwd:  y[i]  = g(x[i])               g in {elu, selu, gelu (erf or tanh form), softplus, swish}
//   smooth_activation_bwd:  dx[i] = dy[i] * g'(x[i]) computed from the forward INPUT x[i] (gelu and swish
//                           cannot be inverted from y; no conv / gemm epilogue fuses these, so x is at hand)
//   (formulas: cnn_gpu/ops/activation.py, the NumPy reference; codes SMOOTH_* match its SMOOTH_CODES)
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

// ---- the smooth activations, backward from the input ---------------------------------------------
#define SMOOTH_ELU 1
#define SMOOTH_SELU 2
#define SMOOTH_GELU 3
#define SMOOTH_GELU_TANH 4
#define SMOOTH_SOFTPLUS 5
#define SMOOTH_SWISH 6

#define SELU_ALPHA 1.6732632423543772848170429916717f
#define SELU_SCALE 1.0507009873554804934193349852946f
#define GELU_TANH_COEFF 0.044715f
#define SQRT_2_OVER_PI 0.79788456080286535587989211986876f
#define INV_SQRT_2 0.70710678118654752440084436210485f
#define INV_SQRT_2PI 0.39894228040143267793994605993438f

// sigmoid without overflow: exp of a non-positive number only (as the NumPy path)
__device__ __forceinline__ float stable_sigmoid(float x) {
    const float e = expf(-fabsf(x));
    return x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

// g(x). The exp branches take min(x, 0), so the branch a positive x does not use cannot overflow.
__device__ __forceinline__ float smooth_activation(float x, int act, float alpha) {
    switch (act) {
        case SMOOTH_ELU: return x > 0.f ? x : alpha * expm1f(fminf(x, 0.f));
        case SMOOTH_SELU: return SELU_SCALE * (x > 0.f ? x : SELU_ALPHA * expm1f(fminf(x, 0.f)));
        // x·Φ(x) as ½x·erfc(−x/√2), and ½x(1 + tanh u) as x·sigmoid(2u): no cancellation for negative x
        case SMOOTH_GELU: return 0.5f * x * erfcf(-x * INV_SQRT_2);
        case SMOOTH_GELU_TANH: return x * stable_sigmoid(2.f * SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x * x * x));
        case SMOOTH_SOFTPLUS: return (x > 0.f ? x : (x != x ? x : 0.f)) + log1pf(expf(-fabsf(x)));
        case SMOOTH_SWISH: return x * stable_sigmoid(x);
        default: return x;
    }
}

// dy * g'(x)
__device__ __forceinline__ float smooth_activation_grad(float dy, float x, int act, float alpha) {
    switch (act) {
        case SMOOTH_ELU: return dy * (x > 0.f ? 1.f : alpha * expf(fminf(x, 0.f)));
        case SMOOTH_SELU: return dy * SELU_SCALE * (x > 0.f ? 1.f : SELU_ALPHA * expf(fminf(x, 0.f)));
        case SMOOTH_GELU: {
            const float cdf = 0.5f * erfcf(-x * INV_SQRT_2);
            return dy * (cdf + x * expf(-0.5f * x * x) * INV_SQRT_2PI);
        }
        case SMOOTH_GELU_TANH: {  // s = sigmoid(2u) = ½(1 + tanh u); d/dx = s + 2x·s(1 − s)·u'
            const float s = stable_sigmoid(2.f * SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x * x * x));
            return dy * (s + 2.f * x * s * (1.f - s) * SQRT_2_OVER_PI * (1.f + 3.f * GELU_TANH_COEFF * x * x));
        }
        case SMOOTH_SOFTPLUS: return dy * stable_sigmoid(x);
        case SMOOTH_SWISH: {
            const float s = stable_sigmoid(x);
            return dy * s * (1.f + x * (1.f - s));
        }
        default: return dy;
    }
}

__device__ __forceinline__ float4 smooth4(float4 v, int act, float alpha) {
    return make_float4(smooth_activation(v.x, act, alpha), smooth_activation(v.y, act, alpha),
                       smooth_activation(v.z, act, alpha), smooth_activation(v.w, act, alpha));
}

__device__ __forceinline__ float4 smooth_grad4(float4 dy, float4 x, int act, float alpha) {
    return make_float4(smooth_activation_grad(dy.x, x.x, act, alpha), smooth_activation_grad(dy.y, x.y, act, alpha),
                       smooth_activation_grad(dy.z, x.z, act, alpha), smooth_activation_grad(dy.w, x.w, act, alpha));
}

// Same launch and item layout as activation_fwd / activation_bwd (top of the file); alpha is elu's.
extern "C" __global__ void smooth_activation_fwd(const float* __restrict__ x, float* __restrict__ y,
                                                 int64 n, int act, float alpha, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    float4 v[ELEMENTWISE_UNROLL];
    load_items(x, n4, v);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        if (unrolled_item(k) < n4) store_float4(y + 4 * unrolled_item(k), smooth4(v[k], act, alpha));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        y[i] = smooth_activation(x[i], act, alpha);
    }
}

extern "C" __global__ void smooth_activation_bwd(const float* __restrict__ dy, const float* __restrict__ x,
                                                 float* __restrict__ dx, int64 n, int act, float alpha, int vec4) {
    const int64 n4 = vec4 ? n / 4 : 0;
    float4 g[ELEMENTWISE_UNROLL], v[ELEMENTWISE_UNROLL];
    load_items(dy, n4, g);
    load_items(x, n4, v);
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k) {
        if (unrolled_item(k) < n4) store_float4(dx + 4 * unrolled_item(k), smooth_grad4(g[k], v[k], act, alpha));
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        dx[i] = smooth_activation_grad(dy[i], x[i], act, alpha);
    }
}
