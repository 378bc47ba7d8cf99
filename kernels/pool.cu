// pool.cu: 2-D pooling over NCHW float32, forward and backward: max (with argmax) and sum / average.
//
// Geometry (POOL_GEOMETRY; every kernel takes it in this order, built by cnn_gpu/ops/pool.py):
//   input plane H x W, output plane OH x OW, window R x S, strides stride_h / stride_w, pads
//   pad_top / pad_left. Window (oh, ow) covers input rows oh*stride_h - pad_top + [0, R) and columns
//   ow*stride_w - pad_left + [0, S); what falls outside [0, H) x [0, W) is padding, and no window is
//   padding only (the host guarantees it). Planes p = n*C + c are independent.
// Launch: 1-D, 256 threads a block. All but one take one thread per item, blocks = cdiv(items, 256):
//   forward and the disjoint max backward by cells, an output element (oh, ow) of a plane; the gather
//   backwards, an input element (h, w). maxpool2d_bwd_staged takes one warp per item (a piece of a
//   plane), blocks = cdiv(items, 8). Each launch covers whole planes and fewer than 2^31 elements of every
//   array it touches: the host splits bigger tensors into plane-aligned launches (pointers offset per
//   launch), so all indexing is 32-bit. Only maxpool2d_bwd_staged uses shared memory: elsewhere
//   neighbouring threads read neighbouring addresses and overlapping windows meet in L1/L2.
// Index decoding: flat item -> (plane, row, col) with FastDivmod (common.cuh), whose multipliers come
//   as DIVMOD_MAGIC arguments next to the geometry; no integer division by a runtime value remains.
// All are memory bound: floor = the bytes named in each kernel's comment / DRAM bandwidth. The
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

#define WARP_SIZE 32

// maxpool2d_bwd_staged: warps a block, and floats of dx a warp stages in shared memory (32 KB a block).
#if !defined(STAGED_WARPS) || !defined(STAGED_PIECE)
#error "STAGED_WARPS and STAGED_PIECE come from cnn_gpu/cuda/loader.py (FAMILY_DEFINES)"
#endif

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

__device__ __forceinline__ int cdiv_int(int a, int b) { return (a + b - 1) / b; }

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

// maxpool2d_fwd_argmax_fixed: maxpool2d_fwd_argmax, the same bits, for the one window size
//   FIXED_WINDOW_R x FIXED_WINDOW_S given as -D defines (cnn_gpu/ops/pool.py compiles a variant per size).
//   Thread i writes y[i] and indices[i]. All R*S loads go out before the first compare, each predicated on
//   its row and column being in bounds (padding reads as -inf, which never wins: the first in-bounds
//   element stays the default winner), at offsets fixed at compile time. Why (benchmarks/NOTES.md,
//   max-pool forward): the generic kernel's window cursor costs ~20 instructions an element, ~370 per warp
//   of 3x3 windows: issue-bound at the 100×100 network's pool1. Here ~10 an element. Bytes as the generic kernel's.
#ifdef FIXED_WINDOW_R
extern "C" __global__ void maxpool2d_fwd_argmax_fixed(const float* __restrict__ x, float* __restrict__ y,
                                                      int64* __restrict__ indices, int n_out, POOL_GEOMETRY,
                                                      DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW)) {
    int i;
    if (!item_of_thread(n_out, i)) return;
    const PlanePosition o = plane_position(i, FAST_DIVMOD(OH), FAST_DIVMOD(OW));
    const int top = o.row * stride_h - pad_top, left = o.col * stride_w - pad_left;
    const float* __restrict__ x_plane = x + o.plane * (H * W);
    const float minus_inf = -__int_as_float(0x7f800000);
    float value[FIXED_WINDOW_R][FIXED_WINDOW_S];
#pragma unroll
    for (int r = 0; r < FIXED_WINDOW_R; ++r) {
        const bool row_inside = 0 <= top + r && top + r < H;
#pragma unroll
        for (int s = 0; s < FIXED_WINDOW_S; ++s) {
            const bool inside = row_inside && 0 <= left + s && left + s < W;
            value[r][s] = inside ? x_plane[(top + r) * W + left + s] : minus_inf;
        }
    }
    float best = minus_inf;
    int best_at = max(top, 0) * W + max(left, 0);
#pragma unroll
    for (int r = 0; r < FIXED_WINDOW_R; ++r) {
#pragma unroll
        for (int s = 0; s < FIXED_WINDOW_S; ++s) {
            const float v = value[r][s];
            const bool wins = (v > best) | (isnan(v) & !isnan(best));  // no short circuit: no branches
            best = wins ? v : best;
            best_at = wins ? (top + r) * W + left + s : best_at;
        }
    }
    y[i] = best;
    indices[i] = best_at;
}
#endif

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
//   An index outside the window routes nowhere, as in maxpool2d_bwd (max_pool2d's never are): a cell is
//   larger than its window where stride > window.
//   Bytes: (8 + 4) per output element read, 4 per input element written.
extern "C" __global__ void maxpool2d_bwd_disjoint(const float* __restrict__ dy, const int64* __restrict__ indices,
                                                  float* __restrict__ dx, int n_out, POOL_GEOMETRY,
                                                  DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW)) {
    int i;
    if (!item_of_thread(n_out, i)) return;
    const PlanePosition o = plane_position(i, FAST_DIVMOD(OH), FAST_DIVMOD(OW));
    const Span rows = window_cell(o.row, stride_h, pad_top, OH, H);
    const Span cols = window_cell(o.col, stride_w, pad_left, OW, W);
    const Span window_rows = in_bounds(o.row * stride_h - pad_top, R, H);
    const Span window_cols = in_bounds(o.col * stride_w - pad_left, S, W);
    const int64 index = indices[i];
    bool in_window = false;
    if (index >= 0 && index < (int64)H * W) {  // then 32-bit (the plane is checked to fit)
        const int at = (int)index, row = at / W, col = at - row * W;
        in_window = row >= window_rows.lo && row < window_rows.hi && col >= window_cols.lo && col < window_cols.hi;
    }
    const int64 winner = in_window ? index : -1;
    const float grad = 0.f + dy[i];
    float* __restrict__ dx_plane = dx + o.plane * (H * W);
    for (int h = rows.lo; h < rows.hi; ++h) {
        for (int w = cols.lo; w < cols.hi; ++w) dx_plane[h * W + w] = h * W + w == winner ? grad : 0.f;
    }
}

