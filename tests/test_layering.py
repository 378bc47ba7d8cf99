"""The package's imports run one way, kernels → cuda → ops → functional → layers → models → applications, read from
the source with ast (imports inside functions included): no module imports one above its layer."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "cnn_gpu"

# (layer, module-name prefixes), bottom first; a module may import its own layer and the ones below it.
LAYERS = [
    ("cuda", ("cnn_gpu.cuda", "cnn_gpu.backend", "cnn_gpu.files")),
    ("ops", ("cnn_gpu.ops",)),
    ("functional", ("cnn_gpu.functional",)),
    ("layers", ("cnn_gpu.layers", "cnn_gpu.losses", "cnn_gpu.optimizers", "cnn_gpu.learning_rate_schedules",
                "cnn_gpu.initializers", "cnn_gpu.activations", "cnn_gpu.metrics")),
    ("models", ("cnn_gpu.models", "cnn_gpu.model_files", "cnn_gpu.keras_model", "cnn_gpu.callbacks", "cnn_gpu.utils", "cnn_gpu.datasets",
                "cnn_gpu.viz")),
    ("networks", ("cnn_gpu.networks",)),
    ("applications", ("cnn_gpu.cli", "cnn_gpu.bench", "cnn_gpu.torch", "cnn_gpu.__main__")),
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    relative = pathlib.Path(*name.split("."))
    return (ROOT.parent / relative).with_suffix(".py").is_file() or (ROOT.parent / relative / "__init__.py").is_file()


def _imports(path: pathlib.Path) -> set:
    """The cnn_gpu modules path imports: `from cnn_gpu.x import y` is cnn_gpu.x.y where that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cnn_gpu")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "cnn_gpu":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _exists(submodule) else node.module)
    return found


def _rank(module: str) -> int:
    if module == "cnn_gpu":  # the package root imports the backend switch only (its Keras names load lazily)
        return 0
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = rank
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it where it belongs")
    return best


MODULES = sorted(_module_name(p) for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_a_layer_above_its_own(module):
    path = ROOT.parent / pathlib.Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    upward = [(name, LAYERS[_rank(name)][0]) for name in sorted(_imports(path)) if _rank(name) > _rank(module)]
    layer = LAYERS[_rank(module)][0] if module != "cnn_gpu" else "root"
    assert not upward, f"{module} ({layer}) imports {upward}"


def test_the_package_root_imports_only_the_backend():
    assert _imports(ROOT / "__init__.py") <= {"cnn_gpu.backend"}


def test_the_package_roots_keras_names_load_lazily():
    """`import cnn_gpu as keras`: keras.Sequential, keras.layers, ... are imported on first use, and are the
    modules and classes themselves."""
    import importlib

    import cnn_gpu

    for name in cnn_gpu.KERAS_MODULES:
        assert getattr(cnn_gpu, name) is importlib.import_module(f"cnn_gpu.{name}")
    for name, module in cnn_gpu.KERAS_OBJECTS.items():
        assert getattr(cnn_gpu, name) is getattr(importlib.import_module(module), name)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself: an ops module importing models is caught."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cnn_gpu.models import Sequential\n")
    assert _imports(source) == {"cnn_gpu.models"} and _rank("cnn_gpu.models") > _rank("cnn_gpu.ops.conv")
