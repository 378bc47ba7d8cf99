"""matmul, linear, linear_backward: forward against a plain float64 triple loop, backward against finite
differences, CUDA against float64 NumPy on odd shapes and every operand layout, every autotuner candidate
(tile config x split-K) against float64 NumPy, split-K planning, determinism, the tile variants' compile
report, bad inputs, and PyTorch where it is installed."""
import math

import numpy
import pytest

import cnn_gpu
from cnn_gpu import functional as F
from cnn_gpu.cuda import device
from cnn_gpu.ops import gemm
from checks import compile_variant_without_spills, numeric_grad, rel_error

ODD = (1, 3, 17, 31, 33, 65, 127, 129)
ACTIVATIONS = (None, "relu", "leaky_relu", "sigmoid", "tanh")
SLOPE = 0.2


def naive_matmul(a, b):
    a, b = a.astype(numpy.float64), b.astype(numpy.float64)
    out = numpy.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            total = 0.0
            for k in range(a.shape[1]):
                total += a[i, k] * b[k, j]
            out[i, j] = total
    return out


def naive_activation(v, name):
    if name == "relu":
        return max(v, 0.0)
    if name == "leaky_relu":
        return v if v > 0 else SLOPE * v
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    if name == "tanh":
        return math.tanh(v)
    return v


def naive_linear(x, w, b, activation):
    out = naive_matmul(x, w.T)
    for (i, j), v in numpy.ndenumerate(out):
        out[i, j] = naive_activation(v + (0.0 if b is None else float(b[j])), activation)
    return out


def reference_linear(x, w, b, activation):
    """The NumPy path in float64: the reference for the float32 CUDA results on larger shapes."""
    f64 = lambda a: None if a is None else numpy.asarray(a, dtype=numpy.float64)
    return F.linear(f64(x), f64(w), f64(b), activation, SLOPE)


def host_array(rng, *shape):
    return rng.standard_normal(shape).astype(numpy.float32)


# ---- forward against the naive loop -------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 2), (17, 3, 31), (33, 17, 1), (1, 31, 17)])
def test_matmul_matches_naive(backend, xp, rng, m, k, n):
    a, b = host_array(rng, m, k), host_array(rng, k, n)
    out = F.matmul(xp.asarray(a), xp.asarray(b))
    assert out.shape == (m, n) and out.dtype == numpy.float32
    assert rel_error(out, naive_matmul(a, b)) < 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_naive(backend, xp, rng, activation, with_bias):
    x, w = host_array(rng, 17, 31), host_array(rng, 33, 31)
    b = host_array(rng, 33) if with_bias else None
    out = F.linear(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b), activation, SLOPE)
    assert out.shape == (17, 33) and out.dtype == numpy.float32
    assert rel_error(out, naive_linear(x, w, b, activation)) < 1e-6


# ---- backward against finite differences --------------------------------------------------------
def test_linear_backward_finite_differences(rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    dy = rng.standard_normal((5, 3))
    dx, dw, db = F.linear_backward(dy, x, w)
    assert rel_error(dx, numeric_grad(lambda v: F.linear(v, w, b), x, dy)) < 1e-7
    assert rel_error(dw, numeric_grad(lambda v: F.linear(x, v, b), w, dy)) < 1e-7
    assert rel_error(db, numeric_grad(lambda v: F.linear(x, w, v), b, dy)) < 1e-7


# ---- CUDA against float64 NumPy: odd sizes, activations, layouts --------------------------------
# Every M and N of ODD, with K cycling through ODD, so each size meets every tile edge in some role.
SWEEP = [(m, n, ODD[(i + j) % len(ODD)]) for i, m in enumerate(ODD) for j, n in enumerate(ODD)]


@pytest.mark.parametrize("m,n,k", SWEEP)
def test_linear_matches_float64_reference(backend, xp, rng, m, n, k):
    activation = ACTIVATIONS[(m + n + k) % len(ACTIVATIONS)]
    x, w, b = host_array(rng, m, k), host_array(rng, n, k), host_array(rng, n)
    out = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), activation, SLOPE)
    assert rel_error(out, reference_linear(x, w, b, activation)) < 1e-5


@pytest.mark.parametrize("m,n,k", SWEEP[::3])
def test_linear_backward_matches_float64_reference(backend, xp, rng, m, n, k):
    # linear(x (m, k), w (n, k)): dy (m, n); dx = dy·w, dw = dyᵀ·x, db = Σ_rows dy
    dy, x, w = host_array(rng, m, n), host_array(rng, m, k), host_array(rng, n, k)
    refs = F.linear_backward(*(a.astype(numpy.float64) for a in (dy, x, w)))
    for ours, ref, name in zip(F.linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w)), refs, ("dx", "dw", "db")):
        assert ours.dtype == numpy.float32
        assert rel_error(ours, ref) < 1e-5, name


