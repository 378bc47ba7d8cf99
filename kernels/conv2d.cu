// conv2d.cu: 2-D convolution (cross-correlation), NCHW float32, forward and backward, as implicit GEMMs.
//
//   forward      y[n,k,oh,ow]  = act(b[k] + Σ_{c,r,s} w[k,c,r,s] · x[n, c, oh·sh − pt + r, ow·sw − pl + s])
//   backward dx  dx[n,c,h,w]   = Σ_{k,r,s} w[k,c,r,s] · dy[n, k, (h + pt − r)/sh, (w + pl − s)/sw]
//                               (only the terms where both divisions are exact and land inside dy)
//   backward dw  dw[k,c,r,s]   = Σ_{n,oh,ow} dy[n,k,oh,ow] · x[n, c, oh·sh − pt + r, ow·sw − pl + s]
//   backward db  db[k]         = Σ_{n,oh,ow} dy[n,k,oh,ow]
// x is zero outside its bounds; pt/pl are the top/left pads (bottom/right follow from OH, OW).
//
// Each of the three convolutions is one GEMM C[M][N] = Σ_q A[m][q] · B[q][n] whose operands are never
// materialised: a pair of "loaders" gathers the A and B tiles straight from the tensors (im2col on
// the fly) and one shared main loop (implicit_gemm) does the tiled multiply:
//
//   block tile BM × BN of C, reduction in steps of BK; THREADS = (BM/TM)·(BN/TN) threads (256 by default);
//   shared memory As[2][BK][BM+4], Bs[2][BK][BN+4] (double-buffered: tile t+1 is loaded from global
//   memory into registers while tile t is multiplied, then stored to the other buffer; one barrier a step);
//   thread (row, col) = (tid / (BN/TN), tid % (BN/TN)) accumulates C rows row·TM .. row·TM+TM−1 (read as
//   float4 from As) × columns col + j·(BN/TN), j < TN (consecutive threads, consecutive columns: the
//   epilogue's stores coalesce and the Bs reads hit distinct banks).
//   Tile loads: thread tid loads A elements (m = tid/BK + i·THREADS/BK, q = tid%BK) and B elements
//   (q = tid/BN + i·THREADS/BN, n = tid%BN), so the tensor position a thread's B column stands for is
//   decoded once, and its reduction indices are stepped by BK with mixed-radix counters (no division).
//
// Tile sizes are the CONV_* defines below (cnn_gpu/ops/conv.py's DEFAULT_TILE; its other CONV_TILES are
// compiled with -DCONV_BM=... and cnn_gpu/cuda/autotune.py picks one per kernel and shape).
// Indices inside one image are 32-bit, image offsets 64-bit; the Python side checks with
// require_int32_indexable that one image, w, and the GEMM extents fit in 32 bits.
// No float atomics: dw and db are reduced in per-block partials and summed in a fixed order by
// conv2d_sum_partials, so backward is bit-reproducible.
#include "common.cuh"

#ifndef CONV_BM
#define CONV_BM 64
#endif
#ifndef CONV_BN
#define CONV_BN 64
#endif
#ifndef CONV_BK
#define CONV_BK 16
#endif
#ifndef CONV_TM
#define CONV_TM 4
#endif
#ifndef CONV_TN
#define CONV_TN 4
#endif

constexpr int BM = CONV_BM, BN = CONV_BN, BK = CONV_BK, TM = CONV_TM, TN = CONV_TN;
constexpr int THREAD_COLS = BN / TN;               // threads along a row of the block tile
constexpr int THREADS = (BM / TM) * THREAD_COLS;
constexpr int SMEM_PAD = 4;                        // breaks the power-of-two row stride, keeps float4 alignment
constexpr int A_LOADS = BM * BK / THREADS;         // A-tile elements each thread loads per step
constexpr int B_LOADS = BK * BN / THREADS;
constexpr int A_ROW_STEP = THREADS / BK;           // rows between one thread's A elements
constexpr int B_ROW_STEP = THREADS / BN;           // reduction rows between one thread's B elements

static_assert(BM % TM == 0 && BN % TN == 0, "the block tile must split into thread tiles");
static_assert(TM % 4 == 0, "A fragments are read as float4");
static_assert(THREADS % BK == 0 && (BM * BK) % THREADS == 0, "each thread loads whole A columns");
static_assert(THREADS % BN == 0 && (BK * BN) % THREADS == 0, "each thread loads whole B columns");

