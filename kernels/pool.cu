// pool.cu: 2-D pooling over NCHW float32, forward and backward: max (with argmax) and sum / average.
//
// Geometry (POOL_GEOMETRY; every kernel takes it in this order, built by cnn_gpu/ops/pool.py):
//   input plane H x W, output plane OH x OW, window R x S, strides stride_h / stride_w, pads
//   pad_top / pad_left. Window (oh, ow) covers input rows oh*stride_h - pad_top + [0, R) and columns
//   ow*stride_w - pad_left + [0, S); what falls outside [0, H) x [0, W) is padding, and no window is
//   padding only (the host guarantees it). Planes p = n*C + c are independent.
// Launch (all five): 1-D, one thread per item, 256 threads a block, blocks = cdiv(items, 256).
//   Forward and the disjoint max backward: an item is an output element (oh, ow) of a plane; the gather
//   backwards: an input element (h, w). Each launch covers whole planes and fewer than 2^31 elements of
//   every array it touches: the host splits bigger tensors into plane-aligned launches (pointers offset
//   per launch), so all indexing is 32-bit. No shared memory: neighbouring threads read neighbouring
//   addresses and overlapping windows meet in L1/L2.
// Index decoding: flat item -> (plane, row, col) with FastDivmod (common.cuh), whose multipliers come
//   as DIVMOD_MAGIC arguments next to the geometry; no integer division by a runtime value remains.
// All five are memory bound: floor = the bytes named in each kernel's comment / DRAM bandwidth. The
//   forwards keep WINDOW_BATCH loads in flight a thread (a 3x3 window: 2 round trips to memory, not 9).
#include "common.cuh"

// Divisor modes, matching cnn_gpu/ops/pool.py (DIVISOR_*).
#define DIVISOR_ONE 0          // sum pooling
#define DIVISOR_WINDOW_AREA 1  // average over R*S, padding counted (count_include_pad=True)
#define DIVISOR_IN_BOUNDS 2    // average over the in-bounds elements only (count_include_pad=False)

#define POOL_GEOMETRY \
    int H, int W, int OH, int OW, int R, int S, int stride_h, int stride_w, int pad_top, int pad_left

// The (multiplier, shift) of the FastDivmod by the geometry argument d, and that FastDivmod.
#define DIVMOD_MAGIC(d) uint32 d##_multiplier, uint32 d##_shift
#define FAST_DIVMOD(d) FastDivmod{d, d##_multiplier, d##_shift}

// Window elements loaded before the first is used (the forwards).
#define WINDOW_BATCH 8

// This thread's item in a launch over [0, n) items, n < 2^31; false for the threads past the end.
__device__ __forceinline__ bool item_of_thread(int n, int& item) {
    const uint32 i = blockIdx.x * blockDim.x + threadIdx.x;  // < 2^31 + blockDim.x: no unsigned wrap
    item = (int)i;
    return i < (uint32)n;
}

// An element's plane and in-plane (row, col), from its flat index in a stack of planes of
// rows.divisor x cols.divisor elements.
struct PlanePosition {
    int plane, row, col;
};

__device__ __forceinline__ PlanePosition plane_position(int i, FastDivmod rows, FastDivmod cols) {
    PlanePosition p;
    int plane_row;  // row counted across all planes
    cols.divmod(i, plane_row, p.col);
    rows.divmod(plane_row, p.plane, p.row);
    return p;
}

// A half-open range [lo, hi) of rows, columns or window positions.
struct Span {
    int lo, hi;
};

// The in-bounds part of the window [start, start + size) along an axis of length limit.
__device__ __forceinline__ Span in_bounds(int start, int size, int limit) {
    return {max(start, 0), min(start + size, limit)};
}

// The windows (along one axis) that contain input position pos: start*stride <= pos + pad < start*stride + size.
__device__ __forceinline__ Span windows_containing(int pos, int pad, int size, FastDivmod stride, int count) {
    const int padded_pos = pos + pad;  // >= 0
    const int first = padded_pos < size ? 0 : stride.div(padded_pos - size) + 1;
    return {first, min(stride.div(padded_pos) + 1, count)};
}

// The cell of window `index` along an axis when windows do not overlap (stride >= size): from its
// start to the next window's start, the first from 0 and the last to the axis' end. The cells
// partition [0, limit) and each holds its window's in-bounds part (no window is padding only).
__device__ __forceinline__ Span window_cell(int index, int stride, int pad, int count, int limit) {
    return {max(index * stride - pad, 0), index == count - 1 ? limit : (index + 1) * stride - pad};
}

