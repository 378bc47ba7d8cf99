"""Choose among compiled variants of a kernel per problem shape, by timing them once (like cudnn.benchmark).

An op calls ``pick(op, key, candidates, launch)``: its name, a problem key (the shape and whatever else
the best variant depends on: a tuple of ints, bools and strings), a callable returning the variants that
apply to the problem (cnn_gpu.cuda.variants.applicable; called only when a choice has to be made; the
first is the default) and ``launch(variant)``, which runs the op with one variant. Only verified variants
are candidates unless CNN_GPU_UNVERIFIED=1 (cnn_gpu.cuda.variants). The first call for a (family, key) runs
every candidate (CUDA events around each: warm-ups, then the median of a few runs), drops with a
warning the candidates that fail to compile or launch, and remembers the fastest in memory and in a
JSON file; later calls, in this process or another, return it with no timing.

Every candidate computes the same function within the tests' tolerance (each has its own CUDA-vs-NumPy
test and NVRTC no-spill check): tuning chooses speed, never a result. Results are therefore
bit-reproducible within a process and across processes sharing the cache file; a fresh tuning whose
timings were close may choose another variant, whose rounding differs. CNN_GPU_AUTOTUNE=0 pins the
defaults everywhere.

Tests and tools choose a variant through ``forced({op: variant name, ...})``, a context manager: inside
it, the named ops run the named variants (verified or not; a ValueError where one does not apply to a
problem) and every other tuned op its default, with nothing timed or remembered.

Environment:
  CNN_GPU_AUTOTUNE=1 (default) | 0   0: always the default candidate, no timing, no cache file.
      Tuning costs, once per shape unless the cache file knows it already, a compile per variant
      (NVRTC; CuPy keeps the binaries on disk) and ~7 runs per candidate: call an op once before timing
      it or capturing it in a CUDA graph (a call made during stream capture is not tuned; it runs the default).
  CNN_GPU_UNVERIFIED=0 (default) | 1   1: variants no GPU run has verified yet are candidates too. Read when
      a choice is made for a shape (set it before the process's first call): a choice made is kept.
  CNN_GPU_AUTOTUNE_CACHE=path   the JSON file; default cnn_gpu_autotune.json beside CuPy's kernel cache
      directory ($CUPY_CACHE_DIR, else ~/.cupy/kernel_cache). Choices are filed under a context string
      (family, GPU name and compute capability, CUDA runtime and NVRTC versions, a hash of every kernel
      family's source, since a conv2d candidate may run winograd.cu's or gemm.cu's kernels, and compile
      options), so entries made on another GPU, toolkit or kernel version are ignored, and carry a digest of
      the candidate set, so a choice made among other candidates is made again; an unreadable or malformed
      file is ignored too (and replaced at the next write).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

from cnn_gpu.cuda.variants import Variant, unverified_allowed

SWITCH_VARIABLE = "CNN_GPU_AUTOTUNE"
CACHE_VARIABLE = "CNN_GPU_AUTOTUNE_CACHE"
CACHE_FORMAT = 1
WARMUPS = 2   # the first run of a variant also compiles it
REPEATS = 5


class TimingUnavailable(RuntimeError):
    """A timer's way of saying it cannot time now (the stream is capturing a CUDA graph): the op runs
    its default candidate and nothing is remembered."""


def enabled() -> bool:
    """CNN_GPU_AUTOTUNE, read at every call so that it can be switched at run time."""
    return _switch_setting(os.environ.get(SWITCH_VARIABLE, "1"))


@functools.lru_cache(maxsize=16)
def _switch_setting(text: str) -> bool:
    """CNN_GPU_AUTOTUNE's text as a bool, worked out once per text (enabled() runs on every op call)."""
    value = text.strip().lower()
    if value in ("1", "on", "true", "yes", ""):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"{SWITCH_VARIABLE} must be 1 (tune) or 0 (defaults only), got {value!r}")


def default_cache_file() -> Path:
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    kernel_cache = Path(os.environ.get("CUPY_CACHE_DIR") or "~/.cupy/kernel_cache").expanduser()
    return kernel_cache.parent / "cnn_gpu_autotune.json"