// ---- geometry and index helpers -----------------------------------------------------------------
struct ConvShape {
    int N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl;
};
#define CONV_SHAPE_PARAMS int N, int C, int H, int W, int K, int R, int S, int OH, int OW, int sh, int sw, int pt, int pl
#define CONV_SHAPE {N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl}

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

// t / d when d divides t >= 0 exactly, else -1. Stride 1 (the common case) skips the division.
__device__ __forceinline__ int exact_quotient(int t, int d) {
    if (t < 0) return -1;
    if (d == 1) return t;
    const int q = t / d;
    return q * d == t ? q : -1;
}

__device__ __forceinline__ bool inside(int i, int n) { return (unsigned)i < (unsigned)n; }

// ---- the shared GEMM main loop ------------------------------------------------------------------
// acc[i][j] = Σ_q A[row·TM + i][q] · B[q][col + j·THREAD_COLS] over num_tiles steps of BK, where the
// loaders' load() fill a thread's A_LOADS / B_LOADS elements of the current step (zero outside the
// problem) and next() moves them to the following step. Every thread of the block must call it.
template <class ALoader, class BLoader>
__device__ __forceinline__ void implicit_gemm(ALoader& a, BLoader& b, int num_tiles, float (&acc)[TM][TN]) {
    __shared__ __align__(16) float As[2][BK][BM + SMEM_PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + SMEM_PAD];
    const int a_row = threadIdx.x / BK, a_col = threadIdx.x % BK;
    const int b_row = threadIdx.x / BN, b_col = threadIdx.x % BN;
    const int row = threadIdx.x / THREAD_COLS, col = threadIdx.x % THREAD_COLS;

#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    float a_regs[A_LOADS], b_regs[B_LOADS];
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) As[buf][a_col][a_row + i * A_ROW_STEP] = a_regs[i];
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) Bs[buf][b_row + i * B_ROW_STEP][b_col] = b_regs[i];
    };

    a.load(a_regs);
    b.load(b_regs);
    store_tile(0);
    __syncthreads();
    for (int t = 0; t < num_tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < num_tiles;  // uniform across the block
        if (more) {                           // global loads of the next step, in flight during the FMAs
            a.next();
            b.next();
            a.load(a_regs);
            b.load(b_regs);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float af[TM], bf[TN];
#pragma unroll
            for (int i = 0; i < TM; i += 4) {
                const float4 v = *reinterpret_cast<const float4*>(&As[cur][kk][row * TM + i]);
                af[i] = v.x; af[i + 1] = v.y; af[i + 2] = v.z; af[i + 3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < TN; ++j) bf[j] = Bs[cur][kk][col + j * THREAD_COLS];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
        }
        if (more) store_tile(cur ^ 1);  // buffer cur^1 was last read before the previous barrier
        __syncthreads();
    }
}

// The C element a thread's acc[i][j] holds, relative to the block tile's corner.
__device__ __forceinline__ int tile_row(int i) { return (threadIdx.x / THREAD_COLS) * TM + i; }
__device__ __forceinline__ int tile_col(int j) { return threadIdx.x % THREAD_COLS + j * THREAD_COLS; }

// ---- loaders: forward ---------------------------------------------------------------------------
// A[k][q] = w[k][q]: w as the row-major (K, C·R·S) matrix. Thread: rows k0 + tid/BK + i·A_ROW_STEP, column q.
struct FilterRows {
    const float* w;
    int rows, cols, first_row, q;
    __device__ FilterRows(const float* w, int rows, int cols, int row0)
        : w(w), rows(rows), cols(cols), first_row(row0 + threadIdx.x / BK), q(threadIdx.x % BK) {}
    __device__ void load(float (&v)[A_LOADS]) const {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int row = first_row + i * A_ROW_STEP;
            v[i] = (row < rows && q < cols) ? __ldg(w + row * cols + q) : 0.f;
        }
    }
    __device__ void next() { q += BK; }
};

