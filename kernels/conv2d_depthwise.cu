// conv2d_depthwise.cu: direct depthwise convolution (groups == C, NCHW float32), each compiled per layer shape
// (DEPTHWISE_* defines) so that its window loops unroll into registers:
//   conv2d_depthwise_fwd_bias_act   y = act(b + depthwise(x, w))
//   conv2d_depthwise_bwd_data       dx
//   conv2d_depthwise_bwd_filter     per-block partials of dw and db (sum_splits_bias_act, compiled into conv2d.cu, adds them in order)
// Channel multiplier M = K / C >= 1: output channel k reads input channel c = k / M (PyTorch's groups == C), w is
// (K, 1, R, S). Window R × S (any, odd or even), strides sh × sw, dilations dh × dw, pads pt (top) and pl (left):
//   y[n,k,oh,ow] = act(b[k] + Σ_{r,s} w[k,r,s] · x[n, k/M, oh·sh − pt + r·dh, ow·sw − pl + s·dw])   (x zero outside)
//   dx[n,c,ih,iw] = Σ_{j<M} Σ_{r,s : (ih + pt − r·dh) = oh·sh, (iw + pl − s·dw) = ow·sw} w[c·M+j,r,s] · dy[n,c·M+j,oh,ow]
//   dw[k,r,s] = Σ_{n,oh,ow} dy[n,k,oh,ow] · x[n, k/M, oh·sh − pt + r·dh, ow·sw − pl + s·dw],   db[k] = Σ_{n,oh,ow} dy[n,k,oh,ow]
//
// Floor. Depthwise does R·S FMAs an output, against the R·S·C of a dense layer: it is memory-bound up to about 7×7.
//   forward        4·(N·C·H·W + N·K·OH·OW) bytes (x once, y once; w and b are a few KB); 2·N·K·OH·OW·R·S FLOPs.
//                  MobileNetV2 3×3, C 144, 56², N 128: 0.46 GB, 0.14 ms at 3.35 TB/s (H100), 1.0 GFLOP (15 µs).
//                  ConvNeXt 7×7, C 96, 56², N 128: 0.31 GB, 0.09 ms; 3.8 GFLOP, 0.06 ms at 60 TFLOP/s.
//                  31×31, C 384 (a large-kernel stage), 14²·... the FMAs lead: 19× the bytes' time at 31×31.
//   backward-data  4·(N·K·OH·OW + N·C·H·W) bytes, as many FLOPs (strided layers skip the taps no output meets).
//   backward-filter 4·(N·K·OH·OW + N·C·H·W) bytes plus 4·splits·K·(R·S + 1) of partials; 2·N·K·OH·OW·R·S FLOPs
//                  (db from the dy values the block holds: no pass of its own over dy).
//
// Tiling (all three kernels). A block takes one channel and DP_BP images (planes) at once, and a tile of
// TH = DP_BY·DP_U rows × TW = DP_BX·DP_V columns of each plane's outputs (backward-data: of dx). Thread
// (tx, ty, tz) = (tid % BX, tid / BX % BY, tid / (BX·BY)) computes rows ty·U .. ty·U + U − 1 and columns
// tx·V .. tx·V + V − 1 of plane tz; DP_THREADS >= BX·BY·BP, whole warps (the spare lanes only stage and, in
// backward-filter, add zeros: a large window's halo on a small image asks for more staging lanes than outputs). The input under the tile (with its halo) is staged in shared memory once, every
// thread loading DP_*_LOADS elements of the row-major planes (a warp reads consecutive columns: coalesced), all
// loads issued before the first store. Each thread then walks its window rows: a row's SEG = (V − 1)·sw +
// (S − 1)·dw + 1 staged values go into registers once and feed S·V FMAs (a row's weights are warp-uniform
// __ldg loads: one L1 transaction a warp). Shared-memory words a FMA: (S + U·SEG) / (U·S·V), 0.6 for 3×3 with
// U 2, V 4; the planner takes wider V and U for larger windows (0.18 for 31×31 with U 4, V 8).
//   forward: grid (N/BP · tiles_h · tiles_w, C). The staged x tile serves the M filters of channel c in turn; each
//     thread writes its U·V outputs of each filter, bias and activation fused (common.cuh's codes), as float4s when
//     V % 4 == 0, OW % 4 == 0 and y is 16-byte aligned, else guarded scalars.
//   backward-data: grid as forward, over dx's tiles. For each j < M the dy tile of channel c·M + j that the dx tile
//     meets, DP_YH × DP_YW, is staged (one barrier before, one after); every thread adds its U·V dx sums over j, r,
//     s in that order (a stride-2 tap that no output meets is skipped by a parity test that the compile-time
//     stride makes a bit test), then writes them.
//   backward-filter: grid (K, splits, passes). Block (k, z, p) takes window rows r in [p·RC, p·RC + RC) of
//     channel k and the units (BP images × one output tile) z·chunk .. z·chunk + chunk − 1; per unit it stages the
//     x rows those window rows meet, reads its own U·V values of dy into registers, and adds dy · x into RC·S
//     accumulators. Large windows take several passes (RC < R): each re-reads its units, while the
//     accumulators stay within registers; the first pass (p = 0) also sums its dy values for db. End: each
//     accumulator summed over its warp (common.cuh's warp_sum, a fixed xor tree), then the warps' totals in order
//     through shared memory; thread i < RC·S writes partials[z][k][(p·RC + i / S)·S + i % S], the last thread (pass 0)
//     partials[z][k][R·S] (db): partials are (splits, K, R·S + 1). No atomics: the same bits every run.
// Indices within a plane are 32-bit, plane offsets 64-bit (the host checks one plane of each tensor).
// Unverified on a GPU; checked by NVRTC (sm_80, sm_90, no spills) and a CPU emulation of this source
// (tests/test_conv_depthwise_emulated.py).
#include "conv2d_indexing.cuh"

