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
//   shared memory As[2][BK][BM+4], Bs[2][BK][BN+4] (k-major; double-buffered: tile t+1 is loaded from
//   global memory into registers while tile t is multiplied, then stored to the other buffer; one barrier
//   a step). Rows of BM+4 / BN+4 floats keep every float4 of them 16-byte aligned.
//   Thread mapping as gemm.cu: a warp is 8 (n) × 4 (m) threads; thread (tx, ty) owns TM×TN outputs as
//   (TM/4)×(TN/4) 4×4 blocks, rows q·4·THREADS_Y + 4·ty + i and columns q·4·THREADS_X + 4·tx + j, so both
//   fragments are float4 reads (per k, TM/4 + TN/4 LDS.128 for TM·TN FMAs; a warp's 8 tx read 128
//   consecutive bytes of Bs, its 4 ty 4 float4 of As: no bank conflict).
//   A tile loads: thread tid loads A elements (m = tid/BK + i·THREADS/BK, q = tid%BK), stored transposed.
//   B tile loads: chunks of 4 CONSECUTIVE columns of one reduction row (b_chunk_row / b_chunk_col), stored
//   with one float4: the row's reduction index is decoded once per chunk (mixed-radix counters stepped by
//   BK, no division) and only the per-column parts, decoded once per block, differ between its 4 loads.
//   B columns past the GEMM's edge are clamped onto its last column: they only feed outputs the epilogue
//   does not write, and every load they make is in bounds. Reduction rows past the end load zeros.
//
// Tile sizes are the CONV_* defines below (cnn_gpu/ops/conv.py's DEFAULT_TILE; its other CONV_TILES are
// compiled with -DCONV_BM=... and cnn_gpu/cuda/autotune.py picks one per kernel and shape).
// Indices inside one image are 32-bit, image offsets 64-bit: one ZERO-PADDED image of x
// (C·(H+pt+pb)·(W+pl+pr)), one image of y, w and the GEMM extents must fit in 32 bits (a gather's offset
// (c·H + r)·W + s is bounded by the padded image, since R ≤ H+pt+pb and S ≤ W+pl+pr).
// No float atomics: dw and db are reduced in per-block partials and summed in a fixed order by
// conv2d_sum_partials, so backward is bit-reproducible.
#include "conv2d_indexing.cuh"

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
constexpr int THREADS_X = BN / TN;                 // threads along n (a row of the block tile)
constexpr int THREADS_Y = BM / TM;                 // threads along m
constexpr int THREADS = THREADS_X * THREADS_Y;
constexpr int SMEM_PAD = 4;                        // breaks the power-of-two row stride, keeps float4 alignment
constexpr int A_LOADS = BM * BK / THREADS;         // A-tile elements each thread loads per step
constexpr int A_ROW_STEP = THREADS / BK;           // rows between one thread's A elements
constexpr int B_CHUNKS_PER_ROW = BN / 4;           // float4 chunks in one reduction row of the B tile
constexpr int B_CHUNKS = BK * BN / 4 / THREADS;    // B-tile chunks each thread loads per step
constexpr int B_ROW_STEP = THREADS / B_CHUNKS_PER_ROW;  // reduction rows between one thread's B chunks

static_assert(TM % 4 == 0 && TN % 4 == 0, "a thread's outputs are 4x4 blocks (float4 fragments)");
static_assert(BM % TM == 0 && BN % TN == 0, "the block tile must split into thread tiles");
static_assert(THREADS_X % 8 == 0 && THREADS_Y % 4 == 0, "warps are 8 (n) x 4 (m) threads");
static_assert(THREADS % BK == 0 && (BM * BK) % THREADS == 0, "each thread loads whole A columns");
static_assert(THREADS % B_CHUNKS_PER_ROW == 0 && B_CHUNKS * THREADS * 4 == BK * BN,
              "each thread loads the same number of whole B chunks, all in the same 4 columns");