def cuda_event_timer(run: Callable[[], object], warmups: int = WARMUPS, repeats: int = REPEATS) -> float:
    """Median milliseconds of run() on the current stream, measured with CUDA events after warm-ups."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    if stream.is_capturing():
        raise TimingUnavailable("the current stream is capturing a CUDA graph")
    for _ in range(warmups):
        run()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def device_context(family: str) -> str:
    """The context string a choice for ``family`` on the current device is filed under."""
    import cupy

    return _device_context(family, cupy.cuda.runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _device_context(family: str, device_id: int) -> str:
    import cupy

    from cnn_gpu.cuda import compile_check, loader

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    # every family's source, not only `family`'s: a conv2d choice may run winograd.cu, gemm.cu or conv2d_direct.cu
    source = ("\0".join(loader.assemble_source(f) for f in loader.FAMILIES) + "\0" + " ".join(loader.COMPILE_OPTIONS)
              + "\0" + repr(sorted((f, sorted(d.items())) for f, d in loader.FAMILY_DEFINES.items())))
    return (f"{family} | {name} sm_{props['major']}{props['minor']} | CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
            f" | NVRTC {compile_check.nvrtc_version()} | source {hashlib.sha256(source.encode()).hexdigest()[:16]}")


def _as_json(value) -> str:
    """A candidate's or key's identity: its JSON text (a Variant by its name; NamedTuples are lists, dicts have
    sorted keys)."""
    return json.dumps(value.name if isinstance(value, Variant) else value, sort_keys=True)


def _is_candidate(candidate, unverified: bool) -> bool:
    """Verified variants always; unverified ones when asked for (anything that is not a Variant counts as verified)."""
    return unverified or getattr(candidate, "verified", True)


class Autotuner:
    """Remembers one choice per (context, key). ``timer(run) -> elapsed`` and ``context(family) -> str``
    are injectable, so the plumbing is testable without a GPU; ``cache_file`` None means
    default_cache_file(), resolved at first use."""

    def __init__(self, cache_file: str | os.PathLike | None = None,
                 timer: Callable[[Callable[[], object]], float] = cuda_event_timer,
                 context: Callable[[str], str] = device_context):
        self._cache_file = None if cache_file is None else Path(cache_file)
        self._timer = timer
        self._context = context
        self._chosen: dict = {}     # (context, key) -> candidate
        self._defaults: dict = {}   # (family, key) -> candidates()[0], for calls with tuning off
        # {context: {key json: {"choice": candidate as JSON, "among": digest of the candidate set}}}, read at the first miss
        self._stored: dict | None = None
        self._write_failed = False

    @property
    def cache_file(self) -> Path:
        if self._cache_file is None:
            self._cache_file = default_cache_file()
        return self._cache_file

    def pick(self, family: str, key: tuple, candidates: Callable[[], Sequence], launch: Callable[[object], object]):
        """The fastest of candidates() for (family, key) (the verified ones, unless CNN_GPU_UNVERIFIED=1); the
        first candidate when tuning is off."""
        if _forcing is not None:
            return _forced_choice(family, key, candidates)
        if not enabled():
            default = self._defaults.get((family, key))
            if default is None:
                default = self._defaults[(family, key)] = candidates()[0]
            return default
        context = self._context(family)
        choice = self._chosen.get((context, key))
        if choice is not None:
            return choice
        unverified = unverified_allowed()
        options = [c for c in candidates() if _is_candidate(c, unverified)]
        by_identity = {_as_json(c): c for c in options}
        among = hashlib.sha256("\n".join(by_identity).encode()).hexdigest()[:16]  # a new candidate set retunes
        stored = self._stored_choices().get(context, {}).get(_as_json(key))
        if len(options) == 1:
            choice = options[0]
        elif isinstance(stored, dict) and stored.get("among") == among and _as_json(stored.get("choice")) in by_identity:
            choice = by_identity[_as_json(stored["choice"])]
        else:
            try:
                choice = self._fastest(family, key, options, launch)
            except TimingUnavailable:
                return options[0]
            self._store(context, _as_json(key), {"choice": json.loads(_as_json(choice)), "among": among})
        self._chosen[(context, key)] = choice
        return choice

    def choices(self) -> list:
        """What this tuner has chosen or loaded so far in this process, as JSON-ready dicts {context, key, choice}
        (the bench files them beside its rows, so a row's time can be read with the variant that made it)."""
        return [{"context": context, "key": json.loads(_as_json(key)), "choice": json.loads(_as_json(choice))}
                for (context, key), choice in self._chosen.items()]

    def _fastest(self, family, key, options, launch):
        best, best_time, error = None, math.inf, None
        for candidate in options:
            try:
                elapsed = self._timer(functools.partial(launch, candidate))
            except TimingUnavailable:
                raise
            except Exception as exc:  # compile or launch failure: this variant does not exist here
                warnings.warn(f"autotune {family} {key}: candidate {candidate} dropped ({type(exc).__name__}: {exc})",
                              RuntimeWarning, stacklevel=4)
                error = exc
                continue
            if elapsed < best_time:  # ties keep the earlier candidate, the default first
                best, best_time = candidate, elapsed
        if best is None:
            raise error
        return best

    # ---- the cache file --------------------------------------------------------------------------
    def _stored_choices(self) -> dict:
        if self._stored is None:
            self._stored = _read_cache(self.cache_file)
        return self._stored

    def _store(self, context: str, key_json: str, entry: dict) -> None:
        self._stored_choices().setdefault(context, {})[key_json] = entry
        if self._write_failed:
            return
        merged = _read_cache(self.cache_file)  # keep what other processes wrote since we read it
        for ctx, entries in self._stored.items():
            merged.setdefault(ctx, {}).update(entries)
        self._stored = merged
        try:
            _write_atomically(self.cache_file, {"format": CACHE_FORMAT, "choices": merged})
        except OSError as exc:
            self._write_failed = True
            warnings.warn(f"autotune: cannot write {self.cache_file} ({exc}); choices are kept in memory only",
                          RuntimeWarning, stacklevel=3)


def _read_cache(path: Path) -> dict:
    """{context: {key json: choice}} from the file; {} when it is missing, unreadable or malformed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("choices"), dict):
        return {}
    return {ctx: dict(entries) for ctx, entries in data["choices"].items() if isinstance(entries, dict)}


def _write_atomically(path: Path, data: dict) -> None:
    """Readers see the old file or the new one, never half of one (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_tuner: Autotuner | None = None


def tuner() -> Autotuner:
    """The process-wide tuner the ops use."""
    global _tuner
    if _tuner is None:
        _tuner = Autotuner()
    return _tuner


def pick(family: str, key: tuple, candidates: Callable[[], Sequence], launch: Callable[[object], object]):
    """The process-wide tuner's choice; see the module docstring."""
    return tuner().pick(family, key, candidates, launch)


# ---- forcing a choice ----------------------------------------------------------------------------
_forcing: dict | None = None  # op -> variant name, while a forced() block runs


@contextlib.contextmanager
def forced(choices: dict | None = None):
    """Inside the block, each op named in choices ({op: variant name}) runs that variant and every other tuned op
    its default, nothing timed or remembered: how a test runs one variant on purpose. The named variant must
    apply to each problem the op meets there (a ValueError otherwise); it need not be verified. A value may also
    be a function choose(key, variants) -> one of the variants that apply to the problem (verified or not)."""
    global _forcing
    choices = dict(choices or {})
    for op, name in choices.items():
        from cnn_gpu.cuda import variants

        if op in variants._REGISTRY and not callable(name):
            variants.named(op, name)  # an unknown name fails here, before the block runs
    saved, _forcing = _forcing, choices
    try:
        yield
    finally:
        _forcing = saved


def _forced_choice(family: str, key: tuple, candidates: Callable[[], Sequence]):
    options = list(candidates())
    name = _forcing.get(family)
    if name is None:
        return next(c for c in options if _is_candidate(c, False))
    if callable(name):
        return name(key, options)
    for candidate in options:
        if (candidate.name if isinstance(candidate, Variant) else candidate) == name:
            return candidate
    raise ValueError(f"forced {family} variant {name!r} does not apply to {key}; the variants that do: "
                     f"{', '.join(str(c) for c in options)}")