// B[q][p] = x[n, c, oh·sh − pt + r, ow·sw − pl + s] (the im2col matrix), q = (c, r, s), p = (n, oh, ow).
// Thread: column p = p0 + tid%BN (decoded once), rows q = tid/BN + i·B_ROW_STEP stepped by BK.
struct Im2colColumns {
    const float* image;  // x[n] of this thread's output pixel
    int C, H, W, ih0, iw0;
    bool pixel_ok;
    DigitCounter walk;   // q -> (c, r, s)
    Digits q[B_LOADS];
    __device__ Im2colColumns(const float* x, const ConvShape& g, int p0) : C(g.C), H(g.H), W(g.W), walk(g.R, g.S, BK) {
        const int ohw = g.OH * g.OW;
        const int p = p0 + threadIdx.x % BN;
        pixel_ok = p < g.N * ohw;
        const int n = pixel_ok ? p / ohw : 0;
        const int pix = pixel_ok ? p - n * ohw : 0;
        const int oh = pix / g.OW;
        ih0 = oh * g.sh - g.pt;
        iw0 = (pix - oh * g.OW) * g.sw - g.pl;
        image = x + (int64)n * g.C * g.H * g.W;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) q[i] = walk.at(threadIdx.x / BN + i * B_ROW_STEP);
    }
    __device__ void load(float (&v)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int c = q[i].hi, ih = ih0 + q[i].mid, iw = iw0 + q[i].lo;
            v[i] = (pixel_ok && c < C && inside(ih, H) && inside(iw, W)) ? __ldg(image + (c * H + ih) * W + iw) : 0.f;
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) walk.advance(q[i]);
    }
};

// ---- loaders: backward data ---------------------------------------------------------------------
// A[c][q] = w[k, c, r, s], q = (k, r·S + s): w read across its first two axes.
// Thread: rows c0 + tid/BK + i·A_ROW_STEP, column q = (k, rs) stepped by BK.
struct FilterColumns {
    const float* w;
    int C, K, RS, first_c;
    DigitCounter walk;   // q -> (k, 0, rs)
    Digits q;
    __device__ FilterColumns(const float* w, const ConvShape& g, int c0)
        : w(w), C(g.C), K(g.K), RS(g.R * g.S), first_c(c0 + threadIdx.x / BK), walk(1, g.R * g.S, BK) {
        q = walk.at(threadIdx.x % BK);
    }
    __device__ void load(float (&v)[A_LOADS]) const {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int c = first_c + i * A_ROW_STEP;
            v[i] = (c < C && q.hi < K) ? __ldg(w + (q.hi * C + c) * RS + q.lo) : 0.f;
        }
    }
    __device__ void next() { walk.advance(q); }
};

// B[q][p] = dy[n, k, (h + pt − r)/sh, (w + pl − s)/sw], q = (k, r, s), p = (n, h, w); zero unless both
// divisions are exact and inside dy. Thread: column p = p0 + tid%BN, rows q = tid/BN + i·B_ROW_STEP.
struct OutputGradGather {
    const float* image;  // dy[n] of this thread's input pixel
    int K, OH, OW, sh, sw, th0, tw0;
    bool pixel_ok;
    DigitCounter walk;   // q -> (k, r, s)
    Digits q[B_LOADS];
    __device__ OutputGradGather(const float* dy, const ConvShape& g, int p0)
        : K(g.K), OH(g.OH), OW(g.OW), sh(g.sh), sw(g.sw), walk(g.R, g.S, BK) {
        const int hw = g.H * g.W;
        const int p = p0 + threadIdx.x % BN;
        pixel_ok = p < g.N * hw;
        const int n = pixel_ok ? p / hw : 0;
        const int pix = pixel_ok ? p - n * hw : 0;
        const int h = pix / g.W;
        th0 = h + g.pt;
        tw0 = pix - h * g.W + g.pl;
        image = dy + (int64)n * g.K * g.OH * g.OW;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) q[i] = walk.at(threadIdx.x / BN + i * B_ROW_STEP);
    }
    __device__ void load(float (&v)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int k = q[i].hi;
            const int oh = exact_quotient(th0 - q[i].mid, sh), ow = exact_quotient(tw0 - q[i].lo, sw);
            v[i] = (pixel_ok && k < K && inside(oh, OH) && inside(ow, OW)) ? __ldg(image + (k * OH + oh) * OW + ow) : 0.f;
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) walk.advance(q[i]);
    }
};