// ---- geometry and index helpers -----------------------------------------------------------------
struct ConvShape {
    int N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl;
};
#define CONV_SHAPE_PARAMS int N, int C, int H, int W, int K, int R, int S, int OH, int OW, int sh, int sw, int pt, int pl
#define CONV_SHAPE {N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl}

// This thread's coordinates in the block tile (gemm.cu's mapping): a warp is 8 (tx) × 4 (ty) threads.
__device__ __forceinline__ int thread_x() { return (threadIdx.x / 32 % (THREADS_X / 8)) * 8 + threadIdx.x % 8; }
__device__ __forceinline__ int thread_y() { return (threadIdx.x / 32 / (THREADS_X / 8)) * 4 + threadIdx.x % 32 / 8; }

// The C element a thread's acc[i][j] holds, relative to the block tile's corner.
__device__ __forceinline__ int tile_row(int i) { return (i / 4) * 4 * THREADS_Y + 4 * thread_y() + i % 4; }
__device__ __forceinline__ int tile_col(int j) { return (j / 4) * 4 * THREADS_X + 4 * thread_x() + j % 4; }

// The B-tile chunks a thread loads each step: chunk i is reduction row b_chunk_row(i), columns
// b_chunk_col() .. +3 (the same 4 columns for all of a thread's chunks).
__device__ __forceinline__ int b_chunk_row(int i) { return threadIdx.x / B_CHUNKS_PER_ROW + i * B_ROW_STEP; }
__device__ __forceinline__ int b_chunk_col() { return 4 * (threadIdx.x % B_CHUNKS_PER_ROW); }

// ---- the shared GEMM main loop ------------------------------------------------------------------
// acc[i][j] = Σ_q A[tile_row(i)][q] · B[q][tile_col(j)] over num_tiles steps of BK, where the loaders'
// load() fill a thread's A_LOADS elements / B_CHUNKS chunks of the current step (zero past the reduction's
// end) and next() moves them to the following step. Every thread of the block must call it.
template <class ALoader, class BLoader>
__device__ __forceinline__ void implicit_gemm(ALoader& a, BLoader& b, int num_tiles, float (&acc)[TM][TN]) {
    __shared__ __align__(16) float As[2][BK][BM + SMEM_PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + SMEM_PAD];
    const int a_row = threadIdx.x / BK, a_col = threadIdx.x % BK;
    const int tx = thread_x(), ty = thread_y();

#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    float a_regs[A_LOADS];
    float4 b_regs[B_CHUNKS];
    // A: 16 threads of a warp store 16 k-rows of one column (2-way bank conflict at most, A_LOADS stores a
    // step); B: a quarter-warp stores 8 consecutive chunks of one row, 128 contiguous bytes.
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) As[buf][a_col][a_row + i * A_ROW_STEP] = a_regs[i];
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) store_float4(&Bs[buf][b_chunk_row(i)][b_chunk_col()], b_regs[i]);
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
            for (int q = 0; q < TM / 4; ++q) {
                const float4 v = load_float4(&As[cur][kk][q * 4 * THREADS_Y + 4 * ty]);
                af[4 * q] = v.x; af[4 * q + 1] = v.y; af[4 * q + 2] = v.z; af[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < TN / 4; ++q) {
                const float4 v = load_float4(&Bs[cur][kk][q * 4 * THREADS_X + 4 * tx]);
                bf[4 * q] = v.x; bf[4 * q + 1] = v.y; bf[4 * q + 2] = v.z; bf[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
        }
        if (more) store_tile(cur ^ 1);  // buffer cur^1 was last read before the previous barrier
        __syncthreads();
    }
}