// maxpool2d_bwd_staged: the dx of maxpool2d_bwd (each index routes its dy to the element it names when
//   that element lies in its window; overlapping windows add), staged in shared memory and stored as
//   whole 128-byte lines of 16-byte stores. One warp per item: a piece of a plane, item = p*pieces + j.
//   A plane's pieces are consecutive runs of STAGED_PIECE floats starting on the line of dx that holds
//   the plane's first element (the first and last piece are cut to the plane; pieces = cdiv(H*W + 31,
//   STAGED_PIECE), so a trailing piece may be empty). For its piece the warp: zeroes its image in shared
//   memory; adds each window's dy at its index when that index lies in the piece and in the window (the
//   lanes take 32 windows at a time, loading their indices and dy coalesced, from every window row
//   meeting the piece's rows and the window columns meeting its columns); copies the image to dx, a
//   float4 a lane (element by element where the piece ends inside a float4: a plane's ends).
//   Order of the adds, fixed: window rows increasing; in a row, groups of 32 windows increasing; in a
//   group, lanes by lane % classes, classes = cdiv(S, stride_w) (windows that many apart do not overlap,
//   so no two lanes of a pass add to one element). Disjoint windows: one add per element, 0 + dy, the
//   NumPy path's bits; overlapping: the same bits run after run, the NumPy path's within rounding.
//   Launch: STAGED_WARPS * 32 threads a block, blocks = cdiv(items, STAGED_WARPS); static shared memory
//   STAGED_WARPS * STAGED_PIECE floats (32 KB).
//   Why (benchmarks/NOTES.md, max-pool backward): the cells way's lanes store 12 bytes apart (3x3/3),
//   so each 32-byte sector reaches L2 as three partial writes; the gather way spends ~125 instructions
//   per element. Here every sector is written once, whole (but at a plane's ends), for ~17 instructions
//   per 32 elements. Bytes: 4 per input element written; (8 + 4) per output element read by each piece
//   its window row meets, about 1 + (R - 1) / (rows a piece spans) pieces (from L1 or L2 after the first).
// Shared memory allows 6 blocks an SM on sm_90 (48 warps; 1 KB reserved a block): registers must not allow fewer.
extern "C" __global__ void __launch_bounds__(STAGED_WARPS * WARP_SIZE, 6)
    maxpool2d_bwd_staged(const float* __restrict__ dy, const int64* __restrict__ indices, float* __restrict__ dx,
                         int n_items, POOL_GEOMETRY, int pieces, DIVMOD_MAGIC(pieces), DIVMOD_MAGIC(W),
                         DIVMOD_MAGIC(stride_h), DIVMOD_MAGIC(stride_w), int classes, DIVMOD_MAGIC(classes)) {
    __shared__ float4 images[STAGED_WARPS][STAGED_PIECE / 4];
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const uint32 item = blockIdx.x * STAGED_WARPS + warp;  // < 2^31 + STAGED_WARPS: no unsigned wrap
    if (item >= (uint32)n_items) return;  // whole warps: every __syncwarp below has all 32 lanes
    int plane, piece;
    FAST_DIVMOD(pieces).divmod((int)item, plane, piece);
    const int plane_size = H * W, plane_start = plane * plane_size;
    // dx's address in floats, modulo a line: a line of dx starts at launch positions q with (q + phase) % 32 == 0.
    const uint32 phase = (uint32)(reinterpret_cast<uint64>(dx) / sizeof(float)) % WARP_SIZE;
    // image[i] holds plane position image_first + i; the piece is [piece_first, piece_end).
    const int image_first = piece * STAGED_PIECE - (int)(((uint32)plane_start + phase) % WARP_SIZE);
    const int piece_first = max(image_first, 0);
    const int piece_end = image_first + min(plane_size - image_first, STAGED_PIECE);
    if (piece_first >= piece_end) return;  // a trailing piece past the plane's end

    float4* const image4 = images[warp];
    float* const image = reinterpret_cast<float*>(image4);
    const int image_float4s = cdiv_int(piece_end - image_first, 4);
    for (int i = lane; i < image_float4s; i += WARP_SIZE) image4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    __syncwarp();

    // The windows that can route to the piece: the window rows meeting its rows; the window columns
    // meeting its columns if it lies in one row, else all.
    const FastDivmod row_of = FAST_DIVMOD(W);
    int first_row, first_col, last_row, last_col;
    row_of.divmod(piece_first, first_row, first_col);
    row_of.divmod(piece_end - 1, last_row, last_col);
    const int window_rows_lo = windows_containing(first_row, pad_top, R, FAST_DIVMOD(stride_h), OH).lo;
    const int window_rows_hi = windows_containing(last_row, pad_top, R, FAST_DIVMOD(stride_h), OH).hi;
    const Span window_cols = first_row != last_row
        ? Span{0, OW}
        : Span{windows_containing(first_col, pad_left, S, FAST_DIVMOD(stride_w), OW).lo,
               windows_containing(last_col, pad_left, S, FAST_DIVMOD(stride_w), OW).hi};
    const int lane_class = lane - FAST_DIVMOD(classes).div(lane) * classes;  // lane % classes
    for (int window_row = window_rows_lo; window_row < window_rows_hi; ++window_row) {
        const Span rows = in_bounds(window_row * stride_h - pad_top, R, H);
        const int row_start = (plane * OH + window_row) * OW;
        for (int group = window_cols.lo; group < window_cols.hi; group += WARP_SIZE) {
            const int ow = group + lane;
            int slot = -1;  // where this lane's window routes its dy in the image, if anywhere
            float grad = 0.f;
            if (ow < window_cols.hi) {
                const int64 at = indices[row_start + ow];
                grad = dy[row_start + ow];  // loaded with the index: both go out together
                if (piece_first <= at && at < piece_end) {
                    int h, w;
                    row_of.divmod((int)at, h, w);
                    const Span cols = in_bounds(ow * stride_w - pad_left, S, W);
                    if (rows.lo <= h && h < rows.hi && cols.lo <= w && w < cols.hi) slot = (int)at - image_first;
                }
            }
#pragma unroll 1
            for (int pass = 0; pass < classes; ++pass) {
                if (lane_class == pass && slot >= 0) image[slot] += grad;
                __syncwarp();
            }
        }
    }

    for (int i = lane; i < image_float4s; i += WARP_SIZE) {
        const int first = image_first + 4 * i;  // plane position of image4[i]
        const float4 v = image4[i];
        if (piece_first <= first && first + 4 <= piece_end) {
            store_float4(dx + plane_start + first, v);  // 16-byte aligned: (plane_start + first + phase) % 4 == 0
        } else {
            const float value[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; ++k)
                if (piece_first <= first + k && first + k < piece_end) dx[plane_start + first + k] = value[k];
        }
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
