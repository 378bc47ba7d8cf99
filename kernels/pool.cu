// pool.cu: 2-D pooling over NCHW float32, forward and backward: max (with argmax) and sum / average.
//
// Geometry (POOL_GEOMETRY; every kernel takes it in this order, built by cnn_gpu/ops/pool.py):
//   input plane H x W, output plane OH x OW, window R x S, strides stride_h / stride_w, pads
//   pad_top / pad_left. Window (oh, ow) covers input rows oh*stride_h - pad_top + [0, R) and columns
//   ow*stride_w - pad_left + [0, S); what falls outside [0, H) x [0, W) is padding, and no window is
//   padding only (the host guarantees it). Planes p = n*C + c are independent.
// Launch (all four): 1-D grid-stride, 256 threads a block, blocks = min(cdiv(items, 256), SMs * 8);
//   forward: one thread per output element (items = N*C*OH*OW); backward: one thread per input
//   element (items = N*C*H*W), the gather form: each thread sums the windows that contain its element,
//   so no atomics and the same bits every run. No shared memory: neighbouring threads read
//   neighbouring addresses and overlapping windows meet in L1/L2.
// Indices: the flat item index and plane offsets are 64-bit; coordinates inside a plane are 32-bit
//   (the host checks that a padded plane has fewer than 2^31 elements).
// All four are memory bound: floor = the bytes named in each kernel's comment / DRAM bandwidth.
#include "common.cuh"

// Divisor modes, matching cnn_gpu/ops/pool.py (DIVISOR_*).
#define DIVISOR_ONE 0          // sum pooling
#define DIVISOR_WINDOW_AREA 1  // average over R*S, padding counted (count_include_pad=True)
#define DIVISOR_IN_BOUNDS 2    // average over the in-bounds elements only (count_include_pad=False)

#define POOL_GEOMETRY \
    int H, int W, int OH, int OW, int R, int S, int stride_h, int stride_w, int pad_top, int pad_left

// A half-open range [lo, hi) of rows, columns or window positions.
struct Span {
    int lo, hi;
};

// The in-bounds part of the window [start, start + size) along an axis of length limit.
__device__ __forceinline__ Span in_bounds(int start, int size, int limit) {
    return {max(start, 0), min(start + size, limit)};
}

// The windows (along one axis) that contain input position pos: start*stride <= pos + pad < start*stride + size.
__device__ __forceinline__ Span windows_containing(int pos, int pad, int size, int stride, int count) {
    const int padded_pos = pos + pad;  // >= 0
    const int first = padded_pos - size + 1 <= 0 ? 0 : (padded_pos - size + stride) / stride;
    return {first, min(padded_pos / stride + 1, count)};
}

__device__ __forceinline__ float window_divisor(int mode, Span rows, Span cols, int R, int S) {
    if (mode == DIVISOR_WINDOW_AREA) return (float)(R * S);
    if (mode == DIVISOR_IN_BOUNDS) return (float)((rows.hi - rows.lo) * (cols.hi - cols.lo));
    return 1.f;
}

// maxpool2d_fwd_argmax: y[p, oh, ow] = max of x[p, h, w] over the window's in-bounds (h, w);
//   indices[p, oh, ow] = h*W + w of the first maximum in row-major window order. NaN beats every
//   number and the first NaN stays; a window of -inf only points at its first in-bounds element.
//   Thread i writes y[i] and indices[i]. Bytes: 4 per input element read, 4 + 8 per output written.
extern "C" __global__ void maxpool2d_fwd_argmax(const float* __restrict__ x, float* __restrict__ y,
                                                int64* __restrict__ indices, int64 n_out, POOL_GEOMETRY) {
    const int out_plane = OH * OW;
    GRID_STRIDE_LOOP(i, n_out) {
        const int64 plane = i / out_plane;
        const int o = (int)(i - plane * out_plane);
        const int oh = o / OW, ow = o - oh * OW;
        const Span rows = in_bounds(oh * stride_h - pad_top, R, H);
        const Span cols = in_bounds(ow * stride_w - pad_left, S, W);
        const float* x_plane = x + plane * H * W;
        float best = -__int_as_float(0x7f800000);  // -inf
        int best_at = rows.lo * W + cols.lo;
        for (int h = rows.lo; h < rows.hi; ++h) {
            for (int w = cols.lo; w < cols.hi; ++w) {
                const float v = x_plane[h * W + w];
                if (v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    best_at = h * W + w;
                }
            }
        }
        y[i] = best;
        indices[i] = best_at;
    }
}