// ---- epilogues ----------------------------------------------------------------------------------
// out[n][m][pixel] = acc (an NCHW tensor of M channels and PIX pixels an image) for the block's C rows
// m = m0 + tile_row(i) < M and columns p = n·PIX + pixel = p0 + tile_col(j) < N·PIX. A thread's 4
// consecutive columns are 4 consecutive pixels (p0 and 4·tx are multiples of 4): one float4 store when
// PIX % 4 == 0 (then they are in one image and 16-byte aligned), else up to 4 scalar stores that may
// cross into the next images. A warp's 8 tx store 32 consecutive pixels of one channel.
__device__ __forceinline__ void store_pixel_tile(float* __restrict__ out, const float (&acc)[TM][TN], int m0, int p0,
                                                 int M, int N, int PIX) {
    const int npix = N * PIX;
    const bool vec = PIX % 4 == 0 && aligned16(out);
#pragma unroll
    for (int g = 0; g < TN / 4; ++g) {
        const int p = p0 + tile_col(4 * g);
        if (p >= npix) continue;
        int n = p / PIX, pixel = p - n * PIX;
        if (vec) {
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const int m = m0 + tile_row(i);
                if (m < M)
                    store_float4(out + ((int64)n * M + m) * PIX + pixel,
                                 make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]));
            }
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (p + j < npix) {
#pragma unroll
                    for (int i = 0; i < TM; ++i) {
                        const int m = m0 + tile_row(i);
                        if (m < M) out[((int64)n * M + m) * PIX + pixel] = acc[i][4 * g + j];
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

// out[m][col] = acc (row-major, cols wide) for the block's C rows m0 + tile_row(i) < M and columns
// col0 + tile_col(j) < cols; float4 stores when cols % 4 == 0.
__device__ __forceinline__ void store_row_major_tile(float* __restrict__ out, const float (&acc)[TM][TN], int m0, int col0,
                                                     int M, int cols) {
    const bool vec = cols % 4 == 0 && aligned16(out);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tile_row(i);
        if (m >= M) continue;
        float* row = out + (int64)m * cols;
#pragma unroll
        for (int g = 0; g < TN / 4; ++g) {
            const int col = col0 + tile_col(4 * g);
            if (vec && col < cols) {
                store_float4(row + col, make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]));
            } else if (!vec) {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (col + j < cols) row[col + j] = acc[i][4 * g + j];
            }
        }
    }
}

// acc[i][j] = act(acc[i][j] + bias[k0 + tile_row(i)]) (no bias where bias is null or the row is past K).
// One activation branch per tile, not per element (as gemm.cu): keeps the epilogue's registers low.
template <int ACT>
__device__ __forceinline__ void bias_act_tile(float (&acc)[TM][TN], const float* __restrict__ bias, int k0, int K, float slope) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int k = k0 + tile_row(i);
        const float b = bias != nullptr && k < K ? __ldg(bias + k) : 0.f;
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = apply_activation(acc[i][j] + b, ACT, slope);
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