__device__ __forceinline__ float window_divisor(int mode, Span rows, Span cols, int R, int S) {
    if (mode == DIVISOR_WINDOW_AREA) return (float)(R * S);
    if (mode == DIVISOR_IN_BOUNDS) return (float)((rows.hi - rows.lo) * (cols.hi - cols.lo));
    return 1.f;
}

// Calls visit(x_plane[at], at), at = h*W + w, for the in-bounds (h, w) of a window in row-major order.
// The loads go out WINDOW_BATCH at a time (a cursor walks the window, wrapping at the row's end)
// before any visit, so each batch costs one round trip to memory.
template <typename Visit>
__device__ __forceinline__ void for_each_in_window(const float* __restrict__ x_plane, int W, Span rows, Span cols,
                                                   Visit visit) {
    const int count = (rows.hi - rows.lo) * (cols.hi - cols.lo);
    int h = rows.lo, w = cols.lo;
    for (int first = 0; first < count; first += WINDOW_BATCH) {
        float value[WINDOW_BATCH];
        int at[WINDOW_BATCH];
#pragma unroll
        for (int k = 0; k < WINDOW_BATCH; ++k) {
            at[k] = h * W + w;
            if (first + k < count) value[k] = x_plane[at[k]];
            if (++w == cols.hi) {
                w = cols.lo;
                ++h;
            }
        }
#pragma unroll
        for (int k = 0; k < WINDOW_BATCH; ++k) {
            if (first + k < count) visit(value[k], at[k]);
        }
    }
}

// maxpool2d_fwd_argmax: y[p, oh, ow] = max of x[p, h, w] over the window's in-bounds (h, w);
//   indices[p, oh, ow] = h*W + w of the first maximum in row-major window order. NaN beats every
//   number and the first NaN stays; a window of -inf only points at its first in-bounds element.
//   Thread i writes y[i] and indices[i]. Bytes: 4 per input element read, 4 + 8 per output written.
extern "C" __global__ void maxpool2d_fwd_argmax(const float* __restrict__ x, float* __restrict__ y,
                                                int64* __restrict__ indices, int n_out, POOL_GEOMETRY,
                                                DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW)) {
    int i;
    if (!item_of_thread(n_out, i)) return;
    const PlanePosition o = plane_position(i, FAST_DIVMOD(OH), FAST_DIVMOD(OW));
    const Span rows = in_bounds(o.row * stride_h - pad_top, R, H);
    const Span cols = in_bounds(o.col * stride_w - pad_left, S, W);
    float best = -__int_as_float(0x7f800000);  // -inf
    int best_at = rows.lo * W + cols.lo;
    for_each_in_window(x + o.plane * (H * W), W, rows, cols, [&](float v, int at) {
        if (v > best || (isnan(v) && !isnan(best))) {
            best = v;
            best_at = at;
        }
    });
    y[i] = best;
    indices[i] = best_at;
}

// maxpool2d_bwd: dx[p, h, w] = sum of dy[p, oh, ow] over the windows (oh, ow) containing (h, w) whose
//   indices[p, oh, ow] == h*W + w, added in increasing (oh, ow) order (as the NumPy path's scatter).
//   Thread i writes dx[i] alone. dy is read with its index (not after the compare) so both loads go
//   out together. Bytes: (8 + 4) per output element read, 4 per input element written.
extern "C" __global__ void maxpool2d_bwd(const float* __restrict__ dy, const int64* __restrict__ indices,
                                         float* __restrict__ dx, int n_in, POOL_GEOMETRY, DIVMOD_MAGIC(H),
                                         DIVMOD_MAGIC(W), DIVMOD_MAGIC(stride_h), DIVMOD_MAGIC(stride_w)) {
    int i;
    if (!item_of_thread(n_in, i)) return;
    const PlanePosition e = plane_position(i, FAST_DIVMOD(H), FAST_DIVMOD(W));
    const int at = e.row * W + e.col;
    const Span ohs = windows_containing(e.row, pad_top, R, FAST_DIVMOD(stride_h), OH);
    const Span ows = windows_containing(e.col, pad_left, S, FAST_DIVMOD(stride_w), OW);
    const int out_base = e.plane * (OH * OW);
    float grad = 0.f;
    for (int oh = ohs.lo; oh < ohs.hi; ++oh) {
        for (int ow = ows.lo; ow < ows.hi; ++ow) {
            const int o = out_base + oh * OW + ow;
            const float g = dy[o];
            if (indices[o] == at) grad += g;
        }
    }
    dx[i] = grad;
}

