// conv2d_direct.cu: direct 2-D convolutions (NCHW float32) for the layers whose implicit GEMM (kernels/conv2d.cu)
// would leave most of its tiles idle, each compiled per layer shape (defines) so that its loops unroll into registers:
//   conv2d_fwd_few_filters           the forward for few output channels (FEWK_* defines)
//   conv2d_bwd_filter_few_channels   backward-filter for few input channels (FEWC_* defines)
// A variant of one is compiled with the other's default defines.
#include "conv2d_indexing.cuh"

// ---- forward for few output channels ---------------------------------------------------------------
// conv2d_fwd_few_filters: the forward for K <= FK_MAX_FILTERS output channels
//   y[n,k,oh,ow] = act(b[k] + Σ_{c,r,s} w[k,c,r,s] · x[n, c, oh·sh − pt + r, ow·sw − pl + s])   (x zero outside)
//   The implicit GEMM's M is K here, its tiles 32-128 rows tall: for K = 1 at least 31 of 32 FMAs are wasted. K = 1
//   is backward-data of a first layer (C = 1), which cnn_gpu/ops/conv/ computes as this forward of dy with the
//   flipped filters (backward-data as a forward: K' = 1, C' = the layer's K, 'full' pads R − 1 − p); heads with 1-8 outputs too.
//   Compile-time: K, R, S, sh, sw and the tile (FEWK_* defines: cnn_gpu/ops/conv/direct.py picks them per layer).
//   Block: an output tile of one image, TH = BY·U rows × TW = 4·BX columns, all K filters; THREADS = BX·BY rounded
//   up to whole warps (<= FK_MAX_THREADS; the spare lanes only stage). Thread (tx, ty) = (tid % BX, tid / BX): output
//   rows ty·U .. ty·U + U − 1 and columns 4·tx .. 4·tx + 3 of the tile for every filter, U·4·K accumulators (<= 32).
//   Reduction over the block's channels c in [z·chunk, min(C, z·chunk + chunk)), one channel a step:
//     - staging: the channel's x plane under the tile, XH = (TH − 1)·sh + R rows × XP columns (XP >= (TW − 1)·sw + S,
//       a multiple of 4), in shared memory, double-buffered. Each thread copies FK_LOADS elements (element
//       e = tid + j·THREADS of the row-major plane: a warp reads consecutive columns) with cp.async, global to shared
//       with no register held, their offsets in an x plane worked out once. The elements outside x are the same for
//       every channel: both buffers' are zeroed once and never copied. The next channel's copies are started before
//       this channel's FMAs and waited for after them, then one barrier a channel.
//     - FMAs: the thread loads the channel's K·R·S weights into registers (warp-uniform __ldg: one L1 transaction
//       a warp), then walks the (U − 1)·sh + R plane rows under its outputs; each row's SEG = 3·sw + S values are
//       read once (LDS.128 and LDS.64 from a 16-byte aligned start; a warp reads consecutive words), and feed every
//       (u, r) that meets that row: 4·K·S FMAs each. A warp's lanes with the same ty read one row.
//   Epilogue: bias and activation (common.cuh's codes); a float4 store a filter and row when OW % 4 == 0 and y is
//   16-byte aligned, else guarded scalars. Split (gridDim.y > 1): block (·, z) writes slice z of partials
//   (splits, N, K, OH, OW) with no bias and ACT_NONE, and sum_splits_bias_act (sum_splits.cuh, in conv2d.cu) adds the slices in order
//   with bias and activation. Every sum in a fixed order, no atomics: the same bits every run.
// Grid (N·tiles_h·tiles_w, splits), block THREADS, static smem 2·XH·XP·4 bytes (<= 2·FK_MAX_LOADS·THREADS·4 = 24 KB).
// Indices within an image in 32 bits (the host checks one image of x and of y), image offsets in 64.
// Floors, with the plans the host picks (H200: 132 SMs, 4.8 TB/s, 67 TFLOP/s FP32) and NVRTC 13's sm_90 SASS:
//   the 100×100 network's conv1 backward-data, N 128 (dy 128×512×98×98 -> dx 128×1×100×100, 3×3, pads 2; tiles 20×100, U 4, 125
//   of 128 lanes, 640 blocks, at 86 registers 5 an SM: all resident): reads dy once, 2.52 GB: 0.52 ms (0.59 ms at
//   the ~4.3 TB/s a stream reaches); 11.8 GFLOP: 0.18 ms. A warp's channel is 300 instructions, 144 of them FMAs
//   (18 LDGSTS, 12 LDS, 9 weight loads): issue 0.75 M cycles a scheduler, 0.38 ms; ~100 L1/shared wavefronts (rows
//   36, staging ~54, weights 9): ~0.5 ms. Memory-bound, L1 close behind.
//   the MNIST network's conv1 backward-data, N 1024 (dy 1024×32×24×24 -> dx 1024×1×28×28, 5×5, pads 4; one 28×28 tile an
//   image, U 4, 49 of 64 lanes): 78.7 MB: 16 µs; 1.28 GFLOP: 19 µs; a warp's channel is 567 instructions, 400 of them
//   FMAs: issue 70 K cycles a scheduler, 36 µs. Issue-bound.

