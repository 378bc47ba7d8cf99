// conv2d.cu: 2-D convolution (cross-correlation), NCHW float32, forward and backward, as implicit GEMMs.
//
//   forward      y[n,k,oh,ow]  = act(b[k] + Σ_{c,r,s} w[k,c,r,s] · x[n, c, oh·sh − pt + r, ow·sw − pl + s])
//   backward dx  dx[n,c,h,w]   = Σ_{k,r,s} w[k,c,r,s] · dy[n, k, (h + pt − r)/sh, (w + pl − s)/sw]
//                               (only the terms where both divisions are exact and land inside dy)
//   backward dw  dw[k,c,r,s]   = Σ_{n,oh,ow} dy[n,k,oh,ow] · x[n, c, oh·sh − pt + r, ow·sw − pl + s]
//   backward db  db[k]         = Σ_{n,oh,ow} dy[n,k,oh,ow]
// x is zero outside its bounds; pt/pl are the top/left pads (bottom/right follow from OH, OW).
// The conv2d_grouped_* kernels compute the same with dilation (tap (r, s) at offset (r·dh, s·dw) in place of (r, s))
// and groups (output channel k of group gi = k / Kg sums over input channels gi·Cg .. gi·Cg + Cg − 1 only, w being
// (K, Cg, R, S)), all groups in one launch; the kernels above are their dh = dw = groups = 1 case, compiled with
// those as constants (DenseConv).
//
// Each of the three convolutions is one GEMM C[M][N] = Σ_q A[m][q] · B[q][n] whose operands are never
// materialised: a pair of "loaders" gathers the A and B tiles straight from the tensors (im2col on the fly)
// and gemm_core.cuh's main loop, the one gemm.cu runs, does the tiled multiply:
//
//   block tile BM × BN of C, reduction in steps of BK; THREADS = (BM/TM)·(BN/TN) threads (256 by default), each
//   owning TM × TN outputs in gemm_core.cuh's thread mapping (float4 fragments, no bank conflict); shared
//   memory As[2][BK][BM+4], Bs[2][BK][BN+4], double-buffered, one barrier a step.
//   A tile loads: thread tid loads A elements (m = tid/BK + i·THREADS/BK, q = tid%BK), stored transposed.
//   B tile loads: chunks of 4 CONSECUTIVE columns of one reduction row (b_chunk_row / b_chunk_col), stored
//   with one float4: the row's reduction index is decoded once per chunk (mixed-radix counters stepped by
//   BK, no division) and only the per-column parts, decoded once per block, differ between its 4 loads.
//   B columns past the GEMM's edge are clamped onto its last column: they only feed outputs the epilogue
//   does not write, and every load they make is in bounds. Reduction rows past the end load zeros.
//   A convolution's whole geometry (strides, padding, the decoding of taps and pixels) is in its two loaders;
//   the main loop and the epilogue (gemm_epilogue.cuh's bias + activation and row-major store, and
//   store_pixel_tile here) know only the GEMM.
//
// Tile sizes are the CONV_* defines, from Python: the default variant's in cnn_gpu/cuda/loader.py's FAMILY_DEFINES
// (cnn_gpu/ops/conv/implicit_gemm.py's DEFAULT_TILE), the other CONV_TILES as -DCONV_BM=...; cnn_gpu/cuda/autotune.py picks one
// per kernel and shape.
// Indices inside one image are 32-bit, image offsets 64-bit: one ZERO-PADDED image of x
// (C·(H+pt+pb)·(W+pl+pr)), one image of y, w and the GEMM extents must fit in 32 bits (a gather's offset
// (c·H + r)·W + s is bounded by the padded image, since R ≤ H+pt+pb and S ≤ W+pl+pr).
// No float atomics: dw and db are reduced in per-block partials and summed in a fixed order by
// sum_splits_bias_act (sum_splits.cuh), so backward is bit-reproducible.
#include "conv2d_indexing.cuh"
#include "gemm_epilogue.cuh"
#include "sum_splits.cuh"

#if !defined(CONV_BM) || !defined(CONV_BN) || !defined(CONV_BK) || !defined(CONV_TM) || !defined(CONV_TN) || !defined(BIAS_THREADS)
#error "the tile sizes and BIAS_THREADS come from cnn_gpu/cuda/loader.py (FAMILY_DEFINES, a variant's defines)"
#endif