#if !defined(DEPTHWISE_R) || !defined(DEPTHWISE_S) || !defined(DEPTHWISE_SH) || !defined(DEPTHWISE_SW) || \
    !defined(DEPTHWISE_DH) || !defined(DEPTHWISE_DW) || !defined(DEPTHWISE_U) || !defined(DEPTHWISE_V) || \
    !defined(DEPTHWISE_BX) || !defined(DEPTHWISE_BY) || !defined(DEPTHWISE_BP) || !defined(DEPTHWISE_RC) || \
    !defined(DEPTHWISE_THREADS) || !defined(DEPTHWISE_MAX_LOADS) || !defined(DEPTHWISE_MAX_SMEM)
#error "DEPTHWISE_* come from cnn_gpu/cuda/loader.py (FAMILY_DEFINES) and the planner (cnn_gpu/ops/conv/depthwise.py)"
#endif

constexpr int DP_R = DEPTHWISE_R, DP_S = DEPTHWISE_S, DP_SH = DEPTHWISE_SH, DP_SW = DEPTHWISE_SW;
constexpr int DP_DH = DEPTHWISE_DH, DP_DW = DEPTHWISE_DW;
constexpr int DP_U = DEPTHWISE_U, DP_V = DEPTHWISE_V, DP_BX = DEPTHWISE_BX, DP_BY = DEPTHWISE_BY, DP_BP = DEPTHWISE_BP;
constexpr int DP_RC = DEPTHWISE_RC;
constexpr int DP_THREADS = DEPTHWISE_THREADS;
constexpr int DP_WARPS = DP_THREADS / 32;
constexpr int DP_TH = DP_BY * DP_U, DP_TW = DP_BX * DP_V;                // a plane's tile of outputs (of dx)
constexpr int DP_SEG = (DP_V - 1) * DP_SW + (DP_S - 1) * DP_DW + 1;      // x columns under a thread's V windows
constexpr int DP_XW = (DP_TW - 1) * DP_SW + (DP_S - 1) * DP_DW + 1;      // staged x columns under the tile
constexpr int DP_XH = (DP_TH - 1) * DP_SH + (DP_R - 1) * DP_DH + 1;      // staged x rows under the tile
constexpr int DP_XH_PASS = (DP_TH - 1) * DP_SH + (DP_RC - 1) * DP_DH + 1;  // ... under RC window rows (bwd filter)
// backward-data: the dy rows and columns a dx tile meets, from floor((start + pad − (R − 1)·dh) / sh) on
constexpr int DP_YH = (DP_TH - 1 + (DP_R - 1) * DP_DH) / DP_SH + 2;
constexpr int DP_YW = (DP_TW - 1 + (DP_S - 1) * DP_DW) / DP_SW + 2;
constexpr int DP_YSEG = DP_V + (DP_S - 1) * DP_DW;                       // dy columns under a thread's V dx columns (sw 1)
constexpr int DP_MAX_YSEG = 24;  // wider rows are read tap by tap
constexpr int DP_MAX_LOADS = DEPTHWISE_MAX_LOADS;  // staged elements a thread: as many registers in flight
constexpr int DP_MAX_SMEM = DEPTHWISE_MAX_SMEM;    // static shared memory
// Window rows unrolled: all of them up to 3 (every weight offset a constant); one at a time beyond, which keeps a
// row's values, not the whole window's, in registers.
constexpr int DP_R_UNROLL = DP_R <= 3 ? DP_R : 1;

