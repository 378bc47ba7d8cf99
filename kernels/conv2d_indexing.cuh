// conv2d_indexing.cuh: index helpers of the convolution kernels (kernels/conv2d.cu's implicit GEMMs and
// kernels/conv2d_direct.cu's direct kernels): ceiling division, mixed-radix digit counters, bounds tests and
// gathers through a 64-bit base address.
#pragma once
#include "common.cuh"

__device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

// A flat index as three mixed-radix digits: v = (hi·mid_n + mid)·lo_n + lo.
struct Digits {
    int hi, mid, lo;
};

// Splits indices into Digits and steps them forward by a fixed amount with two compares, no division
// (e.g. the reduction index q = (c, r, s) with radices (R, S), stepped by BK each tile).
struct DigitCounter {
    int mid_n, lo_n;
    Digits step;
    __device__ DigitCounter(int mid_n, int lo_n, int step_by) : mid_n(mid_n), lo_n(lo_n), step(at(step_by)) {}
    __device__ Digits at(int v) const {
        const int lo = v % lo_n;
        v /= lo_n;
        return {v / mid_n, v % mid_n, lo};
    }
    __device__ void advance(Digits& d) const {
        d.lo += step.lo;
        int carry = d.lo >= lo_n;
        d.lo -= carry ? lo_n : 0;
        d.mid += step.mid + carry;
        carry = d.mid >= mid_n;
        d.mid -= carry ? mid_n : 0;
        d.hi += step.hi + carry;
    }
};

// quotient = floor(v / d), remainder = v − d·quotient, for v >= 0, d >= 1. Stride 1 (the common case)
// skips the division.
__device__ __forceinline__ void divide(int v, int d, int& quotient, int& remainder) {
    quotient = d == 1 ? v : v / d;
    remainder = v - quotient * d;
}

__device__ __forceinline__ bool inside(int i, int n) { return (unsigned)i < (unsigned)n; }

__device__ __forceinline__ bool aligned16(const void* p) { return reinterpret_cast<unsigned long long>(p) % 16 == 0; }

// A gather's base address, kept as a plain 64-bit integer: the compiler then forms each load's address
// base + 4·offset with one wide multiply-add, where from a tensor pointer it re-derives the address with a
// 64-bit add and shift per load. Only called for in-bounds elements.
typedef unsigned long long Address;
__device__ __forceinline__ Address address_of(const float* p) { return reinterpret_cast<Address>(p); }
__device__ __forceinline__ float gather(Address base, int offset) {
    return __ldg(reinterpret_cast<const float*>(base + (int64)offset * 4));
}