using Tile = BlockTile<CONV_BM, CONV_BN, CONV_BK, CONV_TM, CONV_TN>;
constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
constexpr int THREADS = Tile::THREADS, SMEM_PAD = Tile::SMEM_PAD;
constexpr int A_LOADS = BM * BK / THREADS;         // A-tile elements each thread loads per step
constexpr int A_ROW_STEP = THREADS / BK;           // rows between one thread's A elements
constexpr int B_CHUNKS_PER_ROW = BN / 4;           // float4 chunks in one reduction row of the B tile
constexpr int B_CHUNKS = BK * BN / 4 / THREADS;    // B-tile chunks each thread loads per step
constexpr int B_ROW_STEP = THREADS / B_CHUNKS_PER_ROW;  // reduction rows between one thread's B chunks

static_assert(THREADS % BK == 0 && (BM * BK) % THREADS == 0, "each thread loads whole A columns");
static_assert(THREADS % B_CHUNKS_PER_ROW == 0 && B_CHUNKS * THREADS * 4 == BK * BN,
              "each thread loads the same number of whole B chunks, all in the same 4 columns");

// ---- geometry and index helpers -----------------------------------------------------------------
struct ConvShape {
    int N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl;
};
#define CONV_SHAPE_PARAMS int N, int C, int H, int W, int K, int R, int S, int OH, int OW, int sh, int sw, int pt, int pl
#define CONV_SHAPE {N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl}

// What a convolution has beyond ConvShape: dilation (dh, dw) and groups. The gathering loaders are templates on
// it. DenseConv holds compile-time 1s, so the kernels that take it (conv2d_fwd_bias_act, conv2d_bwd_data,
// conv2d_bwd_filter) compile as if dilation and groups did not exist; GroupedConv holds them at run time (the
// conv2d_grouped_* kernels). A loader sees one group's convolution: ConvShape's C and K are the group's Cg and
// Kg and its tensors start at the group's first channel; `groups` only widens the image strides, which span
// every group's channels (x: groups·Cg·H·W, y and dy: groups·Kg·OH·OW). Tap (r, s) sits at (r·dh, s·dw).
struct DenseConv {
    static constexpr int dh = 1, dw = 1, groups = 1;
};
struct GroupedConv {
    int dh, dw, groups;
};

// The B-tile chunks a thread loads each step: chunk i is reduction row b_chunk_row(i), columns
// b_chunk_col() .. +3 (the same 4 columns for all of a thread's chunks).
__device__ __forceinline__ int b_chunk_row(int i) { return threadIdx.x / B_CHUNKS_PER_ROW + i * B_ROW_STEP; }
__device__ __forceinline__ int b_chunk_col() { return 4 * (threadIdx.x % B_CHUNKS_PER_ROW); }

// ---- the loaders in gemm_core.cuh's main loop -------------------------------------------------------
// Each loader below computes this thread's values of the current step (load) and moves to the next (next),
// checking its own bounds. StagedA / StagedB present a loader and the registers that hold its values to the
// main loop, and store those values to shared memory.
// A: A_LOADS elements of column tid % BK, rows tid / BK + i·A_ROW_STEP, stored transposed (16 threads of a
// warp store 16 k-rows of one column: a 2-way bank conflict at most).
template <class Loader>
struct StagedA {
    static constexpr bool CHECKS_OWN_BOUNDS = true;
    Loader& loader;
    float (&staged)[A_LOADS];
    template <bool INTERIOR>
    __device__ __forceinline__ void load_first(int) { loader.load(staged); }
    template <bool INTERIOR>
    __device__ __forceinline__ void load_next(int) {
        loader.next();
        loader.load(staged);
    }
    __device__ __forceinline__ void store(float (*tile)[BM + SMEM_PAD]) const {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) tile[threadIdx.x % BK][threadIdx.x / BK + i * A_ROW_STEP] = staged[i];
    }
};

// B: B_CHUNKS chunks of 4 columns, each stored with one float4 (a quarter-warp stores 8 consecutive chunks of
// one row, 128 contiguous bytes).
template <class Loader>
struct StagedB {
    static constexpr bool CHECKS_OWN_BOUNDS = true;
    Loader& loader;
    float4 (&staged)[B_CHUNKS];
    template <bool INTERIOR>
    __device__ __forceinline__ void load_first(int) { loader.load(staged); }
    template <bool INTERIOR>
    __device__ __forceinline__ void load_next(int) {
        loader.next();
        loader.load(staged);
    }
    __device__ __forceinline__ void store(float (*tile)[BN + SMEM_PAD]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) store_float4(&tile[b_chunk_row(i)][b_chunk_col()], staged[i]);
    }
};