#ifndef FEWK_K
#define FEWK_K 1
#endif
#ifndef FEWK_R
#define FEWK_R 3
#endif
#ifndef FEWK_S
#define FEWK_S 3
#endif
#ifndef FEWK_SH
#define FEWK_SH 1
#endif
#ifndef FEWK_SW
#define FEWK_SW 1
#endif
#ifndef FEWK_BX
#define FEWK_BX 25
#endif
#ifndef FEWK_BY
#define FEWK_BY 5
#endif
#ifndef FEWK_U
#define FEWK_U 4
#endif

constexpr int FK_K = FEWK_K, FK_R = FEWK_R, FK_S = FEWK_S, FK_SH = FEWK_SH, FK_SW = FEWK_SW;
constexpr int FK_BX = FEWK_BX, FK_BY = FEWK_BY, FK_U = FEWK_U;
// The limits FK_MAX_FILTERS, FK_MAX_THREADS, FK_MAX_LOADS, FK_MAX_WEIGHTS, FK_MAX_ACCUMULATORS, FK_MAX_SEGMENT and
// FK_STRIP (output columns a thread: one float4 of y) are defines from cnn_gpu/cuda/loader.py's FAMILY_DEFINES,
// where cnn_gpu/ops/conv/direct.py reads them to decide where the kernel is offered.
#if !defined(FK_MAX_FILTERS) || !defined(FK_STRIP) || !defined(FK_MAX_THREADS) || !defined(FK_MAX_LOADS) || \
    !defined(FK_MAX_WEIGHTS) || !defined(FK_MAX_ACCUMULATORS) || !defined(FK_MAX_SEGMENT)
#error "the few-filter kernel's limits come from cnn_gpu/cuda/loader.py's FAMILY_DEFINES"
#endif
constexpr int FK_THREADS = (FK_BX * FK_BY + 31) / 32 * 32;
constexpr int FK_TH = FK_BY * FK_U, FK_TW = FK_BX * FK_STRIP;            // the block's output tile
constexpr int FK_SEGMENT = (FK_STRIP - 1) * FK_SW + FK_S;                // plane columns under a thread's 4 windows
constexpr int FK_SEGMENT4 = (FK_SEGMENT + 3) / 4 * 4;                    // ... read as whole float4s
constexpr int FK_ROWS = (FK_U - 1) * FK_SH + FK_R;                       // plane rows under a thread's U output rows
constexpr int FK_XH = (FK_TH - 1) * FK_SH + FK_R;                        // plane rows under the tile
constexpr int FK_XP = (FK_BX - 1) * FK_STRIP * FK_SW + FK_SEGMENT4;      // row pitch: where the last thread's float4s end
constexpr int FK_PLANE = FK_XH * FK_XP;
constexpr int FK_LOADS = (FK_PLANE + FK_THREADS - 1) / FK_THREADS;
static_assert(FK_K >= 1 && FK_K <= FK_MAX_FILTERS, "few_filters: 1 to FK_MAX_FILTERS filters");
static_assert(FK_U * FK_STRIP * FK_K <= FK_MAX_ACCUMULATORS, "few_filters: too many accumulators a thread");
static_assert(FK_THREADS <= FK_MAX_THREADS && FK_LOADS <= FK_MAX_LOADS && FK_K * FK_R * FK_S <= FK_MAX_WEIGHTS &&
              FK_SEGMENT4 <= FK_MAX_SEGMENT, "few_filters: this tile's staging, weights or rows would not fit registers");