static_assert(DP_THREADS % 32 == 0 && DP_THREADS >= DP_BX * DP_BY * DP_BP && DP_THREADS <= 1024,
              "depthwise: whole warps, at least one thread an output strip, at most 1024");
static_assert(DP_RC >= 1 && DP_RC <= DP_R, "depthwise: 1 to R window rows a backward-filter pass");
static_assert(4 * DP_BP * DP_XH * DP_XW <= DP_MAX_SMEM && 4 * DP_BP * DP_YH * DP_YW <= DP_MAX_SMEM &&
              4 * (DP_BP * DP_XH_PASS * DP_XW + DP_WARPS * (DP_RC * DP_S + 1)) <= DP_MAX_SMEM,
              "depthwise: the staged tile (and backward-filter's warp totals) must fit 48 KB of static shared memory");
static_assert((DP_BP * DP_XH * DP_XW + DP_THREADS - 1) / DP_THREADS <= DP_MAX_LOADS &&
              (DP_BP * DP_YH * DP_YW + DP_THREADS - 1) / DP_THREADS <= DP_MAX_LOADS,
              "depthwise: too many staged elements a thread");

__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

// The block's tile: channel (blockIdx.y; backward-filter passes its own), images n0 .. n0 + BP − 1, output (dx)
// rows and columns from h0, w0; and this thread's place in it.
struct DepthwiseTile {
    int n0, h0, w0;
    int tx, ty, tz;
    __device__ DepthwiseTile(int unit, int N, int tiles_h, int tiles_w) {
        const int tw = unit % tiles_w;
        unit /= tiles_w;
        const int th = unit % tiles_h;
        n0 = unit / tiles_h * DP_BP;
        h0 = th * DP_TH;
        w0 = tw * DP_TW;
        tx = threadIdx.x % DP_BX;
        ty = threadIdx.x / DP_BX % DP_BY;
        tz = threadIdx.x / (DP_BX * DP_BY);
    }
};

// tile[p][i][j] = src[p·plane_stride + (row0 + i)·width + col0 + j] for the BP planes' TILE_H × TILE_W windows,
// zero where the element is outside the source (rows [0, height), columns [0, width)), past the planes that exist,
// or at i >= row_reach or j >= col_reach (backward-filter: x that no valid output's window meets). The loads go out
// DP_STAGE_BATCH at a time before their stores; the batches are a rolled loop, so that the elements' positions are
// worked out as they are needed, not held in registers across a kernel's loop (its accumulators need them).
constexpr int DP_STAGE_BATCH = 4;
template <int TILE_H, int TILE_W>
__device__ __forceinline__ void stage_planes(float* tile, const float* __restrict__ src, int64 plane_stride,
                                             int planes, int height, int width, int row0, int col0,
                                             int row_reach = TILE_H, int col_reach = TILE_W) {
    constexpr int PLANE = TILE_H * TILE_W, ELEMENTS = DP_BP * PLANE;
#pragma unroll 1
    for (int e0 = threadIdx.x; e0 < ELEMENTS; e0 += DP_STAGE_BATCH * DP_THREADS) {
        float v[DP_STAGE_BATCH];
#pragma unroll
        for (int j = 0; j < DP_STAGE_BATCH; ++j) {
            const int e = e0 + j * DP_THREADS, p = e / PLANE, i = e % PLANE / TILE_W, col = e % TILE_W;
            const int row = row0 + i, column = col0 + col;
            const bool ok = e < ELEMENTS && p < planes && inside(row, height) && inside(column, width) &&
                            i < row_reach && col < col_reach;
            v[j] = ok ? __ldg(src + p * plane_stride + row * width + column) : 0.f;
        }
#pragma unroll
        for (int j = 0; j < DP_STAGE_BATCH; ++j)
            if (e0 + j * DP_THREADS < ELEMENTS) tile[e0 + j * DP_THREADS] = v[j];
    }
}