// acc = Σ_q A[row(i)][q] · B[q][col(j)] over the k_len reduction values from the loaders' start (zero when
// k_len <= 0). Every thread of the block must call it.
template <class ALoader, class BLoader>
__device__ __forceinline__ void implicit_gemm(ALoader& a, BLoader& b, int k_len, float (&acc)[TM][TN]) {
    __shared__ __align__(16) float As[2][BK][BM + SMEM_PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + SMEM_PAD];
    zero_accumulators(acc);
    float a_regs[A_LOADS];
    float4 b_regs[B_CHUNKS];
    StagedA<ALoader> staged_a{a, a_regs};
    StagedB<BLoader> staged_b{b, b_regs};
    gemm_mainloop<Tile, /*INTERIOR=*/false>(staged_a, staged_b, As, Bs, k_len, acc);
}

// ---- epilogue: NCHW stores (bias + activation and row-major stores are gemm_epilogue.cuh's) -----------
// out[n][m][pixel] = acc (an NCHW tensor of `channels` channels and PIX pixels an image, of which rows m < M are
// written: M == channels, or one group's M channels of a grouped convolution, out starting at the group's first)
// for the block's C rows m = t.row(m0, i) < M and columns p = n·PIX + pixel = t.col(p0, j) < N·PIX. A thread's 4
// consecutive columns are 4 consecutive pixels (p0 and 4·tx are multiples of 4): one float4 store when
// PIX % 4 == 0 (then they are in one image and 16-byte aligned), else up to 4 scalar stores that may cross into
// the next images. A warp's 8 tx store 32 consecutive pixels of one channel.
__device__ __forceinline__ void store_pixel_tile(float* __restrict__ out, const float (&acc)[TM][TN], const Tile::Thread& t,
                                                 int m0, int p0, int M, int channels, int N, int PIX) {
    const int npix = N * PIX;
    const bool vec = PIX % 4 == 0 && aligned16(out);
#pragma unroll
    for (int g = 0; g < TN / 4; ++g) {
        const int p = t.col4(p0, g);
        if (p >= npix) continue;
        int n = p / PIX, pixel = p - n * PIX;
        if (vec) {
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const int m = t.row(m0, i);
                if (m < M)
                    store_float4(out + ((int64)n * channels + m) * PIX + pixel,
                                 make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]));
            }
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (p + j < npix) {
#pragma unroll
                    for (int i = 0; i < TM; ++i) {
                        const int m = t.row(m0, i);
                        if (m < M) out[((int64)n * channels + m) * PIX + pixel] = acc[i][4 * g + j];
                    }
                }
                if (++pixel == PIX) {  // the next column is the next image's first pixel
                    pixel = 0;
                    ++n;
                }
            }
        }
    }
}

// ---- loaders: forward ---------------------------------------------------------------------------
// A[k][q] = w[k][q]: w as the row-major (K, C·R·S) matrix, from column q_begin. Thread: rows
// k0 + tid/BK + i·A_ROW_STEP, column q (16 consecutive threads read 16 consecutive q of one row); one pointer
// walks the first row, the others are fixed offsets from it.
struct FilterRows {
    const float* first;  // &w[first_row][q]
    int cols, q, rows_left;  // rows_left: rows from first_row to the end of w
    __device__ FilterRows(const float* w, int rows, int cols, int row0, int q_begin)
        : first(w + (int64)(row0 + threadIdx.x / BK) * cols + q_begin + threadIdx.x % BK), cols(cols),
          q(q_begin + threadIdx.x % BK), rows_left(rows - row0 - threadIdx.x / BK) {}
    __device__ void load(float (&v)[A_LOADS]) const {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            v[i] = (i * A_ROW_STEP < rows_left && q < cols) ? __ldg(first + i * A_ROW_STEP * cols) : 0.f;
    }
    __device__ void next() {
        q += BK;
        first += BK;
    }
};