// shared[0] = global[0], copied without passing through registers (cp.async, sm_80+): in flight until
// async_copies_wait(). On the host (a CPU emulation), at once.
__device__ __forceinline__ void async_copy4(float* shared, const float* global) {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((unsigned)__cvta_generic_to_shared(shared)), "l"(global)
                 : "memory");
#else
    *shared = *global;
#endif
}

// Waits for this thread's async_copy4s (a barrier then makes every thread's visible to the block).
__device__ __forceinline__ void async_copies_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The tile's x plane of one channel, FK_LOADS elements a thread: element e = tid + j·FK_THREADS of the row-major
// FK_XH × FK_XP plane whose corner is x[·, ·, ih0, iw0]. Its offset within an x channel plane is worked out once
// (INSIDE_NONE outside x or past the plane). The elements outside x are the same for every channel: zero_outside()
// writes their zeros once, and copy() starts one channel's copies of the others.
struct PlaneStager {
    static constexpr unsigned INSIDE_NONE = 0xffffffffu;
    unsigned offset[FK_LOADS];

    __device__ PlaneStager(int H, int W, int ih0, int iw0) {
#pragma unroll
        for (int j = 0; j < FK_LOADS; ++j) {
            const int e = threadIdx.x + j * FK_THREADS, row = e / FK_XP, col = e - row * FK_XP;
            offset[j] = e < FK_PLANE && inside(ih0 + row, H) && inside(iw0 + col, W) ? (ih0 + row) * W + iw0 + col
                                                                                      : INSIDE_NONE;
        }
    }
    __device__ void zero_outside(float* plane) const {
#pragma unroll
        for (int j = 0; j < FK_LOADS; ++j) {
            const int e = threadIdx.x + j * FK_THREADS;
            if (offset[j] == INSIDE_NONE && (j < FK_LOADS - 1 || e < FK_PLANE)) plane[e] = 0.f;
        }
    }
    __device__ void copy(const float* __restrict__ x_plane, float* plane) const {
        const Address base = address_of(x_plane);  // each address one wide multiply-add (gather's trick)
        float* mine = plane + threadIdx.x;
#pragma unroll
        for (int j = 0; j < FK_LOADS; ++j)
            if (offset[j] != INSIDE_NONE)
                async_copy4(mine + j * FK_THREADS, reinterpret_cast<const float*>(base + (uint64)offset[j] * 4));
    }
};

// acc[u][k][v] += Σ_{r,s} w[k, c, r, s] · plane[(ty·U + u)·sh + r][(4·tx + v)·sw + s]: one channel c, its staged
// plane and w_c = &w[0, c, 0, 0] (filter k at w_c + k·filter_stride).
__device__ __forceinline__ void few_filters_channel(float (&acc)[FK_U][FK_K][FK_STRIP], const float* plane,
                                                    const float* __restrict__ w_c, int filter_stride, int tx, int ty) {
    float weight[FK_K][FK_R][FK_S];
#pragma unroll
    for (int k = 0; k < FK_K; ++k)
#pragma unroll
        for (int r = 0; r < FK_R; ++r)
#pragma unroll
            for (int s = 0; s < FK_S; ++s) weight[k][r][s] = __ldg(w_c + k * filter_stride + r * FK_S + s);

    const float* corner = plane + ty * FK_U * FK_SH * FK_XP + tx * FK_STRIP * FK_SW;  // 16-byte aligned
#pragma unroll
    for (int i = 0; i < FK_ROWS; ++i) {
        float segment[FK_SEGMENT4];
#pragma unroll
        for (int q = 0; q < FK_SEGMENT4 / 4; ++q) {
            const float4 v = load_float4(corner + i * FK_XP + 4 * q);
            segment[4 * q] = v.x; segment[4 * q + 1] = v.y; segment[4 * q + 2] = v.z; segment[4 * q + 3] = v.w;
        }
#pragma unroll
        for (int u = 0; u < FK_U; ++u) {
            const int r = i - u * FK_SH;  // the tap row by which row i feeds output row u
            if (r < 0 || r >= FK_R) continue;
#pragma unroll
            for (int s = 0; s < FK_S; ++s)
#pragma unroll
                for (int k = 0; k < FK_K; ++k)
#pragma unroll
                    for (int v = 0; v < FK_STRIP; ++v) acc[u][k][v] = fmaf(weight[k][r][s], segment[v * FK_SW + s], acc[u][k][v]);
        }
    }
}