// maxpool2d_bwd: dx[p, h, w] = sum of dy[p, oh, ow] over the windows (oh, ow) containing (h, w) whose
//   indices[p, oh, ow] == h*W + w, added in increasing (oh, ow) order (as the NumPy path's scatter).
//   Thread i writes dx[i] alone. Bytes: 8 per output element (indices) + 4 per routed dy read,
//   4 per input element written.
extern "C" __global__ void maxpool2d_bwd(const float* __restrict__ dy, const int64* __restrict__ indices,
                                         float* __restrict__ dx, int64 n_in, POOL_GEOMETRY) {
    const int in_plane = H * W;
    GRID_STRIDE_LOOP(i, n_in) {
        const int64 plane = i / in_plane;
        const int at = (int)(i - plane * in_plane);
        const int h = at / W, w = at - h * W;
        const Span ohs = windows_containing(h, pad_top, R, stride_h, OH);
        const Span ows = windows_containing(w, pad_left, S, stride_w, OW);
        const int64 out_base = plane * OH * OW;
        float grad = 0.f;
        for (int oh = ohs.lo; oh < ohs.hi; ++oh) {
            for (int ow = ows.lo; ow < ows.hi; ++ow) {
                const int64 o = out_base + oh * OW + ow;
                if (indices[o] == at) grad += dy[o];
            }
        }
        dx[i] = grad;
    }
}

// sumpool2d_fwd: y[p, oh, ow] = (sum of x[p, h, w] over the window's in-bounds (h, w)) / divisor,
//   the divisor given by divisor_mode (1 for sum pooling). Padding adds nothing. Row-major summation
//   order, as the NumPy path. Thread i writes y[i]. Bytes: 4 per input element read, 4 per output written.
extern "C" __global__ void sumpool2d_fwd(const float* __restrict__ x, float* __restrict__ y, int64 n_out,
                                         POOL_GEOMETRY, int divisor_mode) {
    const int out_plane = OH * OW;
    GRID_STRIDE_LOOP(i, n_out) {
        const int64 plane = i / out_plane;
        const int o = (int)(i - plane * out_plane);
        const int oh = o / OW, ow = o - oh * OW;
        const Span rows = in_bounds(oh * stride_h - pad_top, R, H);
        const Span cols = in_bounds(ow * stride_w - pad_left, S, W);
        const float* x_plane = x + plane * H * W;
        float sum = 0.f;
        for (int h = rows.lo; h < rows.hi; ++h) {
            for (int w = cols.lo; w < cols.hi; ++w) sum += x_plane[h * W + w];
        }
        y[i] = sum / window_divisor(divisor_mode, rows, cols, R, S);
    }
}

// sumpool2d_bwd: dx[p, h, w] = sum of dy[p, oh, ow] / divisor(oh, ow) over the windows containing (h, w),
//   added in decreasing (oh, ow) order: the order of the NumPy path's loop over window offsets, so both
//   round alike. Thread i writes dx[i] alone. Bytes: 4 per output element read, 4 per input written.
extern "C" __global__ void sumpool2d_bwd(const float* __restrict__ dy, float* __restrict__ dx, int64 n_in,
                                         POOL_GEOMETRY, int divisor_mode) {
    const int in_plane = H * W;
    GRID_STRIDE_LOOP(i, n_in) {
        const int64 plane = i / in_plane;
        const int at = (int)(i - plane * in_plane);
        const int h = at / W, w = at - h * W;
        const Span ohs = windows_containing(h, pad_top, R, stride_h, OH);
        const Span ows = windows_containing(w, pad_left, S, stride_w, OW);
        const float* dy_plane = dy + plane * OH * OW;
        float grad = 0.f;
        for (int oh = ohs.hi - 1; oh >= ohs.lo; --oh) {
            const Span rows = in_bounds(oh * stride_h - pad_top, R, H);
            for (int ow = ows.hi - 1; ow >= ows.lo; --ow) {
                const Span cols = in_bounds(ow * stride_w - pad_left, S, W);
                grad += dy_plane[oh * OW + ow] / window_divisor(divisor_mode, rows, cols, R, S);
            }
        }
        dx[i] = grad;
    }
}