// out[u][v] (row pitch `pitch`, columns from `col`) = act(acc[u][v] + bias) for the rows below `rows` and columns
// below `cols` (counted from the thread's first): float4s where vec, else guarded scalars.
__device__ __forceinline__ void store_outputs(float* out, int pitch, const float (&acc)[DP_U][DP_V], float bias,
                                              int act, float slope, int rows, int cols, bool vec) {
#pragma unroll
    for (int u = 0; u < DP_U; ++u) {
        if (u >= rows) break;
        float v[DP_V];
#pragma unroll
        for (int j = 0; j < DP_V; ++j) v[j] = apply_activation(acc[u][j] + bias, act, slope);
        float* row = out + u * pitch;
        if (DP_V % 4 == 0 && vec && cols >= DP_V) {
#pragma unroll
            for (int j = 0; j < DP_V; j += 4) store_float4(row + j, make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]));
        } else {
#pragma unroll
            for (int j = 0; j < DP_V; ++j)
                if (j < cols) row[j] = v[j];
        }
    }
}

// ---- forward ------------------------------------------------------------------------------------
// acc[u][v] = Σ_{r,s} wk[r·S + s] · plane[(u·sh + r·dh)·XW + v·sw + s·dw]   (plane: the thread's corner of the
// staged x tile), summed over r, then s, in order.
__device__ __forceinline__ void depthwise_window_sums(float (&acc)[DP_U][DP_V], const float* plane,
                                                      const float* __restrict__ wk) {
#pragma unroll
    for (int u = 0; u < DP_U; ++u)
#pragma unroll
        for (int v = 0; v < DP_V; ++v) acc[u][v] = 0.f;
#pragma unroll DP_R_UNROLL
    for (int r = 0; r < DP_R; ++r) {
        float wr[DP_S];
#pragma unroll
        for (int s = 0; s < DP_S; ++s) wr[s] = __ldg(wk + r * DP_S + s);
#pragma unroll
        for (int u = 0; u < DP_U; ++u) {
            const float* row = plane + (u * DP_SH + r * DP_DH) * DP_XW;
            float seg[DP_SEG];
#pragma unroll
            for (int e = 0; e < DP_SEG; ++e) seg[e] = row[e];
#pragma unroll
            for (int s = 0; s < DP_S; ++s)
#pragma unroll
                for (int v = 0; v < DP_V; ++v) acc[u][v] = fmaf(wr[s], seg[v * DP_SW + s * DP_DW], acc[u][v]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(DP_THREADS)
conv2d_depthwise_fwd_bias_act(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                              float* __restrict__ y, int N, int C, int H, int W, int M, int OH, int OW, int pt, int pl,
                              int tiles_h, int tiles_w, int act, float slope) {
    __shared__ float tile[DP_BP * DP_XH * DP_XW];
    const int c = blockIdx.y, K = C * M;
    const DepthwiseTile t(blockIdx.x, N, tiles_h, tiles_w);
    stage_planes<DP_XH, DP_XW>(tile, x + ((int64)t.n0 * C + c) * H * W, (int64)C * H * W, N - t.n0, H, W,
                               t.h0 * DP_SH - pt, t.w0 * DP_SW - pl);
    __syncthreads();
    const int n = t.n0 + t.tz, oh = t.h0 + t.ty * DP_U, ow = t.w0 + t.tx * DP_V;
    if (t.tz >= DP_BP || n >= N || oh >= OH || ow >= OW) return;  // after the block's only barrier

    const float* plane = tile + (t.tz * DP_XH + t.ty * DP_U * DP_SH) * DP_XW + t.tx * DP_V * DP_SW;
    const bool vec = OW % 4 == 0 && aligned16(y);
#pragma unroll 1
    for (int j = 0; j < M; ++j) {
        const int k = c * M + j;
        float acc[DP_U][DP_V];
        depthwise_window_sums(acc, plane, w + k * DP_R * DP_S);
        store_outputs(y + (((int64)n * K + k) * OH + oh) * OW + ow, OW, acc, b != nullptr ? __ldg(b + k) : 0.f, act,
                      slope, OH - oh, OW - ow, vec);
    }
}

// ---- backward-data ------------------------------------------------------------------------------
// acc[u][v] += Σ_{r,s} wk[r·S + s] · plane[lh / sh][lw / sw], lh = bh + u − r·dh, lw = bw + v − s·dw, over the
// taps where sh divides lh and sw divides lw (plane: the staged dy tile of one image; bh, bw >= (R − 1)·dh,
// (S − 1)·dw: the thread's first dx row and column relative to sh·(the tile's first dy row) and sw·(column)).
__device__ __forceinline__ void depthwise_transposed_sums(float (&acc)[DP_U][DP_V], const float* plane,
                                                          const float* __restrict__ wk, int bh, int bw) {
#pragma unroll DP_R_UNROLL
    for (int r = 0; r < DP_R; ++r) {
        float wr[DP_S];
#pragma unroll
        for (int s = 0; s < DP_S; ++s) wr[s] = __ldg(wk + r * DP_S + s);
#pragma unroll
        for (int u = 0; u < DP_U; ++u) {
            const int lh = bh + u - r * DP_DH;
            if (DP_SH > 1 && lh % DP_SH != 0) continue;
            const float* row = plane + lh / DP_SH * DP_YW;
            if (DP_SW == 1 && DP_YSEG <= DP_MAX_YSEG) {
                // dy columns bw − (S − 1)·dw .. bw + V − 1: tap s of column v is seg[v + (S − 1 − s)·dw]
                float seg[DP_YSEG];
#pragma unroll
                for (int e = 0; e < DP_YSEG; ++e) seg[e] = row[bw - (DP_S - 1) * DP_DW + e];
#pragma unroll
                for (int s = 0; s < DP_S; ++s)
#pragma unroll
                    for (int v = 0; v < DP_V; ++v)
                        acc[u][v] = fmaf(wr[s], seg[v + (DP_S - 1 - s) * DP_DW], acc[u][v]);
            } else {
#pragma unroll
                for (int s = 0; s < DP_S; ++s)
#pragma unroll
                    for (int v = 0; v < DP_V; ++v) {
                        const int lw = bw + v - s * DP_DW;
                        if (lw % DP_SW == 0) acc[u][v] = fmaf(wr[s], row[lw / DP_SW], acc[u][v]);
                    }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(DP_THREADS)
conv2d_depthwise_bwd_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int N,
                          int C, int H, int W, int M, int OH, int OW, int pt, int pl, int tiles_h, int tiles_w) {
    __shared__ float tile[DP_BP * DP_YH * DP_YW];
    const int c = blockIdx.y, K = C * M;
    const DepthwiseTile t(blockIdx.x, N, tiles_h, tiles_w);
    // the tile's first dy row and column: no dx element of the tile meets an earlier one
    const int oh0 = floor_div(t.h0 + pt - (DP_R - 1) * DP_DH, DP_SH), ow0 = floor_div(t.w0 + pl - (DP_S - 1) * DP_DW, DP_SW);
    const int n = t.n0 + t.tz, ih = t.h0 + t.ty * DP_U, iw = t.w0 + t.tx * DP_V;
    const bool computes = t.tz < DP_BP && n < N && ih < H && iw < W;
    const float* plane = tile + t.tz * DP_YH * DP_YW;
    const int bh = ih + pt - oh0 * DP_SH, bw = iw + pl - ow0 * DP_SW;

    float acc[DP_U][DP_V];
#pragma unroll
    for (int u = 0; u < DP_U; ++u)
#pragma unroll
        for (int v = 0; v < DP_V; ++v) acc[u][v] = 0.f;
#pragma unroll 1
    for (int j = 0; j < M; ++j) {
        const int k = c * M + j;
        if (j > 0) __syncthreads();  // every thread is done reading the previous channel's tile
        stage_planes<DP_YH, DP_YW>(tile, dy + ((int64)t.n0 * K + k) * OH * OW, (int64)K * OH * OW, N - t.n0, OH, OW,
                                   oh0, ow0);
        __syncthreads();
        if (computes) depthwise_transposed_sums(acc, plane, w + k * DP_R * DP_S, bh, bw);
    }
    if (computes)
        store_outputs(dx + (((int64)n * C + c) * H + ih) * W + iw, W, acc, 0.f, ACT_NONE, 0.f, H - ih, W - iw,
                      W % 4 == 0 && aligned16(dx));
}

// ---- backward-filter ----------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(DP_THREADS)
conv2d_depthwise_bwd_filter(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partials,
                            int N, int C, int H, int W, int M, int OH, int OW, int pt, int pl, int tiles_h, int tiles_w,
                            int chunk) {
    __shared__ float tile[DP_BP * DP_XH_PASS * DP_XW];
    __shared__ float warp_totals[DP_WARPS][DP_RC * DP_S + 1];  // the last: db
    const int k = blockIdx.x, c = k / M, K = C * M, r0 = blockIdx.z * DP_RC;
    const int units = cdiv(N, DP_BP) * tiles_h * tiles_w;
    const int begin = blockIdx.y * chunk, end = min(begin + chunk, units);

    float acc[DP_RC][DP_S];
#pragma unroll
    for (int i = 0; i < DP_RC; ++i)
#pragma unroll
        for (int s = 0; s < DP_S; ++s) acc[i][s] = 0.f;
    float bias_sum = 0.f;  // Σ of this thread's dy values (db), kept by pass 0

#pragma unroll 1
    for (int unit = begin; unit < end; ++unit) {
        const DepthwiseTile t(unit, N, tiles_h, tiles_w);
        const int rows = min(DP_TH, OH - t.h0), cols = min(DP_TW, OW - t.w0);  // the tile's valid outputs
        if (unit > begin) __syncthreads();  // every thread is done reading the previous unit's x
        stage_planes<DP_XH_PASS, DP_XW>(tile, x + ((int64)t.n0 * C + c) * H * W, (int64)C * H * W, N - t.n0, H, W,
                                        t.h0 * DP_SH - pt + r0 * DP_DH, t.w0 * DP_SW - pl,
                                        (rows - 1) * DP_SH + (DP_RC - 1) * DP_DH + 1, (cols - 1) * DP_SW + (DP_S - 1) * DP_DW + 1);
        __syncthreads();
        const int n = t.n0 + t.tz, oh = t.h0 + t.ty * DP_U, ow = t.w0 + t.tx * DP_V;
        if (t.tz >= DP_BP || n >= N || oh >= OH || ow >= OW) continue;

        float d[DP_U][DP_V];  // this thread's dy, zero past the outputs
        const float* dy_plane = dy + ((int64)n * K + k) * OH * OW;
#pragma unroll
        for (int u = 0; u < DP_U; ++u)
#pragma unroll
            for (int v = 0; v < DP_V; ++v)
                d[u][v] = oh + u < OH && ow + v < OW ? __ldg(dy_plane + (oh + u) * OW + ow + v) : 0.f;
#pragma unroll
        for (int u = 0; u < DP_U; ++u)
#pragma unroll
            for (int v = 0; v < DP_V; ++v) bias_sum += d[u][v];
        const float* plane = tile + (t.tz * DP_XH_PASS + t.ty * DP_U * DP_SH) * DP_XW + t.tx * DP_V * DP_SW;
#pragma unroll
        for (int i = 0; i < DP_RC; ++i) {
            if (DP_RC < DP_R && r0 + i >= DP_R) break;  // the last pass of a window whose rows RC does not divide
#pragma unroll
            for (int u = 0; u < DP_U; ++u) {
                const float* row = plane + (u * DP_SH + i * DP_DH) * DP_XW;
                float seg[DP_SEG];
#pragma unroll
                for (int e = 0; e < DP_SEG; ++e) seg[e] = row[e];
#pragma unroll
                for (int s = 0; s < DP_S; ++s)
#pragma unroll
                    for (int v = 0; v < DP_V; ++v) acc[i][s] = fmaf(d[u][v], seg[v * DP_SW + s * DP_DW], acc[i][s]);
            }
        }
    }

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int i = 0; i < DP_RC; ++i)
#pragma unroll
        for (int s = 0; s < DP_S; ++s) {
            const float total = warp_sum(acc[i][s]);  // every lane holds it; lanes take turns storing
            if (lane == (i * DP_S + s) % 32) warp_totals[warp][i * DP_S + s] = total;
        }
    const float bias_total = warp_sum(bias_sum);
    if (lane == DP_RC * DP_S % 32) warp_totals[warp][DP_RC * DP_S] = bias_total;
    __syncthreads();
    float* out = partials + ((int64)blockIdx.y * K + k) * (DP_R * DP_S + 1);
    for (int i = threadIdx.x; i < DP_RC * DP_S && r0 + i / DP_S < DP_R; i += DP_THREADS) {
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < DP_WARPS; ++q) sum += warp_totals[q][i];
        out[r0 * DP_S + i] = sum;
    }
    if (blockIdx.z == 0 && threadIdx.x == DP_THREADS - 1) {  // db, by the last thread (the first ones write dw)
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < DP_WARPS; ++q) sum += warp_totals[q][DP_RC * DP_S];
        out[DP_R * DP_S] = sum;
    }
}
