"""cnn_gpu.torch.Conv2d with groups, dilation and every padding_mode against torch.nn.Conv2d on the same weights:
forward and the gradients of input, weight and bias (float64 on the CPU; float32 on the CPU, and on CUDA where a
GPU is usable), the functional form under torch.func.grad, and a compiled model against eager."""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra: pip install torch)")
ours = pytest.importorskip("cnn_gpu.torch")

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")  # torch's, from the reference

MODES = ("zeros", "reflect", "replicate", "circular")

# (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, input (N, C, H, W))
GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, 2, (2, 4, 7, 9)),                       # two groups
    (5, 5, 3, 2, 1, 1, 5, (2, 5, 9, 8)),                       # depthwise, stride 2
    (3, 6, (3, 2), (1, 2), (1, 2), 1, 3, (1, 3, 6, 11)),       # depthwise with a channel multiplier of 2
    (4, 4, 3, 1, 2, 2, 1, (2, 4, 8, 7)),                       # dilation 2
    (2, 4, 3, 2, (2, 3), (2, 3), 2, (2, 2, 11, 13)),           # dilation (2, 3), stride 2, grouped
    (3, 3, (3, 2), 1, "same", (2, 3), 3, (2, 3, 7, 10)),       # 'same' with dilation (odd total pad in W)
    (6, 4, 2, 2, 0, (1, 2), 2, (1, 6, 7, 9)),                  # no padding (every padding_mode the same)
]


def _pair_of_layers(cin, cout, kernel, stride, padding, dilation, groups, mode, dtype):
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode, dtype=dtype)
    theirs = torch.nn.Conv2d(cin, cout, kernel, **kwargs)
    mine = ours.Conv2d(cin, cout, kernel, **kwargs)
    mine.load_state_dict(theirs.state_dict())
    return theirs, mine


def _forward_backward(layer, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


def _compare(theirs, mine, x, tol):
    torch.manual_seed(3)
    expected_y = theirs(x)
    dy = torch.randn_like(expected_y)
    for name, got, ref in zip(("y", "dx", "dweight", "dbias"), _forward_backward(mine, x, dy),
                              _forward_backward(theirs, x, dy)):
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[-1])) + f"_g{g[6]}")
def test_matches_torch_float64(geometry, mode):
    *layer, shape = geometry
    torch.manual_seed(0)
    theirs, mine = _pair_of_layers(*layer, mode, torch.float64)
    _compare(theirs, mine, torch.randn(shape, dtype=torch.float64), 1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4], GEOMETRIES[5]], ids=("depthwise", "dilated",
                                                                                         "same"))
def test_matches_torch_float32(device, geometry, mode):
    """float32 on both devices: CPU tensors run the NumPy path, CUDA tensors the grouped/dilated kernels."""
    *layer, shape = geometry
    torch.manual_seed(1)
    theirs, mine = _pair_of_layers(*layer, mode, torch.float32)
    _compare(theirs.to(device), mine.to(device), torch.randn(shape, device=device), 1e-4)


def test_unbatched_input_with_reflect_padding():
    torch.manual_seed(2)
    theirs, mine = _pair_of_layers(4, 4, 3, 1, (1, 2), (1, 2), 4, "reflect", torch.float64)
    _compare(theirs, mine, torch.randn(4, 6, 7, dtype=torch.float64), 1e-10)


def test_functional_groups_and_dilation_under_torch_func_grad():
    torch.manual_seed(4)
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)

    def loss(conv, x, w, b):
        return conv(x, w, b, stride=(2, 1), padding=(2, 1), dilation=(2, 3), groups=2).square().sum()

    got = torch.func.grad(lambda *a: loss(ours.conv2d, *a), argnums=(0, 1, 2))(x, w, b)
    ref = torch.func.grad(lambda *a: loss(torch.nn.functional.conv2d, *a), argnums=(0, 1, 2))(x, w, b)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_functional_refuses_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="groups"):
        ours.conv2d(torch.randn(1, 4, 5, 5), torch.randn(3, 2, 3, 3), groups=3)


def test_compiled_grouped_dilated_reflect_model_equals_eager():
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        ours.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, padding_mode="reflect"), ours.ReLU(),
        ours.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, padding_mode="circular"), torch.nn.Flatten(),
    )
    x = torch.randn(2, 4, 9, 10)

    def step(m):
        m.zero_grad()
        y = m(x)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in m.parameters()]

    y_eager, g_eager = step(model)
    y_compiled, g_compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(y_compiled, y_eager, rtol=0, atol=0)
    for got, ref in zip(g_compiled, g_eager):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