// ---- loaders: backward filter (the reduction runs over output pixels p in [p_begin, p_end)) --------
// A[k][p] = dy[n, k, oh·OW + ow], p = (n, oh·OW + ow). Thread: rows k0 + tid/BK + i·A_ROW_STEP, column p.
struct OutputGradRows {
    const float* dy;
    int K, OHW, first_k, p, p_end;
    DigitCounter walk;   // p -> (n, 0, pixel)
    Digits d;
    __device__ OutputGradRows(const float* dy, const ConvShape& g, int k0, int p_begin, int p_end)
        : dy(dy), K(g.K), OHW(g.OH * g.OW), first_k(k0 + threadIdx.x / BK), p(p_begin + threadIdx.x % BK),
          p_end(p_end), walk(1, g.OH * g.OW, BK) {
        d = walk.at(p);
    }
    __device__ void load(float (&v)[A_LOADS]) const {
        const float* image = dy + (int64)d.hi * K * OHW + d.lo;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int k = first_k + i * A_ROW_STEP;
            v[i] = (p < p_end && k < K) ? __ldg(image + k * OHW) : 0.f;
        }
    }
    __device__ void next() {
        p += BK;
        walk.advance(d);
    }
};

// B[p][q] = x[n, c, oh·sh − pt + r, ow·sw − pl + s]: the im2col matrix transposed. Thread: column
// q = q0 + tid%BN = (c, r, s) (decoded once), rows p = p_begin + tid/BN + i·B_ROW_STEP stepped by BK.
struct Im2colRows {
    const float* x;
    int C, H, W, sh, sw, c, ih_off, iw_off, p_end;
    bool column_ok;
    DigitCounter walk;   // p -> (n, oh, ow)
    Digits d[B_LOADS];
    int p[B_LOADS];
    __device__ Im2colRows(const float* x, const ConvShape& g, int q0, int p_begin, int p_end)
        : x(x), C(g.C), H(g.H), W(g.W), sh(g.sh), sw(g.sw), p_end(p_end), walk(g.OH, g.OW, BK) {
        const int q = q0 + threadIdx.x % BN;
        column_ok = q < g.C * g.R * g.S;
        const Digits crs = DigitCounter(g.R, g.S, 0).at(column_ok ? q : 0);
        c = crs.hi;
        ih_off = crs.mid - g.pt;
        iw_off = crs.lo - g.pl;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            p[i] = p_begin + threadIdx.x / BN + i * B_ROW_STEP;
            d[i] = walk.at(p[i]);
        }
    }
    __device__ void load(float (&v)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int ih = d[i].mid * sh + ih_off, iw = d[i].lo * sw + iw_off;
            v[i] = (column_ok && p[i] < p_end && inside(ih, H) && inside(iw, W))
                       ? __ldg(x + ((int64)d[i].hi * C + c) * H * W + ih * W + iw) : 0.f;
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            p[i] += BK;
            walk.advance(d[i]);
        }
    }
};

// ---- kernels ------------------------------------------------------------------------------------
// conv2d_fwd_bias_act: y = act(conv(x, w) + b); b may be null (no bias).
// GEMM M = K, N = N·OH·OW, reduction C·R·S. Grid (cdiv(N·OH·OW, BN), cdiv(K, BM)), block THREADS,
// static smem 2·BK·(BM+BN+8)·4 bytes. Thread writes y[n, k, oh, ow] for its TM filters × TN pixels.
// Floor: 2·N·K·OH·OW·C·R·S FLOPs; 4·(N·C·H·W + K·C·R·S + N·K·OH·OW) bytes.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_fwd_bias_act(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ y, CONV_SHAPE_PARAMS, int act, float slope) {
    const ConvShape g = CONV_SHAPE;
    const int k0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    const int ohw = OH * OW, crs = C * R * S;
    FilterRows a(w, K, crs, k0);
    Im2colColumns b(x, g, p0);
    float acc[TM][TN];
    implicit_gemm(a, b, cdiv(crs, BK), acc);

#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int p = p0 + tile_col(j);
        if (p >= N * ohw) continue;
        const int n = p / ohw;
        float* out = y + (int64)n * K * ohw + (p - n * ohw);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int k = k0 + tile_row(i);
            if (k < K) out[k * ohw] = apply_activation(acc[i][j] + (bias ? __ldg(bias + k) : 0.f), act, slope);
        }
    }
}