// B[q][p] = x[n, c, oh·sh − pt + r·dh, ow·sw − pl + s·dw] (the im2col matrix), q = (c, r, s), p = (n, oh, ow).
// Thread: columns p0 + b_chunk_col() + j, j < 4 (each pixel's window corner decoded once), rows
// q = q_begin + b_chunk_row(i) stepped by BK; a chunk's (c, r, s) and its offset (c·H + r·dh)·W + s·dw serve its
// 4 pixels.
template <class Geo>
struct Im2colColumns {
    Address corner[4];       // &x[n, 0, ih0, iw0] (as if x were unbounded): x[n, c, ih0 + i, iw0 + j] = corner[(c·H + i)·W + j]
    int ih0[4], iw0[4];      // oh·sh − pt, ow·sw − pl of each column's pixel
    int C, H, W;
    DigitCounter walk;       // q -> (c, r, s)
    Digits q[B_CHUNKS];
    Geo geo;
    __device__ Im2colColumns(const float* x, const ConvShape& g, const Geo& geo, int p0, int q_begin)
        : C(g.C), H(g.H), W(g.W), walk(g.R, g.S, BK), geo(geo) {
        const int npix = g.N * g.OH * g.OW;
        const DigitCounter pixels(g.OH, g.OW, 1);  // p -> (n, oh, ow), stepped one pixel at a time
        const int p = p0 + b_chunk_col();
        Digits d = pixels.at(min(p, npix - 1));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            ih0[j] = d.mid * g.sh - g.pt;
            iw0[j] = d.lo * g.sw - g.pl;
            corner[j] = address_of(x + (int64)d.hi * (geo.groups * g.C) * g.H * g.W + (int64)ih0[j] * g.W + iw0[j]);
            if (p + j + 1 < npix) pixels.advance(d);  // else the next columns repeat the last pixel
        }
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) q[i] = walk.at(q_begin + b_chunk_row(i));
    }
    __device__ void load(float4 (&v)[B_CHUNKS]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            const int r = q[i].mid * geo.dh, s = q[i].lo * geo.dw;  // the tap's row and column offsets
            const bool row_ok = q[i].hi < C;
            const int offset = (q[i].hi * H + r) * W + s;
            float e[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                e[j] = (row_ok && inside(ih0[j] + r, H) && inside(iw0[j] + s, W)) ? gather(corner[j], offset) : 0.f;
            v[i] = make_float4(e[0], e[1], e[2], e[3]);
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) walk.advance(q[i]);
    }
};

// ---- loaders: backward data ---------------------------------------------------------------------
// A[c][q] = w[k, c, r, s], q = (k, r·S + s): w read across its first two axes.
// Thread: rows c0 + tid/BK + i·A_ROW_STEP, column q = (k, rs) stepped by BK.
struct FilterColumns {
    Address first;       // &w[0, c0 + tid/BK, 0, 0]
    int K, CRS, RS, c_left;  // c_left: channels from the thread's first to the end of w
    DigitCounter walk;   // q -> (k, 0, rs)
    Digits q;
    __device__ FilterColumns(const float* w, const ConvShape& g, int c0)
        : first(address_of(w + (int64)(c0 + threadIdx.x / BK) * g.R * g.S)), K(g.K), CRS(g.C * g.R * g.S),
          RS(g.R * g.S), c_left(g.C - c0 - threadIdx.x / BK), walk(1, g.R * g.S, BK) {
        q = walk.at(threadIdx.x % BK);
    }
    __device__ void load(float (&v)[A_LOADS]) const {
        const Address column = first + (int64)(q.hi * CRS + q.lo) * 4;  // &w[k, first c, rs]
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            v[i] = (i * A_ROW_STEP < c_left && q.hi < K) ? gather(column, i * A_ROW_STEP * RS) : 0.f;
    }
    __device__ void next() { walk.advance(q); }
};

