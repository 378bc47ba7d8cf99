// cuda_shim.h: just enough of CUDA for g++ to compile a kernel file and run it on the CPU, one std::thread per
// CUDA thread, one block at a time. __syncthreads is a barrier over the block's threads; __shfl_xor_sync trades
// values through a per-block buffer between two barriers (so every thread of the block must call it, as every
// warp's lanes do in the kernels it serves); __shared__ arrays are static (one block runs at a time). Built with
// AddressSanitizer and UBSan by tests/emulation/emulate.py: an out-of-bounds global or shared access aborts.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

struct uint3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };  // as CUDA's: a misaligned float4 access is UB (UBSan)
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline uint3 blockDim, gridDim;
inline std::barrier<>* emulated_block_barrier;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline void __syncthreads() { emulated_block_barrier->arrive_and_wait(); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    static float exchange[1024];
    const unsigned lane = threadIdx.x % 32, warp_base = threadIdx.x - lane;
    exchange[threadIdx.x] = v;
    __syncthreads();
    const float other = exchange[warp_base + (lane ^ (unsigned)lane_mask)];
    __syncthreads();
    return other;
}

// Runs body() as every thread of every block of a 1-D block grid (gx, gy, gz) × threads.
inline void emulate_launch(unsigned gx, unsigned gy, unsigned gz, unsigned threads, const std::function<void()>& body) {
    gridDim = {gx, gy, gz};
    blockDim = {threads, 1, 1};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                std::barrier<> barrier(threads);
                emulated_block_barrier = &barrier;
                std::vector<std::thread> block;
                block.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    block.emplace_back([&, t] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        body();
                        // a thread that returns early no longer takes part in the block's barriers
                        barrier.arrive_and_drop();
                    });
                for (auto& thread : block) thread.join();
            }
}