def test_long_inner_dimension(backend, xp, rng):
    """K = 4096 (split-K on the GPU) forward, and a 4096-row batch for dw and db."""
    x, w, b = host_array(rng, 65, 4096), host_array(rng, 33, 4096), host_array(rng, 33)
    out = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), "tanh")
    assert rel_error(out, reference_linear(x, w, b, "tanh")) < 1e-5
    dy, x = host_array(rng, 4096, 33), host_array(rng, 4096, 65)
    w = host_array(rng, 33, 65)
    refs = F.linear_backward(*(a.astype(numpy.float64) for a in (dy, x, w)))
    for ours, ref in zip(F.linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w)), refs):
        assert rel_error(ours, ref) < 1e-5


def laid_out(xp, host, layout):
    """A view with host's values in the given memory layout (the CUDA path reads the first four in place)."""
    r, c = host.shape
    if layout == "contiguous":
        return xp.asarray(host)
    if layout == "transposed":  # column-major: strides (4, 4r)
        return xp.asarray(numpy.ascontiguousarray(host.T)).T
    if layout == "padded rows":  # leading dimension c + 5, base 4 bytes past 16-byte alignment
        big = xp.zeros((r, c + 5), dtype=numpy.float32)
        big[:, 1:c + 1] = xp.asarray(host)
        return big[:, 1:c + 1]
    if layout == "reversed rows":  # negative row stride
        return xp.asarray(host[::-1].copy())[::-1]
    if layout == "every other column":  # neither axis unit-stride: copied
        big = xp.zeros((r, 2 * c), dtype=numpy.float32)
        big[:, ::2] = xp.asarray(host)
        return big[:, ::2]
    raise ValueError(layout)


LAYOUTS = ("contiguous", "transposed", "padded rows", "reversed rows", "every other column")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_operand_layout_reads_the_view(rng, layout):
    """The (transposed, ld) the CUDA path hands its kernels, applied to the view's memory, gives the view."""
    host = host_array(rng, 5, 7)
    view = laid_out(numpy, host, layout)
    op = gemm._operand(numpy, view)
    assert (op.array is view) == (layout != "every other column")  # in place unless neither axis is unit-stride
    for o, expected in ((op, host), (op.T, host.T)):
        strides = (1, o.ld) if o.transposed else (o.ld, 1)
        read = numpy.lib.stride_tricks.as_strided(o.array, (o.rows, o.cols), tuple(s * 4 for s in strides))
        assert numpy.array_equal(read, expected)


@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_matmul_any_layout(backend, xp, rng, layout_a, layout_b):
    a, b = host_array(rng, 33, 17), host_array(rng, 17, 65)
    out = F.matmul(laid_out(xp, a, layout_a), laid_out(xp, b, layout_b))
    assert rel_error(out, a.astype(numpy.float64) @ b) < 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_and_backward_any_layout(backend, xp, rng, layout):
    x, w, b, dy = host_array(rng, 31, 20), host_array(rng, 12, 20), host_array(rng, 12), host_array(rng, 31, 12)
    out = F.linear(laid_out(xp, x, layout), laid_out(xp, w, layout), xp.asarray(b), "relu")
    assert rel_error(out, reference_linear(x, w, b, "relu")) < 1e-5
    refs = F.linear_backward(*(a.astype(numpy.float64) for a in (dy, x, w)))
    ours = F.linear_backward(laid_out(xp, dy, layout), laid_out(xp, x, layout), laid_out(xp, w, layout))
    for o, ref in zip(ours, refs):
        assert rel_error(o, ref) < 1e-5


def test_empty_dimensions(backend, xp, rng):
    empty_rows = F.matmul(xp.zeros((0, 3), numpy.float32), xp.asarray(host_array(rng, 3, 4)))
    assert empty_rows.shape == (0, 4)
    b = host_array(rng, 4)
    no_inner = F.linear(xp.zeros((3, 0), numpy.float32), xp.zeros((4, 0), numpy.float32), xp.asarray(b), "relu")
    assert rel_error(no_inner, numpy.broadcast_to(numpy.maximum(b, 0), (3, 4))) == 0
    dx, dw, db = F.linear_backward(xp.zeros((0, 4), numpy.float32), xp.zeros((0, 3), numpy.float32), xp.asarray(host_array(rng, 4, 3)))
    assert dx.shape == (0, 3) and rel_error(dw, numpy.zeros((4, 3))) == 0 and rel_error(db, numpy.zeros(4)) == 0


def test_backward_is_deterministic(backend, xp, rng):
    """Same inputs, same bits: db's column sum and the split-K reductions run in a fixed order."""
    dy, x, w = host_array(rng, 2048, 33), host_array(rng, 2048, 65), host_array(rng, 33, 65)
    dy, x, w = xp.asarray(dy), xp.asarray(x), xp.asarray(w)
    first, second = ([cnn_gpu.to_numpy(g) for g in F.linear_backward(dy, x, w)] for _ in range(2))
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