// B[q][p] = dy[n, k, (h + pt − r·dh)/sh, (w + pl − s·dw)/sw], q = (k, r, s), p = (n, h, w); zero unless both
// divisions are exact and inside dy. Thread: columns p0 + b_chunk_col() + j, j < 4, rows q = b_chunk_row(i)
// stepped by BK. Without a division per element: write h + pt = a·sh + ra and r·dh = rq·sh + rr (0 <= ra, rr < sh);
// then h + pt − r·dh = (a − rq)·sh + (ra − rr) with |ra − rr| < sh, so the division is exact iff rr == ra, and
// its quotient is a − rq (negative, so outside dy, exactly when h + pt − r·dh < 0). Likewise along w. A
// column's (a, ra) are decoded once; a chunk's (rq, rr) once per step, shared by its 4 pixels.
template <class Geo>
struct OutputGradGather {
    Address corner[4];       // &dy[n, 0, a, b] (as if dy were unbounded) of each column's pixel
    int oh_max[4], ow_max[4];  // a, b: tap (r, s) reads dy row a − rq, column b − sq
    int phase[4];            // ra·sw + rb: tap (r, s) is exact iff rr·sw + sr equals it
    int K, OH, OW, sh, sw;
    DigitCounter walk;       // q -> (k, r, s)
    Digits q[B_CHUNKS];
    Geo geo;
    __device__ OutputGradGather(const float* dy, const ConvShape& g, const Geo& geo, int p0)
        : K(g.K), OH(g.OH), OW(g.OW), sh(g.sh), sw(g.sw), walk(g.R, g.S, BK), geo(geo) {
        const int npix = g.N * g.H * g.W;
        const DigitCounter pixels(g.H, g.W, 1);  // p -> (n, h, w), stepped one pixel at a time
        const int p = p0 + b_chunk_col();
        Digits d = pixels.at(min(p, npix - 1));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int ra, rb;
            divide(d.mid + g.pt, g.sh, oh_max[j], ra);
            divide(d.lo + g.pl, g.sw, ow_max[j], rb);
            phase[j] = ra * g.sw + rb;
            corner[j] = address_of(dy + (int64)d.hi * (geo.groups * g.K) * g.OH * g.OW + (int64)oh_max[j] * g.OW + ow_max[j]);
            if (p + j + 1 < npix) pixels.advance(d);  // else the next columns repeat the last pixel
        }
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) q[i] = walk.at(b_chunk_row(i));
    }
    __device__ void load(float4 (&v)[B_CHUNKS]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            int rq, rr, sq, sr;
            divide(q[i].mid * geo.dh, sh, rq, rr);
            divide(q[i].lo * geo.dw, sw, sq, sr);
            const bool row_ok = q[i].hi < K;
            const int tap_phase = rr * sw + sr;
            const int offset = (q[i].hi * OH - rq) * OW - sq;
            float e[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                e[j] = (row_ok && tap_phase == phase[j] && inside(oh_max[j] - rq, OH) && inside(ow_max[j] - sq, OW))
                           ? gather(corner[j], offset) : 0.f;
            v[i] = make_float4(e[0], e[1], e[2], e[3]);
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) walk.advance(q[i]);
    }
};

// ---- loaders: backward filter (the reduction runs over output pixels p in [p_begin, p_end)) --------
// A[k][p] = dy[n, k, oh·OW + ow], p = (n, oh·OW + ow). Thread: rows k0 + tid/BK + i·A_ROW_STEP, column p.
// (Kept per element: 16 consecutive threads read 16 consecutive p of one dy row, and the row's image
// pointer is decoded once a step, so an element costs one address add; 4-p chunks would need a scalar
// path for images whose OH·OW is not a multiple of 4.)
template <class Geo>
struct OutputGradRows {
    Address first;       // &dy[0, k0 + tid/BK, 0]
    int64 image_size;    // groups·K·OH·OW
    int OHW, k_left, p, p_end;  // k_left: filters from the thread's first to the end of dy (of its group)
    DigitCounter walk;   // p -> (n, 0, pixel)
    Digits d;
    __device__ OutputGradRows(const float* dy, const ConvShape& g, const Geo& geo, int k0, int p_begin, int p_end)
        : first(address_of(dy + (int64)(k0 + threadIdx.x / BK) * g.OH * g.OW)),
          image_size((int64)(geo.groups * g.K) * g.OH * g.OW),
          OHW(g.OH * g.OW), k_left(g.K - k0 - threadIdx.x / BK), p(p_begin + threadIdx.x % BK), p_end(p_end),
          walk(1, g.OH * g.OW, BK) {
        d = walk.at(p);
    }
    __device__ void load(float (&v)[A_LOADS]) const {
        const Address column = first + (d.hi * image_size + d.lo) * 4;  // &dy[n, first k, pixel]
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            v[i] = (p < p_end && i * A_ROW_STEP < k_left) ? gather(column, i * A_ROW_STEP * OHW) : 0.f;
    }
    __device__ void next() {
        p += BK;
        walk.advance(d);
    }
};