// B[q][p] = x[n, c, oh·sh − pt + r, ow·sw − pl + s] (the im2col matrix), q = (c, r, s), p = (n, oh, ow).
// Thread: columns p0 + b_chunk_col() + j, j < 4 (each pixel's window corner decoded once), rows
// q = q_begin + b_chunk_row(i) stepped by BK; a chunk's (c, r, s) and its offset (c·H + r)·W + s serve its 4 pixels.
struct Im2colColumns {
    Address corner[4];       // &x[n, 0, ih0, iw0] (as if x were unbounded): x[n, c, ih0 + r, iw0 + s] = corner[(c·H + r)·W + s]
    int ih0[4], iw0[4];      // oh·sh − pt, ow·sw − pl of each column's pixel
    int C, H, W;
    DigitCounter walk;       // q -> (c, r, s)
    Digits q[B_CHUNKS];
    __device__ Im2colColumns(const float* x, const ConvShape& g, int p0, int q_begin)
        : C(g.C), H(g.H), W(g.W), walk(g.R, g.S, BK) {
        const int npix = g.N * g.OH * g.OW;
        const DigitCounter pixels(g.OH, g.OW, 1);  // p -> (n, oh, ow), stepped one pixel at a time
        const int p = p0 + b_chunk_col();
        Digits d = pixels.at(min(p, npix - 1));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            ih0[j] = d.mid * g.sh - g.pt;
            iw0[j] = d.lo * g.sw - g.pl;
            corner[j] = address_of(x + (int64)d.hi * g.C * g.H * g.W + (int64)ih0[j] * g.W + iw0[j]);
            if (p + j + 1 < npix) pixels.advance(d);  // else the next columns repeat the last pixel
        }
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) q[i] = walk.at(q_begin + b_chunk_row(i));
    }
    __device__ void load(float4 (&v)[B_CHUNKS]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            const int r = q[i].mid, s = q[i].lo;
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

// B[q][p] = dy[n, k, (h + pt − r)/sh, (w + pl − s)/sw], q = (k, r, s), p = (n, h, w); zero unless both
// divisions are exact and inside dy. Thread: columns p0 + b_chunk_col() + j, j < 4, rows q = b_chunk_row(i)
// stepped by BK. Without a division per element: write h + pt = a·sh + ra and r = rq·sh + rr (0 <= ra, rr < sh);
// then h + pt − r = (a − rq)·sh + (ra − rr) with |ra − rr| < sh, so the division is exact iff rr == ra, and
// its quotient is a − rq (negative, so outside dy, exactly when h + pt − r < 0). Likewise along w. A
// column's (a, ra) are decoded once; a chunk's (rq, rr) once per step, shared by its 4 pixels.
struct OutputGradGather {
    Address corner[4];       // &dy[n, 0, a, b] (as if dy were unbounded) of each column's pixel
    int oh_max[4], ow_max[4];  // a, b: tap (r, s) reads dy row a − rq, column b − sq
    int phase[4];            // ra·sw + rb: tap (r, s) is exact iff rr·sw + sr equals it
    int K, OH, OW, sh, sw;
    DigitCounter walk;       // q -> (k, r, s)
    Digits q[B_CHUNKS];
    __device__ OutputGradGather(const float* dy, const ConvShape& g, int p0)
        : K(g.K), OH(g.OH), OW(g.OW), sh(g.sh), sw(g.sw), walk(g.R, g.S, BK) {
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
            corner[j] = address_of(dy + (int64)d.hi * g.K * g.OH * g.OW + (int64)oh_max[j] * g.OW + ow_max[j]);
            if (p + j + 1 < npix) pixels.advance(d);  // else the next columns repeat the last pixel
        }
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) q[i] = walk.at(b_chunk_row(i));
    }
    __device__ void load(float4 (&v)[B_CHUNKS]) const {
#pragma unroll
        for (int i = 0; i < B_CHUNKS; ++i) {
            int rq, rr, sq, sr;
            divide(q[i].mid, sh, rq, rr);
            divide(q[i].lo, sw, sq, sr);
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
struct OutputGradRows {
    Address first;       // &dy[0, k0 + tid/BK, 0]
    int64 image_size;    // K·OH·OW
    int OHW, k_left, p, p_end;  // k_left: filters from the thread's first to the end of dy
    DigitCounter walk;   // p -> (n, 0, pixel)
    Digits d;
    __device__ OutputGradRows(const float* dy, const ConvShape& g, int k0, int p_begin, int p_end)
        : first(address_of(dy + (int64)(k0 + threadIdx.x / BK) * g.OH * g.OW)), image_size((int64)g.K * g.OH * g.OW),
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

// B[p][q] = x[n, c, oh·sh − pt + r, ow·sw − pl + s]: the im2col matrix transposed. Thread: columns
// q = q0 + b_chunk_col() + j = (c, r, s), j < 4 (decoded once), rows p = p_begin + b_chunk_row(i) stepped
// by BK; a chunk's pixel (n, oh, ow) and its window corner serve its 4 columns.
struct Im2colRows {
    const float* x;
    int tap_r[4], tap_s[4], tap_offset[4];  // r, s and (c·H + r)·W + s of each column
    int64 image_size;                       // C·H·W
    int H, W, sh, sw, pt, pl, p_end;
    DigitCounter walk;   // p -> (n, oh, ow)
    Digits d[B_CHUNKS];
    int p[B_CHUNKS];
    __device__ Im2colRows(const float* x, const ConvShape& g, int q0, int p_begin, int p_end)
        : x(x), image_size((int64)g.C * g.H * g.W), H(g.H), W(g.W), sh(g.sh), sw(g.sw), pt(g.pt), pl(g.pl),
          p_end(p_end), walk(g.OH, g.OW, BK) {
        const int crs = g.C * g.R * g.S;
        const DigitCounter taps(g.R, g.S, 0);   // q -> (c, r, s)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const Digits t = taps.at(min(q0 + b_chunk_col() + j, crs - 1));
            tap_r[j] = t.mid;
            tap_s[j] = t.lo;
            tap_offset[j] = (t.hi * g.H + t.mid) * g.W + t.lo;
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
// writes that partial sum with no epilogue to out + z·N·K·OH·OW; conv2d_sum_partials then adds the
// splits in order and applies bias and act. With gridDim.z == 1 (chunk >= C·R·S) out is y.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_fwd_bias_act(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ out, CONV_SHAPE_PARAMS, int act, float slope, int chunk) {
    const ConvShape g = CONV_SHAPE;
    const int k0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
    const int crs = C * R * S;
    const int q_begin = blockIdx.z * chunk;
    FilterRows a(w, K, crs, k0, q_begin);
    Im2colColumns b(x, g, p0, q_begin);
    float acc[TM][TN];
    implicit_gemm(a, b, cdiv(min(chunk, crs - q_begin), BK), acc);
    if (gridDim.z > 1) {
        store_pixel_tile(out + (int64)blockIdx.z * N * K * OH * OW, acc, k0, p0, K, N, OH * OW);
        return;
    }

    switch (act) {
        case ACT_RELU: bias_act_tile<ACT_RELU>(acc, bias, k0, K, slope); break;
        case ACT_LEAKY_RELU: bias_act_tile<ACT_LEAKY_RELU>(acc, bias, k0, K, slope); break;
        case ACT_SIGMOID: bias_act_tile<ACT_SIGMOID>(acc, bias, k0, K, slope); break;
        case ACT_TANH: bias_act_tile<ACT_TANH>(acc, bias, k0, K, slope); break;
        default: bias_act_tile<ACT_NONE>(acc, bias, k0, K, slope);
    }
    store_pixel_tile(out, acc, k0, p0, K, N, OH * OW);
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
    OutputGradGather b(dy, g, p0);
    float acc[TM][TN];
    implicit_gemm(a, b, cdiv(K * R * S, BK), acc);
    store_pixel_tile(dx, acc, c0, p0, C, N, H * W);
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
    const int p_begin = blockIdx.z * chunk, p_end = p_begin + min(chunk, N * OH * OW - p_begin);  // no int overflow
    OutputGradRows a(dy, g, k0, p_begin, p_end);
    Im2colRows b(x, g, q0, p_begin, p_end);
    float acc[TM][TN];
    implicit_gemm(a, b, max(cdiv(p_end - p_begin, BK), 0), acc);
    store_row_major_tile(partials + (int64)blockIdx.z * K * crs, acc, k0, q0, K, crs);
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

// conv2d_sum_partials: out[i] = act(Σ_{z < splits} partials[z·n + i] + bias[(i / PIX) % K]), z in increasing
// order (the deterministic second pass of a split conv2d_fwd_bias_act, conv2d_bwd_filter and conv2d_bwd_bias;
// the last two pass no bias and ACT_NONE). bias may be null. 1-D grid-stride, any block size.
// Floor: 4·n·(splits + 1) bytes.
extern "C" __global__ void conv2d_sum_partials(const float* __restrict__ partials, const float* __restrict__ bias,
                                               float* __restrict__ out, int64 n, int splits, int K, int PIX, int act,
                                               float slope) {
    GRID_STRIDE_LOOP(i, n) {
        float sum = 0.f;
        for (int z = 0; z < splits; ++z) sum += partials[z * n + i];
        if (bias != nullptr) sum += __ldg(bias + i / PIX % K);
        out[i] = apply_activation(sum, act, slope);
    }
}