# ---- every autotuner candidate, pinned: tile configs x (no split-K, the most split-K) --------------
# linear(x (m, k), w (n, k)) with m, n <= 64, so that every config is a candidate for all three products
# (forward m x n, dx m x k, dw n x k); k long and odd, so that the forward's split-K has a ragged last slice.
PINNED_SHAPES = [(33, 63, 515), (64, 31, 1001), (3, 17, 129)]


@pytest.mark.parametrize("most_splits", [False, True], ids=["no-split", "most-splits"])
@pytest.mark.parametrize("config", gemm.TILE_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_every_tile_config_matches_float64_reference(backend, xp, rng, force, config, most_splits):
    if backend != "cuda":
        pytest.skip("tile configs are a CUDA-path choice")
    used = []

    def choose(key, variants):
        _, m, n, k, _, _ = key
        plans = {v: v.gemm_plan(m, n, k, device.sm_count()) for v in variants}
        mine = [v for v in variants if plans[v].config == config]
        assert mine, f"{config} is not a candidate for {key}"
        chosen = (max if most_splits else min)(mine, key=lambda v: plans[v].splits)
        used.append(plans[chosen])
        return chosen

    force({"gemm": choose})
    for m, n, k in PINNED_SHAPES:
        x, w, b, dy = host_array(rng, m, k), host_array(rng, n, k), host_array(rng, n), host_array(rng, m, n)
        out = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), "tanh")
        assert rel_error(out, reference_linear(x, w, b, "tanh")) < 1e-5, (m, n, k)
        refs = F.linear_backward(*(a.astype(numpy.float64) for a in (dy, x, w)))
        for ours, ref, name in zip(F.linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w)), refs, ("dx", "dw", "db")):
            assert rel_error(ours, ref) < 1e-5, (m, n, k, name)
    assert not most_splits or any(p.splits > 1 for p in used), "no split-K plan was exercised"


# Blocks whose tile lies inside C with float4-readable operands and whole slabs take the kernel's
# check-free loop; the rest the general one. Shapes with both kinds of block in one launch, in every
# transpose combination (the transposed operands are column-major views, read in place), per config.
@pytest.mark.parametrize("most_splits", [False, True], ids=["no-split", "most-splits"])
@pytest.mark.parametrize("config", gemm.TILE_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_interior_and_edge_blocks_match_float64_reference(backend, xp, rng, force, config, most_splits):
    if backend != "cuda":
        pytest.skip("the interior loop is a CUDA-path choice")
    # multiples of 4 (float4 rows); the 32 x 32 tiles are a candidate only where m or n <= 64
    m = 2 * config.tile_m + 36 if config is not gemm.SMALL_TILES else 60
    n, k = 2 * config.tile_n + 20, 24 * config.tile_k

    def choose(key, variants):
        _, m, n, k, _, _ = key
        plans = {v: v.gemm_plan(m, n, k, device.sm_count()) for v in variants}
        mine = [v for v in variants if plans[v].config == config]
        return (max if most_splits else min)(mine, key=lambda v: plans[v].splits)

    force({"gemm": choose})
    a, b = host_array(rng, m, k), host_array(rng, k, n)
    reference = a.astype(numpy.float64) @ b.astype(numpy.float64)
    for a_transposed in (False, True):
        for b_transposed in (False, True):
            a_dev = xp.asarray(numpy.ascontiguousarray(a.T)).T if a_transposed else xp.asarray(a)
            b_dev = xp.asarray(numpy.ascontiguousarray(b.T)).T if b_transposed else xp.asarray(b)
            assert rel_error(F.matmul(a_dev, b_dev), reference) < 1e-5, (a_transposed, b_transposed)


# ---- launch planning and the compiled variants (no GPU needed) ----------------------------------
@pytest.mark.parametrize("m,n,k", [(4096, 4096, 4096), (64, 1000, 4096), (256, 10, 512), (129, 3, 4096), (5, 7, 0), (64, 64, 8)])
def test_plan_gemm_covers_k_in_whole_slabs(m, n, k):
    plan = gemm.plan_gemm(m, n, k, sm_count=132)
    assert plan.config == (gemm.SKINNY_TILES if min(m, n) <= 64 else gemm.LARGE_TILES)
    assert 1 <= plan.splits <= gemm.MAX_SPLITS and plan.k_per_split % plan.config.tile_k == 0
    assert plan.splits * plan.k_per_split >= k and (plan.splits - 1) * plan.k_per_split < max(k, 1)  # none empty


def test_plan_gemm_splits_k_only_when_tiles_leave_the_gpu_idle():
    assert gemm.plan_gemm(4096, 4096, 4096, sm_count=132).splits == 1
    assert gemm.plan_gemm(64, 1000, 4096, sm_count=132).splits > 1


@pytest.mark.parametrize("m,n,k", [(4096, 4096, 4096), (128, 128, 1024), (128, 1, 512), (1024, 128, 1024), (5, 7, 0), (33, 65, 515)])
def test_gemm_plans_start_with_the_default_and_cover_k(m, n, k):
    plans = gemm.gemm_plans(m, n, k, sm_count=132)
    assert plans[0] == gemm.plan_gemm(m, n, k, sm_count=132)  # what CNN_GPU_AUTOTUNE=0 runs
    assert len(set(plans)) == len(plans)
    assert {p.config for p in plans} == set(gemm.TILE_CONFIGS) - ({gemm.SMALL_TILES} if min(m, n) > 64 else set())
    for plan in plans:
        assert 1 <= plan.splits <= gemm.MAX_SPLITS and plan.k_per_split % plan.config.tile_k == 0
        assert plan.splits * plan.k_per_split >= k and (plan.splits - 1) * plan.k_per_split < max(k, 1)


def test_gemm_plans_try_split_k_only_where_tiles_leave_the_gpu_idle():
    assert all(p.splits == 1 for p in gemm.gemm_plans(4096, 4096, 4096, sm_count=132))
    skinny = gemm.gemm_plans(128, 128, 1024, sm_count=132)
    assert {p.splits for p in skinny if p.config == gemm.SKINNY_TILES} == {1, 8, 16}  # no split, K/16 slabs, K/4 slabs


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("config", gemm.TILE_CONFIGS, ids=lambda c: f"{c.tile_m}x{c.tile_n}")
def test_tile_configs_compile_without_spills(config, arch):
    compile_variant_without_spills("gemm", arch, config.defines)


# ---- bad inputs: one test per rule ----------------------------------------------------------------
def f32(*shape):
    return numpy.ones(shape, numpy.float32)


def test_matmul_rejects_non_2d():
    with pytest.raises(ValueError, match=r"a must be 2-D.*\(3,\)"):
        F.matmul(f32(3), f32(3, 2))
    with pytest.raises(ValueError, match=r"b must be 2-D.*\(3, 2, 1\)"):
        F.matmul(f32(4, 3), f32(3, 2, 1))


def test_matmul_rejects_inner_mismatch():
    with pytest.raises(ValueError, match=r"a has shape \(3, 4\).*b has shape \(5, 2\)"):
        F.matmul(f32(3, 4), f32(5, 2))


def test_linear_rejects_in_features_mismatch():
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\).*w has shape \(3, 5\)"):
        F.linear(f32(2, 4), f32(3, 5))