// B[p][q] = x[n, c, oh·sh − pt + r·dh, ow·sw − pl + s·dw]: the im2col matrix transposed. Thread: columns
// q = q0 + b_chunk_col() + j = (c, r, s), j < 4 (decoded once), rows p = p_begin + b_chunk_row(i) stepped
// by BK; a chunk's pixel (n, oh, ow) and its window corner serve its 4 columns.
template <class Geo>
struct Im2colRows {
    const float* x;
    int tap_r[4], tap_s[4], tap_offset[4];  // r·dh, s·dw and (c·H + r·dh)·W + s·dw of each column
    int64 image_size;                       // groups·C·H·W
    int H, W, sh, sw, pt, pl, p_end;
    DigitCounter walk;   // p -> (n, oh, ow)
    Digits d[B_CHUNKS];
    int p[B_CHUNKS];
    __device__ Im2colRows(const float* x, const ConvShape& g, const Geo& geo, int q0, int p_begin, int p_end)
        : x(x), image_size((int64)(geo.groups * g.C) * g.H * g.W), H(g.H), W(g.W), sh(g.sh), sw(g.sw), pt(g.pt), pl(g.pl),
          p_end(p_end), walk(g.OH, g.OW, BK) {
        const int crs = g.C * g.R * g.S;
        const DigitCounter taps(g.R, g.S, 0);   // q -> (c, r, s)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const Digits t = taps.at(min(q0 + b_chunk_col() + j, crs - 1));
            tap_r[j] = t.mid * geo.dh;
            tap_s[j] = t.lo * geo.dw;
            tap_offset[j] = (t.hi * g.H + tap_r[j]) * g.W + tap_s[j];
        }
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            p[i] = p_begin + b_chunk_row(i);
            d[i] = walk.at(p[i]);
        }
    }
    __device__ void load(float4 (&v)[B_CHUNKS]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            const int ih = d[i].mid * sh - pt, iw = d[i].lo * sw - pl;
            const bool row_ok = p[i] < p_end;
            const Address corner = address_of(x + d[i].hi * image_size + (ih * W + iw));  // as if x were unbounded
            float e[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                e[j] = (row_ok && inside(ih + tap_r[j], H) && inside(iw + tap_s[j], W)) ? gather(corner, tap_offset[j]) : 0.f;
            v[i] = make_float4(e[0], e[1], e[2], e[3]);
        }
    }
    __device__ void next() {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            p[i] += BK;
            walk.advance(d[i]);
        }
    }
};

// ---- kernels ------------------------------------------------------------------------------------
// conv2d_fwd_bias_act: y = act(conv(x, w) + b); b may be null (no bias).
// GEMM M = K, N = N·OH·OW, reduction C·R·S. Grid (cdiv(N·OH·OW, BN), cdiv(K, BM), splits), block THREADS,
// static smem 2·BK·(BM+BN+8)·4 bytes. Thread writes y[n, k, oh, ow] for its TM filters × TN pixels
// (store_pixel_tile). Floor: 2·N·K·OH·OW·C·R·S FLOPs; 4·(N·C·H·W + K·C·R·S + N·K·OH·OW) bytes.
// Split reduction (for layers whose output tiles cannot fill the GPU): block z sums only q in
// [z·chunk, min(z·chunk + chunk, C·R·S)) (chunk a multiple of BK, no split empty) and, when gridDim.z > 1,
// writes that partial sum with no epilogue to out + z·N·K·OH·OW; sum_splits_bias_act then adds the
// splits in order and applies bias and act. With gridDim.z == 1 (chunk >= C·R·S) out is y.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_fwd_bias_act(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ out, CONV_SHAPE_PARAMS, int act, float slope, int chunk) {
    const ConvShape g = CONV_SHAPE;
    const int k0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int q_begin = blockIdx.z * chunk;
    FilterRows a(w, K, crs, k0, q_begin);
    Im2colColumns<DenseConv> b(x, g, DenseConv(), p0, q_begin);
    float acc[TM][TN];
    implicit_gemm(a, b, min(chunk, crs - q_begin), acc);
    if (gridDim.z > 1) {
        store_pixel_tile(out + (int64)blockIdx.z * N * K * OH * OW, acc, Tile::thread(), k0, p0, K, K, N, OH * OW);
        return;
    }

    const Tile::Thread t = Tile::thread();
    const auto filter_bias = [&](int i) {  // no bias where bias is null or the row is past K
        const int k = t.row(k0, i);
        return bias != nullptr && k < K ? __ldg(bias + k) : 0.f;
    };
    bias_act</*ALONG_ROWS=*/true>(acc, filter_bias, act, slope);
    store_pixel_tile(out, acc, t, k0, p0, K, K, N, OH * OW);
}

// conv2d_bwd_data: dx = the gather form above (every dx element written, zero where no window covers it).
// GEMM M = C, N = N·H·W, reduction K·R·S. Grid (cdiv(N·H·W, BN), cdiv(C, BM)), block THREADS, smem as
// forward. Thread writes dx[n, c, h, w] for its TM channels × TN pixels (store_pixel_tile). Strides > 1
// mask out all but 1/(sh·sw) of the reduction terms (the work is not skipped). Floor: 2·N·K·OH·OW·C·R·S
// FLOPs; 4·(N·K·OH·OW + K·C·R·S + N·C·H·W) bytes.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, CONV_SHAPE_PARAMS) {
    const ConvShape g = CONV_SHAPE;
    const int c0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    FilterColumns a(w, g, c0);
    OutputGradGather<DenseConv> b(dy, g, DenseConv(), p0);
    float acc[TM][TN];
    implicit_gemm(a, b, K * R * S, acc);
    store_pixel_tile(dx, acc, Tile::thread(), c0, p0, C, C, N, H * W);
}