// conv2d_bwd_data: dx = the gather form above (every dx element written, zero where no window covers it).
// GEMM M = C, N = N·H·W, reduction K·R·S. Grid (cdiv(N·H·W, BN), cdiv(C, BM)), block THREADS, smem as
// forward. Thread writes dx[n, c, h, w] for its TM channels × TN pixels. Strides > 1 mask out all but
// 1/(sh·sw) of the reduction terms (the work is not skipped). Floor: 2·N·K·OH·OW·C·R·S FLOPs;
// 4·(N·K·OH·OW + K·C·R·S + N·C·H·W) bytes.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, CONV_SHAPE_PARAMS) {
    const ConvShape g = CONV_SHAPE;
    const int c0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    const int hw = H * W;
    FilterColumns a(w, g, c0);
    OutputGradGather b(dy, g, p0);
    float acc[TM][TN];
    implicit_gemm(a, b, cdiv(K * R * S, BK), acc);

#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int p = p0 + tile_col(j);
        if (p >= N * hw) continue;
        const int n = p / hw;
        float* out = dx + (int64)n * C * hw + (p - n * hw);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int c = c0 + tile_row(i);
            if (c < C) out[c * hw] = acc[i][j];
        }
    }
}

// conv2d_bwd_filter: partials[z][k][q] = Σ over output pixels p in [z·chunk, min(z·chunk + chunk, N·OH·OW))
// of dy[n,k,p] · im2col(x)[q][p], q = (c, r, s); chunk is a multiple of BK. With gridDim.z == 1,
// partials is dw itself; otherwise conv2d_sum_partials adds the gridDim.z slices in order.
// GEMM M = K, N = C·R·S, reduction over the chunk. Grid (cdiv(C·R·S, BN), cdiv(K, BM), splits), block
// THREADS, smem as forward. Thread writes partials[z][k][q] for its TM filters × TN columns (zeros for an
// empty chunk). Floor: 2·N·K·OH·OW·C·R·S FLOPs; 4·(N·K·OH·OW + N·C·H·W + 2·splits·K·C·R·S) bytes.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_filter(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partials,
                  CONV_SHAPE_PARAMS, int chunk) {
    const ConvShape g = CONV_SHAPE;
    const int k0 = blockIdx.y * BM, q0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int p_begin = blockIdx.z * chunk, p_end = min(p_begin + chunk, N * OH * OW);
    OutputGradRows a(dy, g, k0, p_begin, p_end);
    Im2colRows b(x, g, q0, p_begin, p_end);
    float acc[TM][TN];
    implicit_gemm(a, b, max(cdiv(p_end - p_begin, BK), 0), acc);

    float* out = partials + (int64)blockIdx.z * K * crs;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int k = k0 + tile_row(i);
        if (k >= K) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int q = q0 + tile_col(j);
            if (q < crs) out[k * crs + q] = acc[i][j];
        }
    }
}

#define BIAS_THREADS 256

// conv2d_bwd_bias: partials[z][k] = Σ dy[n, k, pixel] over flat i = n·OHW + pixel in [z·chunk, z·chunk + chunk) ∩ [0, npix).
// Grid (K, splits), block BIAS_THREADS (the launch must use it). Each thread sums a strided subset in
// order, then block_sum's fixed shuffle tree: the same bits every run. Block (k, z) writes
// partials[z·K + k]; with gridDim.y == 1 partials is db itself. Floor: 4·N·K·OH·OW bytes read.
extern "C" __global__ void __launch_bounds__(BIAS_THREADS)
conv2d_bwd_bias(const float* __restrict__ dy, float* __restrict__ partials, int K, int OHW, int npix, int chunk) {
    __shared__ float warp_totals[32];
    const int k = blockIdx.x;
    const int begin = blockIdx.y * chunk, end = min(begin + chunk, npix);
    float sum = 0.f;
    for (int i = begin + threadIdx.x; i < end; i += BIAS_THREADS) {
        const int n = i / OHW;
        sum += __ldg(dy + ((int64)n * K + k) * OHW + (i - n * OHW));
    }
    sum = block_sum(sum, warp_totals);
    if (threadIdx.x == 0) partials[blockIdx.y * K + k] = sum;
}

// conv2d_sum_partials: out[i] = Σ_{z < splits} partials[z·n + i], z in increasing order (the deterministic
// second pass of conv2d_bwd_filter and conv2d_bwd_bias). 1-D grid-stride, any block size.
// Floor: 4·n·(splits + 1) bytes.
extern "C" __global__ void conv2d_sum_partials(const float* __restrict__ partials, float* __restrict__ out, int64 n, int splits) {
    GRID_STRIDE_LOOP(i, n) {
        float sum = 0.f;
        for (int z = 0; z < splits; ++z) sum += partials[z * n + i];
        out[i] = sum;
    }
}