// maxpool2d_bwd_disjoint: the same dx when windows do not overlap (stride_h >= R, stride_w >= S), by
//   scatter without atomics: thread i owns output (p, oh, ow) and writes the whole cell of dx around
//   its window (window_cell: the cells partition the plane, so every dx element is written exactly
//   once): dx[p, h, w] = 0 + dy[p, oh, ow] where h*W + w == indices[p, oh, ow], 0 elsewhere. The
//   "0 +" turns a -0 gradient into +0, as the NumPy path's scatter-add into zeros; same bits.
//   An index outside the window's cell routes nowhere (max_pool2d's never are).
//   Bytes: (8 + 4) per output element read, 4 per input element written.
extern "C" __global__ void maxpool2d_bwd_disjoint(const float* __restrict__ dy, const int64* __restrict__ indices,
                                                  float* __restrict__ dx, int n_out, POOL_GEOMETRY,
                                                  DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW)) {
    int i;
    if (!item_of_thread(n_out, i)) return;
    const PlanePosition o = plane_position(i, FAST_DIVMOD(OH), FAST_DIVMOD(OW));
    const Span rows = window_cell(o.row, stride_h, pad_top, OH, H);
    const Span cols = window_cell(o.col, stride_w, pad_left, OW, W);
    const int64 winner = indices[i];
    const float grad = 0.f + dy[i];
    float* __restrict__ dx_plane = dx + o.plane * (H * W);
    for (int h = rows.lo; h < rows.hi; ++h) {
        for (int w = cols.lo; w < cols.hi; ++w) dx_plane[h * W + w] = h * W + w == winner ? grad : 0.f;
    }
}

// sumpool2d_fwd: y[p, oh, ow] = (sum of x[p, h, w] over the window's in-bounds (h, w)) / divisor,
//   the divisor given by divisor_mode (1 for sum pooling). Padding adds nothing. Row-major summation
//   order, as the NumPy path. Thread i writes y[i]. Bytes: 4 per input element read, 4 per output written.
extern "C" __global__ void sumpool2d_fwd(const float* __restrict__ x, float* __restrict__ y, int n_out,
                                         POOL_GEOMETRY, DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW), int divisor_mode) {
    int i;
    if (!item_of_thread(n_out, i)) return;
    const PlanePosition o = plane_position(i, FAST_DIVMOD(OH), FAST_DIVMOD(OW));
    const Span rows = in_bounds(o.row * stride_h - pad_top, R, H);
    const Span cols = in_bounds(o.col * stride_w - pad_left, S, W);
    float sum = 0.f;
    for_each_in_window(x + o.plane * (H * W), W, rows, cols, [&](float v, int) { sum += v; });
    y[i] = sum / window_divisor(divisor_mode, rows, cols, R, S);
}

// sumpool2d_bwd: dx[p, h, w] = sum of dy[p, oh, ow] / divisor(oh, ow) over the windows containing (h, w),
//   added in decreasing (oh, ow) order: the order of the NumPy path's loop over window offsets, so both
//   round alike. Thread i writes dx[i] alone. Bytes: 4 per output element read, 4 per input written.
extern "C" __global__ void sumpool2d_bwd(const float* __restrict__ dy, float* __restrict__ dx, int n_in,
                                         POOL_GEOMETRY, DIVMOD_MAGIC(H), DIVMOD_MAGIC(W), DIVMOD_MAGIC(stride_h),
                                         DIVMOD_MAGIC(stride_w), int divisor_mode) {
    int i;
    if (!item_of_thread(n_in, i)) return;
    const PlanePosition e = plane_position(i, FAST_DIVMOD(H), FAST_DIVMOD(W));
    const Span ohs = windows_containing(e.row, pad_top, R, FAST_DIVMOD(stride_h), OH);
    const Span ows = windows_containing(e.col, pad_left, S, FAST_DIVMOD(stride_w), OW);
    const float* dy_plane = dy + e.plane * (OH * OW);
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