// __launch_bounds__(THREADS, 1): a minimum of one block keeps ptxas to the registers the code needs (the 100×100 network's
// conv1 variant 86, 5 blocks an SM; none spills over 1622 layer variants at sm_80 and sm_90), where with none it aims at occupancy
// steps of its own and spills a few bytes on 2 % of them.
extern "C" __global__ void __launch_bounds__(FK_THREADS, 1)
conv2d_fwd_few_filters(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                       float* __restrict__ y, int N, int C, int H, int W, int OH, int OW, int pt, int pl, int tiles_w,
                       int tiles_h, int chunk, int act, float slope) {
    __shared__ __align__(16) float planes[2][FK_PLANE];
    const int tiles = tiles_w * tiles_h;
    const int n = blockIdx.x / tiles, tile = blockIdx.x - n * tiles;
    const int tile_row = tile / tiles_w, tile_col = tile - tile_row * tiles_w;
    const int oh0 = tile_row * FK_TH, ow0 = tile_col * FK_TW;
    const int tx = threadIdx.x % FK_BX, ty = threadIdx.x / FK_BX;
    const bool computes = ty < FK_BY;
    const int c_begin = blockIdx.y * chunk, c_end = min(c_begin + chunk, C);
    const float* x_image = x + (int64)n * C * H * W;

    float acc[FK_U][FK_K][FK_STRIP];
#pragma unroll
    for (int u = 0; u < FK_U; ++u)
#pragma unroll
        for (int k = 0; k < FK_K; ++k)
#pragma unroll
            for (int v = 0; v < FK_STRIP; ++v) acc[u][k][v] = 0.f;

    const PlaneStager stager(H, W, oh0 * FK_SH - pt, ow0 * FK_SW - pl);
    stager.zero_outside(planes[0]);
    stager.zero_outside(planes[1]);
    if (c_begin < c_end) stager.copy(x_image + (int64)c_begin * H * W, planes[0]);
    async_copies_wait();
    __syncthreads();
#pragma unroll 1
    for (int c = c_begin; c < c_end; ++c) {
        const int cur = (c - c_begin) & 1;
        // the next channel's plane, in flight during this one's FMAs (buffer cur^1 was last read before the last barrier)
        if (c + 1 < c_end) stager.copy(x_image + (int64)(c + 1) * H * W, planes[cur ^ 1]);
        if (computes) few_filters_channel(acc, planes[cur], w + c * FK_R * FK_S, C * FK_R * FK_S, tx, ty);
        async_copies_wait();
        __syncthreads();
    }
    if (!computes) return;

    float* y_image = y + ((int64)blockIdx.y * N + n) * FK_K * OH * OW;
    const int ow = ow0 + tx * FK_STRIP;
    const bool vec = OW % FK_STRIP == 0 && aligned16(y);
#pragma unroll
    for (int k = 0; k < FK_K; ++k) {
        const float bias = b != nullptr ? __ldg(b + k) : 0.f;
#pragma unroll
        for (int u = 0; u < FK_U; ++u) {
            const int oh = oh0 + ty * FK_U + u;
            if (oh >= OH || ow >= OW) continue;
            float v[FK_STRIP];
#pragma unroll
            for (int j = 0; j < FK_STRIP; ++j) v[j] = apply_activation(acc[u][k][j] + bias, act, slope);
            float* out = y_image + (k * OH + oh) * OW + ow;
            if (vec) {
                store_float4(out, make_float4(v[0], v[1], v[2], v[3]));
            } else {
#pragma unroll
                for (int j = 0; j < FK_STRIP; ++j)
                    if (ow + j < OW) out[j] = v[j];
            }
        }
    }
}

