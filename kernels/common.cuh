// common.cuh: helpers shared by every kernel family.
//   - activation codes and apply_activation / activation_grad_from_output, used by the element-wise
//     kernels and by the fused epilogues of conv2d and gemm (codes match cnn_gpu/ops/activation.py);
//   - the counter-based hash behind dropout (mirrored bit for bit in cnn_gpu/ops/dropout.py);
//   - 16-byte vector load/store helpers and the unrolled 1-D item layout of the element-wise kernels;
//   - FastDivmod: division by a runtime-invariant int as a multiply-high and a shift;
//   - deterministic warp and block sums (softmax losses, batch-norm statistics).
#pragma once

typedef unsigned int uint32;
typedef unsigned long long uint64;
typedef long long int64;

// ---- activations --------------------------------------------------------------------------------
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_SIGMOID 3
#define ACT_TANH 4

// y = f(v). NaN propagates (v > 0 is false for NaN, and NaN * slope is NaN), as in PyTorch.
__device__ __forceinline__ float apply_activation(float v, int act, float slope) {
    switch (act) {
        case ACT_RELU: return v > 0.f ? v : (v != v ? v : 0.f);
        case ACT_LEAKY_RELU: return v > 0.f ? v : v * slope;
        case ACT_SIGMOID: return 1.f / (1.f + expf(-v));
        case ACT_TANH: return tanhf(v);
        default: return v;
    }
}

// dL/dv from dL/dy and the forward OUTPUT y, so no pre-activation needs to be kept.
__device__ __forceinline__ float activation_grad_from_output(float dy, float y, int act, float slope) {
    switch (act) {
        case ACT_RELU: return y > 0.f ? dy : 0.f;
        case ACT_LEAKY_RELU: return y > 0.f ? dy : dy * slope;
        case ACT_SIGMOID: return dy * y * (1.f - y);
        case ACT_TANH: return dy * (1.f - y * y);
        default: return dy;
    }
}

// ---- counter-based hash (dropout) ---------------------------------------------------------------
// lowbias32 (Chris Wellons' integer hash): a bijection on 32 bits with good avalanche.
__device__ __forceinline__ uint32 mix32(uint32 h) {
    h ^= h >> 16; h *= 0x7feb352dU;
    h ^= h >> 15; h *= 0x846ca68bU;
    h ^= h >> 16;
    return h;
}

// One 32-bit hash of (seed, element index); the NumPy path computes the same function.
__device__ __forceinline__ uint32 hash_seed_index(uint64 seed, uint64 index) {
    uint32 h = mix32((uint32)seed ^ 0x9e3779b9U);
    h = mix32(h ^ (uint32)(seed >> 32));
    h = mix32(h ^ (uint32)index);
    return mix32(h ^ (uint32)(index >> 32));
}

// ---- vector access ------------------------------------------------------------------------------
__device__ __forceinline__ float4 load_float4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store_float4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// Grid-stride loop over [0, n) with 64-bit indices: correct for tensors past 2^31 elements.
#define GRID_STRIDE_LOOP(i, n) \
    for (int64 i = (int64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64)gridDim.x * blockDim.x)

// Element-wise kernels: each thread handles ELEMENTWISE_UNROLL items, issuing all their loads before
// the first use, so that ELEMENTWISE_UNROLL float4s an input are in flight a thread. Item k of a thread
// is (blockIdx.x * ELEMENTWISE_UNROLL + k) * blockDim.x + threadIdx.x: at each k a warp touches 32
// consecutive items (coalesced), and cdiv(n, blockDim.x * ELEMENTWISE_UNROLL) blocks cover [0, n) once,
// with no loop (gridDim.x reaches 2^31 - 1: n up to 2^41 float4s).
#define ELEMENTWISE_UNROLL 4
__device__ __forceinline__ int64 unrolled_item(int k) {
    return ((int64)blockIdx.x * ELEMENTWISE_UNROLL + k) * blockDim.x + threadIdx.x;
}

// v[k] = the unrolled_item(k)-th 4-vector (float4, uchar4) of p, for the items below n4 (the others are
// left alone). Call it for every input before the first use: the loads then go out together.
template <typename Vec, typename Scalar>
__device__ __forceinline__ void load_items(const Scalar* __restrict__ p, int64 n4, Vec (&v)[ELEMENTWISE_UNROLL]) {
#pragma unroll
    for (int k = 0; k < ELEMENTWISE_UNROLL; ++k)
        if (unrolled_item(k) < n4) v[k] = reinterpret_cast<const Vec*>(p)[unrolled_item(k)];
}

// ---- fast division by a runtime-invariant divisor (as CUTLASS's FastDivmod) ---------------------
// For 0 <= n < 2^31 and divisor d >= 1: n / d == __umulhi(n, multiplier) >> shift, with
// l = ceil(log2 d), multiplier = ceil(2^(31 + l) / d) < 2^32 and shift = l - 1 (Granlund & Montgomery:
// exact because multiplier * d - 2^(31 + l) < d <= 2^l). d == 1 (l = 0) would need shift -1: it is
// special-cased. The host computes multiplier and shift (cnn_gpu.cuda.grid.fast_divmod_params, whose
// tests check this formula against // and % for every d <= 4096) and passes the three as kernel
// arguments. Cost: one IMAD.HI, a shift and a select instead of a ~20-instruction 32-bit division.
struct FastDivmod {
    int divisor;
    uint32 multiplier, shift;

    __device__ __forceinline__ int div(int n) const {
        return divisor != 1 ? (int)(__umulhi((uint32)n, multiplier) >> shift) : n;
    }
    __device__ __forceinline__ void divmod(int n, int& quotient, int& remainder) const {
        quotient = div(n);
        remainder = n - quotient * divisor;
    }
};

// ---- deterministic reductions (no atomics: the same inputs give the same bits, run after run) -----
// Sum over the 32 lanes by a fixed xor butterfly; every lane ends with the same total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block; every thread gets the total. blockDim.x must be a multiple of 32 (at most 1024)
// and every thread of the block must call it. warp_totals: __shared__ float[32], reusable across calls.
__device__ __forceinline__ float block_sum(float v, float* warp_totals) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    __syncthreads();  // an earlier call may still be reading warp_totals
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();
    return warp_sum(lane < (int)(blockDim.x / 32) ? warp_totals[lane] : 0.f);
}
