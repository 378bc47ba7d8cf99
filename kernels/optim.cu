// optim.cu: optimizer steps, in place, one launch per parameter tensor (Keras's formulas).
//
//   sgd_momentum_update:  v[i] = momentum * v[i] - lr * g[i]          (lr from *lr_from when not NULL)
//                         p[i] += nesterov ? momentum * v[i] - lr * g[i] : v[i]
//                         velocity == NULL (plain SGD, no state): the same with v[i] = 0 in, nothing out,
//                         i.e. p[i] += -(lr * g[i])
//   adam_update:          m[i] += (g[i] - m[i]) * (1 - beta_1)
//                         v[i] += (g[i]^2 - v[i]) * (1 - beta_2)
//                         p[i] -= (m[i] * alpha) / (sqrt(v[i]) + epsilon)
//                         alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t): computed on the host in float64,
//                         passed by value, or from device memory when alpha_from is not NULL (*alpha_from,
//                         read as the kernel runs: a captured CUDA graph gets each step's alpha there)
//   rmsprop_update:       v[i] = rho * v[i] + (1 - rho) * g[i]^2
//                         centered (average_grad != NULL): a[i] = rho * a[i] + (1 - rho) * g[i];
//                             d = v[i] - a[i]^2 + epsilon, else d = v[i] + epsilon
//                         inc = lr * g[i] / sqrt(d)
//                         momentum_buffer != NULL: b[i] = momentum * b[i] + inc; p[i] -= b[i], else p[i] -= inc
//   weight_decay_update:  p[i] -= p[i] * weight_decay * lr   (Keras's decoupled weight decay, before a step)
//   lr_from (sgd, rmsprop, weight decay), like alpha_from: when not NULL the learning rate is read there.
//
// Launch: 1-D grid-stride, 256 threads a block, blocks = min(cdiv(n/4, 256), SMs * 8). When every
// pointer is 16-byte aligned (vec4 = 1) each thread updates 4 consecutive elements with float4 loads
// and stores; the last n % 4 go as scalars. Each element is read and written by one thread only.
// Memory bound: floor = bytes / bandwidth, 20 bytes an element for SGD with momentum (p, g, v in;
// p, v out), 12 without, 28 for Adam (p, g, m, v in; p, m, v out).
#include "common.cuh"

__device__ __forceinline__ void sgd_momentum_step(float& p, float g, float& v, float lr, float momentum, int nesterov) {
    v = momentum * v - lr * g;
    p += nesterov ? momentum * v - lr * g : v;
}

__device__ __forceinline__ void adam_step(float& p, float g, float& m, float& v, float alpha,
                                          float one_minus_beta_1, float one_minus_beta_2, float epsilon) {
    m += (g - m) * one_minus_beta_1;
    v += (g * g - v) * one_minus_beta_2;
    p -= (m * alpha) / (sqrtf(v) + epsilon);
}

extern "C" __global__ void sgd_momentum_update(float* __restrict__ param, const float* __restrict__ grad,
                                               float* __restrict__ velocity, int64 n, float lr,
                                               const float* __restrict__ lr_from, float momentum, int nesterov,
                                               int vec4) {
    if (lr_from != nullptr) lr = *lr_from;
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        float4 p = load_float4(param + 4 * i);
        const float4 g = load_float4(grad + 4 * i);
        float4 v = velocity ? load_float4(velocity + 4 * i) : make_float4(0.f, 0.f, 0.f, 0.f);
        sgd_momentum_step(p.x, g.x, v.x, lr, momentum, nesterov);
        sgd_momentum_step(p.y, g.y, v.y, lr, momentum, nesterov);
        sgd_momentum_step(p.z, g.z, v.z, lr, momentum, nesterov);
        sgd_momentum_step(p.w, g.w, v.w, lr, momentum, nesterov);
        store_float4(param + 4 * i, p);
        if (velocity) store_float4(velocity + 4 * i, v);
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        float v = velocity ? velocity[i] : 0.f;
        sgd_momentum_step(param[i], grad[i], v, lr, momentum, nesterov);
        if (velocity) velocity[i] = v;
    }
}

extern "C" __global__ void adam_update(float* __restrict__ param, const float* __restrict__ grad,
                                       float* __restrict__ m, float* __restrict__ v, int64 n, float alpha,
                                       const float* __restrict__ alpha_from, float one_minus_beta_1,
                                       float one_minus_beta_2, float epsilon, int vec4) {
    if (alpha_from != nullptr) alpha = *alpha_from;
    const int64 n4 = vec4 ? n / 4 : 0;
    GRID_STRIDE_LOOP(i, n4) {
        float4 p = load_float4(param + 4 * i);
        const float4 g = load_float4(grad + 4 * i);
        float4 mi = load_float4(m + 4 * i);
        float4 vi = load_float4(v + 4 * i);
        adam_step(p.x, g.x, mi.x, vi.x, alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
        adam_step(p.y, g.y, mi.y, vi.y, alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
        adam_step(p.z, g.z, mi.z, vi.z, alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
        adam_step(p.w, g.w, mi.w, vi.w, alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
        store_float4(param + 4 * i, p);
        store_float4(m + 4 * i, mi);
        store_float4(v + 4 * i, vi);
    }
    GRID_STRIDE_LOOP(j, n - 4 * n4) {
        const int64 i = 4 * n4 + j;
        adam_step(param[i], grad[i], m[i], v[i], alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
    }
}

__device__ __forceinline__ void rmsprop_step(float& p, float g, float& v, float* a, float* b, float lr, float rho,
                                             float momentum, float epsilon) {
    v = rho * v + (1.f - rho) * (g * g);
    float denominator;
    if (a != nullptr) {
        *a = rho * *a + (1.f - rho) * g;
        denominator = v - *a * *a + epsilon;
    } else {
        denominator = v + epsilon;
    }
    const float increment = (lr * g) / sqrtf(denominator);
    if (b != nullptr) {
        *b = momentum * *b + increment;
        p -= *b;
    } else {
        p -= increment;
    }
}

// One thread an element (no float4 path: up to five streams, two of them optional; memory bound either way).
extern "C" __global__ void rmsprop_update(float* __restrict__ param, const float* __restrict__ grad,
                                          float* __restrict__ velocity, float* __restrict__ average_grad,
                                          float* __restrict__ momentum_buffer, int64 n, float lr,
                                          const float* __restrict__ lr_from, float rho, float momentum,
                                          float epsilon, int vec4) {
    if (lr_from != nullptr) lr = *lr_from;
    GRID_STRIDE_LOOP(i, n) {
        rmsprop_step(param[i], grad[i], velocity[i], average_grad ? average_grad + i : nullptr,
                     momentum_buffer ? momentum_buffer + i : nullptr, lr, rho, momentum, epsilon);
    }
}

extern "C" __global__ void weight_decay_update(float* __restrict__ param, int64 n, float lr,
                                               const float* __restrict__ lr_from, float weight_decay, int vec4) {
    if (lr_from != nullptr) lr = *lr_from;
    GRID_STRIDE_LOOP(i, n) {
        param[i] -= (param[i] * weight_decay) * lr;
    }
}