// ---- backward filter for layers with few input channels (first layers) ----------------------------
// conv2d_bwd_filter_few_channels: partials[z][k][q] = Σ over the output pixels of strips [z·chunk, min(z·chunk +
// chunk, N·cdiv(OH·OW, 4))) of dy[n,k,oh,ow] · x[n, c, oh·sh − pt + r, ow·sw − pl + s], q = (c, r, s) (with
// gridDim.y == 1 partials is dw itself; otherwise sum_splits_bias_act adds the gridDim.y slices in order).
// For layers with C·R·S <= FC_MAX_TAPS, whose implicit GEMM (conv2d.cu) is only C·R·S wide (9 for a 1-channel 3×3
// layer): its tiles would mostly idle, while the op needs only to stream dy once (memory-bound).
//   C, R, S, the column stride sw and FC_FILTERS are compile-time (FEWC_* defines: cnn_gpu/ops/conv/direct.py compiles
//   one variant per layer shape), so every accumulator and every x value is a register.
//   Strip: 4 consecutive output pixels p0 .. p0 + 3 of one image (p = oh·OW + ow; cdiv(OH·OW, 4) strips an image,
//   the last maybe short). Thread: filters k0 .. k0 + FC_FILTERS − 1 (k0 = blockIdx.x·FC_FILTERS) with all their
//   taps (FC_FILTERS·C·R·S accumulators), over strips begin + tid, + FC_THREADS, ... of its split. Per strip:
//   one float4 of dy per filter (when OH·OW % 4 == 0 and dy is 16-byte aligned, else 4 guarded scalars; a warp
//   reads 512 contiguous bytes), the next strip's dy asked of L2 meanwhile (prefetch_l2, one filter a thread: up
//   to twice the bytes in flight, no register held); then for each tap row (c, r) the FC_SEGMENT = 3·sw + S x
//   columns under the strip's 4 windows, loaded once into registers and used by 4·S·FC_FILTERS FMAs. A strip that
//   crosses an output row is done as one run per row, its dy reloaded (from L1) with the slots outside the run
//   zeroed.
//   Loads per dy element: 1 + C·R·(3·sw + S) / (4·FC_FILTERS) (1.6 for 1×3×3 with 8 filters), against
//   1 + C·R·S for a thread per pixel; x (a few MB for a first layer) is re-read from L2 by each filter group.
//   Reduction: each accumulator summed over its warp by warp_sum's fixed xor tree, then the FC_WARPS warps'
//   totals in order through shared memory; thread i < FC_FILTERS·C·R·S writes partials[z][k0 + i / (C·R·S)]
//   [i % (C·R·S)] where that filter exists. No atomics: the same bits every run.
// Grid (cdiv(K, FC_FILTERS), splits), block FC_THREADS, static smem FC_WARPS·FC_FILTERS·C·R·S·4 bytes; at most
// 168 registers (3 blocks, 12 warps an SM), of which the held values (FC_HELD_REGISTERS below) take up to 128.
// Any stride and padding. Floor: 4·(N·K·OH·OW + N·C·H·W + 2·splits·K·C·R·S) bytes (dy once: 2.5 GB for the
// 100×100 network's conv1 at N128, 0.6 ms at 4.2 TB/s), 2·N·K·OH·OW·C·R·S FLOPs (18 per dy element there: not the limit).
#ifndef FEWC_C
#define FEWC_C 1
#endif
#ifndef FEWC_R
#define FEWC_R 3
#endif
#ifndef FEWC_S
#define FEWC_S 3
#endif
#ifndef FEWC_SW
#define FEWC_SW 1
#endif
#ifndef FEWC_FILTERS
#define FEWC_FILTERS 6
#endif

constexpr int FC_C = FEWC_C, FC_R = FEWC_R, FC_S = FEWC_S, FC_SW = FEWC_SW, FC_FILTERS = FEWC_FILTERS;
constexpr int FC_TAPS = FC_C * FC_R * FC_S;
// FC_MAX_TAPS, FC_MAX_FILTERS, FC_STRIP (output pixels a thread takes at a time: one float4 of dy), FC_THREADS,
// FC_BLOCKS_AN_SM (__launch_bounds__: 3 blocks of 128 threads, at most 168 registers) and FC_HELD_REGISTERS (the
// registers a thread holds for values: accumulators, a strip's dy, every tap row's x segment; the host picks the
// most filters under it, the rest of the 168 serve addresses and counters) are defines from
// cnn_gpu/cuda/loader.py's FAMILY_DEFINES, where cnn_gpu/ops/conv/direct.py reads them.
#if !defined(FC_MAX_TAPS) || !defined(FC_MAX_FILTERS) || !defined(FC_STRIP) || !defined(FC_THREADS) || \
    !defined(FC_BLOCKS_AN_SM) || !defined(FC_HELD_REGISTERS)