// conv2d_bwd_filter: partials[z][k][q] = Σ over output pixels p in [z·chunk, min(z·chunk + chunk, N·OH·OW))
// of dy[n,k,p] · im2col(x)[q][p], q = (c, r, s); chunk is a multiple of BK. With gridDim.z == 1,
// partials is dw itself; otherwise sum_splits_bias_act adds the gridDim.z slices in order.
// GEMM M = K, N = C·R·S, reduction over the chunk. Grid (cdiv(C·R·S, BN), cdiv(K, BM), splits), block
// THREADS, smem as forward. Thread writes partials[z][k][q] for its TM filters × TN columns (zeros for an
// empty chunk). Floor: 2·N·K·OH·OW·C·R·S FLOPs; 4·(N·K·OH·OW + N·C·H·W + 2·splits·K·C·R·S) bytes.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_filter(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partials,
                  CONV_SHAPE_PARAMS, int chunk) {
    const ConvShape g = CONV_SHAPE;
    const int k0 = blockIdx.y * BM, q0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int p_begin = blockIdx.z * chunk, p_end = p_begin + min(chunk, N * OH * OW - p_begin);  // no int overflow
    OutputGradRows<DenseConv> a(dy, g, DenseConv(), k0, p_begin, p_end);
    Im2colRows<DenseConv> b(x, g, DenseConv(), q0, p_begin, p_end);
    float acc[TM][TN];
    implicit_gemm(a, b, p_end - p_begin, acc);
    store_row_major<Tile>(partials, acc, Tile::thread(), k0, q0, K, crs, crs % 4 == 0 && aligned16(partials));
}

// ---- grouped and dilated kernels: the three above with GroupedConv, one launch over all groups --------
// Arguments as above plus (dh, dw, groups), ConvShape's C and K being one group's Cg = C/groups and Kg = K/groups
// (H, W, OH, OW, strides and pads as usual; OH and OW follow from the dilated window extent (R − 1)·dh + 1).
// Group gi reads x's channels gi·Cg.., w's filters gi·Kg.. (w is (K, Cg, R, S)) and dy's / writes y's channels
// gi·Kg..; each of its blocks runs the group's own GEMM with the loaders above. Grid z enumerates
// (split, group) as z = split·groups + gi. Floors: the dense ones with C·R·S → Cg·R·S per output
// (2·N·K·OH·OW·Cg·R·S FLOPs); the bytes as dense (x, w, y once each), backward-filter's partials
// 2·splits·K·Cg·R·S.

// conv2d_grouped_fwd_bias_act: y = act(conv(x, w, dilation, groups) + b); b may be null.
// GEMM per group M = Kg, N = N·OH·OW, reduction Cg·R·S. Grid (cdiv(N·OH·OW, BN), cdiv(Kg, BM), splits·groups).
// With splits = gridDim.z / groups > 1, split z/groups sums q in [split·chunk, +chunk) and writes its partial
// sum, no epilogue, into out + split·N·K·OH·OW (an NCHW tensor like y), which sum_splits_bias_act adds.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_grouped_fwd_bias_act(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                            float* __restrict__ out, CONV_SHAPE_PARAMS, int dh, int dw, int groups, int act, float slope,
                            int chunk) {
    const ConvShape g = CONV_SHAPE;
    const GroupedConv geo{dh, dw, groups};
    const int group = blockIdx.z % groups, split = blockIdx.z / groups;
    const int k0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int q_begin = split * chunk;
    FilterRows a(w + (int64)group * K * crs, K, crs, k0, q_begin);
    Im2colColumns<GroupedConv> b(x + (int64)group * C * H * W, g, geo, p0, q_begin);
    float acc[TM][TN];
    implicit_gemm(a, b, min(chunk, crs - q_begin), acc);
    const int64 first_channel = (int64)group * K * OH * OW;  // the group's first output channel in an image
    if (gridDim.z > (unsigned)groups) {
        store_pixel_tile(out + (int64)split * N * groups * K * OH * OW + first_channel, acc, Tile::thread(), k0, p0, K,
                         groups * K, N, OH * OW);
        return;
    }

    const Tile::Thread t = Tile::thread();
    const auto filter_bias = [&](int i) {  // no bias where bias is null or the row is past the group's Kg
        const int k = t.row(k0, i);
        return bias != nullptr && k < K ? __ldg(bias + group * K + k) : 0.f;
    };
    bias_act</*ALONG_ROWS=*/true>(acc, filter_bias, act, slope);
    store_pixel_tile(out + first_channel, acc, t, k0, p0, K, groups * K, N, OH * OW);
}