def test_linear_rejects_bias_shape():
    with pytest.raises(ValueError, match=r"b must have shape \(3,\).*got \(4,\)"):
        F.linear(f32(2, 5), f32(3, 5), f32(4))
    with pytest.raises(ValueError, match=r"b must be 1-D"):
        F.linear(f32(2, 5), f32(3, 5), f32(1, 3))


def test_linear_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        F.linear(f32(2, 5), f32(3, 5), activation="gelu")


def test_linear_backward_rejects_dy_shape():
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\).*got \(2, 4\)"):
        F.linear_backward(f32(2, 4), f32(2, 5), f32(3, 5))


def test_linear_backward_rejects_in_features_mismatch():
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\).*w has shape \(3, 5\)"):
        F.linear_backward(f32(2, 3), f32(2, 4), f32(3, 5))


def test_rejects_integer_dtype():
    with pytest.raises(TypeError, match="x must be float"):
        F.linear(numpy.ones((2, 5), numpy.int64), f32(3, 5))


def test_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="a is float32, b is float64"):
        F.matmul(f32(2, 3), numpy.ones((3, 2)))


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        F.matmul([[1.0]], f32(1, 1))


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.linear(xp.ones((2, 5), dtype=numpy.float32), f32(3, 5))


# ---- PyTorch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_torch(backend, xp, rng, activation):
    torch = pytest.importorskip("torch")
    x, w, b, dy = host_array(rng, 9, 13), host_array(rng, 6, 13), host_array(rng, 6), host_array(rng, 9, 6)
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    pre = torch.nn.functional.linear(tx, tw, tb)
    post = {None: lambda v: v, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "leaky_relu": lambda v: torch.nn.functional.leaky_relu(v, SLOPE)}[activation](pre)
    out = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), activation, SLOPE)
    assert rel_error(out, post.detach().numpy()) < 1e-5
    pre.backward(torch.tensor(dy, dtype=torch.float64))  # linear_backward takes the pre-activation gradient
    for ours, ref in zip(F.linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w)), (tx.grad, tw.grad, tb.grad)):
        assert rel_error(ours, ref.numpy()) < 1e-5