#error "the few-channel kernel's limits come from cnn_gpu/cuda/loader.py's FAMILY_DEFINES"
#endif
constexpr int FC_SEGMENT = (FC_STRIP - 1) * FC_SW + FC_S;  // x columns under a strip's windows, one tap row
constexpr int FC_WARPS = FC_THREADS / 32;
static_assert(FC_TAPS <= FC_MAX_TAPS && FC_FILTERS >= 1 && FC_FILTERS <= FC_MAX_FILTERS,
              "few_channels: C·R·S <= FC_MAX_TAPS, 1 to FC_MAX_FILTERS filters a thread");
static_assert(FC_FILTERS * (FC_TAPS + FC_STRIP) + FC_C * FC_R * FC_SEGMENT <= FC_HELD_REGISTERS,
              "too many filters a thread for this layer's taps: its values would not fit in registers");

// Asks L2 for the line holding p ahead of its load; holds no register. A no-op where not compiled for a GPU.
__device__ __forceinline__ void prefetch_l2(const float* p) {
#ifdef __CUDA_ARCH__
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// d[f][j] = dy[n, k0 + f, p0 + j] (dy_strip = &dy[n, k0, p0]) for the strip slots j0 <= j < j1 and the filters
// that exist (f < filters_left), else 0: one float4 a filter when the whole strip is asked for and vec (OH·OW % 4
// == 0, dy 16-byte aligned).
__device__ __forceinline__ void few_channels_load_dy(float (&d)[FC_FILTERS][FC_STRIP], const float* __restrict__ dy_strip,
                                                     int OHW, int filters_left, int j0, int j1, bool vec) {
    const Address strip = address_of(dy_strip);  // scalar loads as gathers: one wide multiply-add an address
#pragma unroll
    for (int f = 0; f < FC_FILTERS; ++f) {
        const bool filter_ok = f < filters_left;
        if (vec && j0 == 0 && j1 == FC_STRIP) {
            const float4 v = filter_ok ? __ldg(reinterpret_cast<const float4*>(dy_strip + (int64)f * OHW))
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
            d[f][0] = v.x; d[f][1] = v.y; d[f][2] = v.z; d[f][3] = v.w;
        } else {
#pragma unroll
            for (int j = 0; j < FC_STRIP; ++j)
                d[f][j] = filter_ok && j >= j0 && j < j1 ? gather(strip, f * OHW + j) : 0.f;
        }
    }
}

// acc[f][(c·R + r)·S + s] += Σ_j d[f][j] · x_image[c, ih0 + r, iw0 + j·sw + s] over the strip slots j0 <= j < j1,
// which lie in one output row: slot j's window at row ih0 and column iw0 + j·sw (iw0 may belong to a slot of the
// previous row). d is zero outside the run (few_channels_load_dy); x is zero outside its bounds and, so that no
// 0·inf appears, outside the columns the run's windows cover.
__device__ __forceinline__ void few_channels_run(float (&acc)[FC_FILTERS][FC_TAPS], const float (&d)[FC_FILTERS][FC_STRIP],
                                                 Address x_image, int H, int W, int ih0, int iw0, int j0, int j1) {
    const int col_begin = max(iw0 + j0 * FC_SW, 0), col_end = min(iw0 + (j1 - 1) * FC_SW + FC_S, W);
    const int cols = max(col_end - col_begin, 0);
#pragma unroll
    for (int c = 0; c < FC_C; ++c)
#pragma unroll
        for (int r = 0; r < FC_R; ++r) {
            const int ih = ih0 + r;
            const bool row_ok = inside(ih, H);
            float segment[FC_SEGMENT];
#pragma unroll
            for (int e = 0; e < FC_SEGMENT; ++e) {
                const int col = iw0 + e;
                segment[e] = row_ok && inside(col - col_begin, cols) ? gather(x_image, (c * H + ih) * W + col) : 0.f;
            }
#pragma unroll
            for (int f = 0; f < FC_FILTERS; ++f)
#pragma unroll
                for (int s = 0; s < FC_S; ++s)
#pragma unroll
                    for (int j = 0; j < FC_STRIP; ++j) {
                        float& a = acc[f][(c * FC_R + r) * FC_S + s];
                        a = fmaf(d[f][j], segment[j * FC_SW + s], a);
                    }
        }
}

extern "C" __global__ void __launch_bounds__(FC_THREADS, FC_BLOCKS_AN_SM)
conv2d_bwd_filter_few_channels(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partials,
                               int N, int H, int W, int K, int OH, int OW, int sh, int pt, int pl, int chunk) {
    __shared__ float warp_totals[FC_WARPS][FC_FILTERS * FC_TAPS];
    const int k0 = blockIdx.x * FC_FILTERS, filters_left = K - k0;
    const int OHW = OH * OW, strips_per_image = cdiv(OHW, FC_STRIP);
    const int begin = blockIdx.y * chunk, end = min(begin + chunk, N * strips_per_image);
    const bool vec = OHW % FC_STRIP == 0 && aligned16(dy);

    float acc[FC_FILTERS][FC_TAPS];
#pragma unroll
    for (int f = 0; f < FC_FILTERS; ++f)
#pragma unroll
        for (int q = 0; q < FC_TAPS; ++q) acc[f][q] = 0.f;

    // The next strip's dy is asked of L2 one filter a thread: the lanes that share prefetch_filter are at most
    // FC_MAX_FILTERS strips (128 bytes) apart, so together they cover each filter's lines of the warp's next strips.
    const int prefetch_filter = threadIdx.x % FC_FILTERS;
    const DigitCounter strips(1, strips_per_image, FC_THREADS);  // strip index -> (n, 0, strip of image n)
    Digits at = strips.at(begin + threadIdx.x);
#pragma unroll 1
    for (int strip = begin + threadIdx.x; strip < end; strip += FC_THREADS) {
        Digits next = at;
        strips.advance(next);

        const int n = at.hi, p0 = at.lo * FC_STRIP, count = min(FC_STRIP, OHW - p0);
        const float* dy_strip = dy + ((int64)n * K + k0) * OHW + p0;
        const Address x_image = address_of(x + (int64)n * FC_C * H * W);
        int oh, ow;
        divide(p0, OW, oh, ow);
#pragma unroll 1
        for (int j0 = 0; j0 < count; ++oh) {  // one run per output row the strip touches: slots j0 .. j1 − 1
            const int j1 = min(count, j0 + OW - ow);
            float d[FC_FILTERS][FC_STRIP];
            few_channels_load_dy(d, dy_strip, OHW, filters_left, j0, j1, vec);
            if (j0 == 0 && strip + FC_THREADS < end && prefetch_filter < filters_left)  // after this strip's loads
                prefetch_l2(dy + ((int64)next.hi * K + k0 + prefetch_filter) * OHW + next.lo * FC_STRIP);
            few_channels_run(acc, d, x_image, H, W, oh * sh - pt, (ow - j0) * FC_SW - pl, j0, j1);
            j0 = j1;
            ow = 0;
        }
        at = next;
    }

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int f = 0; f < FC_FILTERS; ++f)
#pragma unroll
        for (int q = 0; q < FC_TAPS; ++q) {
            const float total = warp_sum(acc[f][q]);  // every lane holds it; lanes take turns storing
            if (lane == (f * FC_TAPS + q) % 32) warp_totals[warp][f * FC_TAPS + q] = total;
        }
    __syncthreads();
    static_assert(FC_FILTERS * FC_TAPS <= FC_THREADS, "one thread per (filter, tap) sums the warps' totals");
    const int i = threadIdx.x, k = k0 + i / FC_TAPS;
    if (i < FC_FILTERS * FC_TAPS && k < K) {
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < FC_WARPS; ++w) sum += warp_totals[w][i];
        partials[((int64)blockIdx.y * K + k) * FC_TAPS + i % FC_TAPS] = sum;
    }
}