// conv2d_grouped_bwd_data: dx of the grouped, dilated convolution (every element written).
// GEMM per group M = Cg, N = N·H·W, reduction Kg·R·S. Grid (cdiv(N·H·W, BN), cdiv(Cg, BM), groups).
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_grouped_bwd_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                        CONV_SHAPE_PARAMS, int dh, int dw, int groups) {
    const ConvShape g = CONV_SHAPE;
    const GroupedConv geo{dh, dw, groups};
    const int group = blockIdx.z;
    const int c0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    FilterColumns a(w + (int64)group * K * C * R * S, g, c0);
    OutputGradGather<GroupedConv> b(dy + (int64)group * K * OH * OW, g, geo, p0);
    float acc[TM][TN];
    implicit_gemm(a, b, K * R * S, acc);
    store_pixel_tile(dx + (int64)group * C * H * W, acc, Tile::thread(), c0, p0, C, groups * C, N, H * W);
}

// conv2d_grouped_bwd_filter: partials[split][k][q] = Σ over output pixels p in [split·chunk, +chunk) of
// dy[n,k,p] · im2col(x)[q][p], q = (c', r, s) over the group's Cg·R·S; partials is dw itself when
// gridDim.z == groups. GEMM per group M = Kg, N = Cg·R·S. Grid (cdiv(Cg·R·S, BN), cdiv(Kg, BM), splits·groups).
// store_row_major puts block z's Kg × Cg·R·S tile at z·Kg·Cg·R·S = split·K·Cg·R·S + gi·Kg·Cg·R·S: group gi's
// rows of split's slice, the [splits][K][Cg·R·S] layout sum_splits_bias_act adds.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_grouped_bwd_filter(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partials,
                          CONV_SHAPE_PARAMS, int dh, int dw, int groups, int chunk) {
    const ConvShape g = CONV_SHAPE;
    const GroupedConv geo{dh, dw, groups};
    const int group = blockIdx.z % groups, split = blockIdx.z / groups;
    const int k0 = blockIdx.y * BM, q0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int p_begin = split * chunk, p_end = p_begin + min(chunk, N * OH * OW - p_begin);  // no int overflow
    OutputGradRows<GroupedConv> a(dy + (int64)group * K * OH * OW, g, geo, k0, p_begin, p_end);
    Im2colRows<GroupedConv> b(x + (int64)group * C * H * W, g, geo, q0, p_begin, p_end);
    float acc[TM][TN];
    implicit_gemm(a, b, p_end - p_begin, acc);
    store_row_major<Tile>(partials, acc, Tile::thread(), k0, q0, K, crs, crs % 4 == 0 && aligned16(partials));
}

// conv2d_bwd_bias: partials[z][k] = Σ dy[n, k, pixel] over flat i = n·OHW + pixel in [z·chunk, z·chunk + chunk) ∩ [0, npix).
// Grid (K, splits), block BIAS_THREADS (a define from cnn_gpu/cuda/loader.py; the launch uses the same). Each thread sums a strided subset in
// order, then block_sum's fixed shuffle tree: the same bits every run. Block (k, z) writes
// partials[z·K + k]; with gridDim.y == 1 partials is db itself. Floor: 4·N·K·OH·OW bytes read.
extern "C" __global__ void __launch_bounds__(BIAS_THREADS)
conv2d_bwd_bias(const float* __restrict__ dy, float* __restrict__ partials, int K, int OHW, int npix, int chunk) {
    __shared__ float warp_totals[32];
    const int k = blockIdx.x;
    const int begin = blockIdx.y * chunk, end = begin + min(chunk, npix - begin);  // begin + chunk may pass 2^31
    float sum = 0.f;
    // unsigned: i + BIAS_THREADS stays below 2^32 (end < 2^31), where an int would overflow near 2^31
    for (uint32 i = begin + threadIdx.x; i < (uint32)end; i += BIAS_THREADS) {
        const int n = (int)i / OHW;
        sum += __ldg(dy + ((int64)n * K + k) * OHW + ((int)i - n * OHW));
    }
    sum = block_sum(sum, warp_totals);
    if (threadIdx.x == 0) partials[blockIdx.y * K + k] = sum;
}
