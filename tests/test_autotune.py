"""cnn_gpu.cuda.autotune's plumbing with a fake timer and context (no GPU): it picks the fastest candidate,
remembers it in memory and on disk, ignores stale and corrupt cache files, drops failing candidates and
honours CNN_GPU_AUTOTUNE; offers unverified variants only when asked (CNN_GPU_UNVERIFIED, forced); on a GPU, the CUDA-event timer and device context end to end through linear."""
import json
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu.cuda import autotune, variants
from checks import rel_error


class Tile(NamedTuple):  # candidates are JSON-able values; the ops' are NamedTuples like this one
    rows: int
    cols: int


DEFAULT, WIDE, SMALL = Tile(64, 64), Tile(128, 64), Tile(32, 32)
CANDIDATES = (DEFAULT, WIDE, SMALL)
KEY = ("nt", 33, 65, 17)


class FakeOp:
    """launch(candidate): records the run and returns the candidate's pretend time (the fake timer returns
    what the run returns); candidates in `failing` raise, as a variant that fails to compile would."""

    def __init__(self, times, failing=()):
        self.times, self.failing, self.runs, self.candidate_lists = dict(times), set(failing), [], 0

    def __call__(self, candidate):
        self.runs.append(candidate)
        if candidate in self.failing:
            raise RuntimeError(f"{candidate} failed to compile")
        return self.times[candidate]

    def candidates(self):
        self.candidate_lists += 1
        return CANDIDATES

    def pick(self, tuner, key=KEY, family="gemm"):
        return tuner.pick(family, key, self.candidates, self)


def fake_tuner(cache_file, source="source 1"):
    return autotune.Autotuner(cache_file=cache_file, timer=lambda run: run(),
                              context=lambda family: f"{family} | Fake GPU sm_90 | {source}")


def stored_choices(cache_file, context="gemm | Fake GPU sm_90 | source 1"):
    """{key json: chosen candidate as JSON} of one context in the cache file."""
    return {key: entry["choice"] for key, entry in json.loads(cache_file.read_text())["choices"][context].items()}


@pytest.fixture
def cache_file(tmp_path):
    return tmp_path / "autotune.json"


@pytest.fixture(autouse=True)
def tuning_on(monkeypatch):
    monkeypatch.delenv(autotune.SWITCH_VARIABLE, raising=False)


def test_picks_the_fastest_after_timing_each_candidate_once(cache_file):
    op = FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    assert op.pick(fake_tuner(cache_file)) == WIDE
    assert op.runs == list(CANDIDATES)


def test_a_tie_keeps_the_earlier_candidate(cache_file):
    assert FakeOp({DEFAULT: 1.0, WIDE: 1.0, SMALL: 2.0}).pick(fake_tuner(cache_file)) == DEFAULT


def test_remembers_the_choice_in_memory(cache_file):
    tuner, op = fake_tuner(cache_file), FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    op.pick(tuner)
    cache_file.unlink()  # the second call must not need the file either
    assert op.pick(tuner) == WIDE
    assert len(op.runs) == len(CANDIDATES) and op.candidate_lists == 1  # no timing, not even the candidate list


def test_lists_its_choices_as_json(cache_file):
    tuner, op = fake_tuner(cache_file), FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    assert tuner.choices() == []
    op.pick(tuner)
    assert tuner.choices() == [{"context": "gemm | Fake GPU sm_90 | source 1", "key": list(KEY), "choice": list(WIDE)}]
    json.dumps(tuner.choices())  # ready for results.json


def test_each_key_and_family_is_tuned_separately(cache_file):
    tuner = fake_tuner(cache_file)
    assert FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(tuner) == WIDE
    assert FakeOp({DEFAULT: 3.0, WIDE: 2.0, SMALL: 1.0}).pick(tuner, key=("nt", 33, 65, 18)) == SMALL
    assert FakeOp({DEFAULT: 1.0, WIDE: 2.0, SMALL: 3.0}).pick(tuner, family="conv2d") == DEFAULT


def test_persists_to_disk_and_another_tuner_reloads_without_timing(cache_file):
    FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(fake_tuner(cache_file))
    data = json.loads(cache_file.read_text())
    assert data["format"] == autotune.CACHE_FORMAT
    assert stored_choices(cache_file) == {json.dumps(list(KEY)): [128, 64]}
    later = FakeOp({DEFAULT: 1.0, WIDE: 9.0, SMALL: 9.0})  # would win if timed
    assert later.pick(fake_tuner(cache_file)) == WIDE and later.runs == []


def test_a_choice_from_another_context_is_ignored(cache_file):
    """Another GPU, toolkit or kernel source: the stored choice is stale, so the candidates are timed again."""
    FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(fake_tuner(cache_file, source="source 1"))
    op = FakeOp({DEFAULT: 3.0, WIDE: 2.0, SMALL: 1.0})
    assert op.pick(fake_tuner(cache_file, source="source 2")) == SMALL and op.runs == list(CANDIDATES)
    contexts = json.loads(cache_file.read_text())["choices"]
    assert len(contexts) == 2  # both kept: each is valid for its own context


def test_a_choice_made_among_other_candidates_is_made_again(cache_file):
    """A new candidate set (a tile config added to the op, or the stored one removed) is tuned afresh."""
    FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(fake_tuner(cache_file))
    bigger = (DEFAULT, WIDE, SMALL, Tile(256, 256))
    times = {DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0, Tile(256, 256): 0.5}
    assert fake_tuner(cache_file).pick("gemm", KEY, lambda: bigger, times.get) == Tile(256, 256)
    assert fake_tuner(cache_file).pick("gemm", KEY, lambda: (DEFAULT, SMALL), times.get) == SMALL


@pytest.mark.parametrize("contents", ["{not json", "", "[]", '{"format": 99, "choices": {}}', '{"format": 1, "choices": []}',
                                      '{"format": 1, "choices": {"gemm | Fake GPU sm_90 | source 1": 7}}',
                                      '{"format": 1, "choices": {"gemm | Fake GPU sm_90 | source 1": {"[\\"nt\\", 33, 65, 17]": [128, 64]}}}'])
def test_a_corrupt_cache_file_is_ignored_and_replaced(cache_file, contents):
    cache_file.write_text(contents)
    op = FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    assert op.pick(fake_tuner(cache_file)) == WIDE and op.runs == list(CANDIDATES)
    assert json.loads(cache_file.read_text())["format"] == autotune.CACHE_FORMAT
    assert FakeOp({}).pick(fake_tuner(cache_file)) == WIDE  # the rewritten file is read back


def test_keeps_what_another_process_wrote_meanwhile(cache_file):
    first, second = fake_tuner(cache_file), fake_tuner(cache_file)
    FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(second, key=("other",))  # `second` reads the file here
    FakeOp({DEFAULT: 3.0, WIDE: 2.0, SMALL: 1.0}).pick(first)
    FakeOp({DEFAULT: 1.0, WIDE: 2.0, SMALL: 3.0}).pick(second, key=("third",))
    assert stored_choices(cache_file) == {json.dumps(["other"]): [128, 64], json.dumps(list(KEY)): [32, 32], json.dumps(["third"]): [64, 64]}


def test_round_trips_variants_named_tuples_and_dicts(cache_file):
    from cnn_gpu.ops import gemm  # (F's import registered every op's variants)

    for candidates in (variants.registered("gemm"), variants.registered("conv2d_bwd_filter")[:12],
                       gemm.gemm_plans(33, 65, 515, sm_count=132), [{"b": 1, "a": 2}, {"a": 1}]):
        fastest = candidates[-1]
        timed = fake_tuner(cache_file).pick("family", (len(candidates),), lambda: candidates, lambda c: 0.0 if c == fastest else 1.0)
        reloaded = fake_tuner(cache_file).pick("family", (len(candidates),), lambda: candidates, lambda c: pytest.fail("timed again"))
        assert timed == reloaded == fastest


def test_drops_a_failing_candidate_with_a_warning(cache_file):
    op = FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}, failing={WIDE})
    with pytest.warns(RuntimeWarning, match=r"candidate Tile\(rows=128, cols=64\) dropped \(RuntimeError: .*failed to compile"):
        assert op.pick(fake_tuner(cache_file)) == SMALL


def test_raises_when_every_candidate_fails(cache_file):
    op = FakeOp({}, failing=set(CANDIDATES))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="failed to compile"):
        op.pick(fake_tuner(cache_file))
    assert not cache_file.exists()


def test_a_single_candidate_is_not_timed(cache_file):
    tuner = fake_tuner(cache_file)
    assert tuner.pick("gemm", KEY, lambda: [SMALL], lambda c: pytest.fail("timed")) == SMALL


# ---- verified variants and forced choices ----------------------------------------------------------
@dataclass(frozen=True)
class FakeVariant(variants.Variant):
    name: str
    algorithm: str
    op = "fake_op"

    def plan(self, problem):
        return self.name

    def launch(self, *args):
        return self.name


VERIFIED_A, VERIFIED_B, UNVERIFIED = FakeVariant("a", "checked"), FakeVariant("b", "checked"), FakeVariant("new", "new")


@pytest.fixture
def fake_variants(monkeypatch):
    monkeypatch.setitem(variants.VERIFIED, "fake_op", frozenset({"checked"}))
    monkeypatch.setitem(variants._REGISTRY, "fake_op", [VERIFIED_A, UNVERIFIED, VERIFIED_B])
    monkeypatch.delenv(variants.UNVERIFIED_VARIABLE, raising=False)
    return {VERIFIED_A: 3.0, UNVERIFIED: 1.0, VERIFIED_B: 2.0}


def test_unverified_variants_are_candidates_only_when_asked(cache_file, monkeypatch, fake_variants):
    runs = []

    def launch(variant):
        runs.append(variant)
        return fake_variants[variant]
    candidates = lambda: variants.applicable("fake_op", None)  # noqa: E731
    assert fake_tuner(cache_file).pick("fake_op", KEY, candidates, launch) == VERIFIED_B
    assert UNVERIFIED not in runs and not UNVERIFIED.verified and VERIFIED_A.verified
    assert variants.offered("fake_op", None) == (VERIFIED_A, VERIFIED_B)
    monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "1")
    tuner = fake_tuner(cache_file)
    assert tuner.pick("fake_op", KEY, candidates, launch) == UNVERIFIED  # another candidate set: tuned again
    assert variants.offered("fake_op", None) == (VERIFIED_A, UNVERIFIED, VERIFIED_B)
    assert tuner.pick("fake_op", KEY, candidates, pytest.fail) == UNVERIFIED  # a choice made is kept
    monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "0")
    assert fake_tuner(cache_file).pick("fake_op", KEY, candidates, launch) == VERIFIED_B  # the file's entry: another set
    monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "maybe")
    with pytest.raises(ValueError, match="CNN_GPU_UNVERIFIED must be 1"):
        fake_tuner(cache_file).pick("fake_op", ("another key",), candidates, launch)


def test_forced_runs_the_named_variant_and_defaults_elsewhere(cache_file, monkeypatch, fake_variants):
    tuner = fake_tuner(cache_file)
    monkeypatch.setattr(autotune, "_tuner", tuner)
    candidates = lambda: variants.applicable("fake_op", None)  # noqa: E731
    untimed = lambda variant: pytest.fail("timed while forced")  # noqa: E731
    with autotune.forced({"fake_op": "new"}):  # unverified, but asked for by name
        assert autotune.pick("fake_op", KEY, candidates, untimed) == UNVERIFIED
        assert autotune.pick("gemm", KEY, lambda: CANDIDATES, untimed) == DEFAULT  # not named: the default
    with autotune.forced():
        assert autotune.pick("fake_op", KEY, candidates, untimed) == VERIFIED_A
    assert not cache_file.exists() and tuner.choices() == []  # nothing remembered
    with pytest.raises(ValueError, match="fake_op has no variant named 'nonsense'"):
        with autotune.forced({"fake_op": "nonsense"}):
            pass
    with autotune.forced({"fake_op": "b"}):
        with pytest.raises(ValueError, match="forced fake_op variant 'b' does not apply"):
            autotune.pick("fake_op", KEY, lambda: [VERIFIED_A, UNVERIFIED], untimed)


def test_every_op_has_a_verified_default_first():
    """The default (first registered) variant of every op is verified, and every variant's name is unique in its op."""

    for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_filter", "conv2d_grouped_fwd", "conv2d_grouped_bwd_data",
               "conv2d_grouped_bwd_filter", "gemm", "gemm_k_slices", "maxpool2d_fwd", "maxpool2d_bwd"):
        registered = variants.registered(op)
        assert registered[0].verified, op
        assert len({v.name for v in registered}) == len(registered), op
    from cnn_gpu.ops.conv import CONV_TILES

    unverified = {(v.op, v.name) for op in variants._REGISTRY if op != "fake_op" for v in variants.registered(op)
                  if not v.verified}
    grouped_ops = ("conv2d_grouped_fwd", "conv2d_grouped_bwd_data", "conv2d_grouped_bwd_filter")
    assert {name for op, name in unverified if op not in grouped_ops} == {
        "few output channels", "few output channels, split to 2 blocks an SM", "few output channels, split to 6 blocks an SM",
        "Winograd F(4x4, 3x3)", "Winograd F(4x4, 3x3), split to 2 blocks an SM", "Winograd F(4x4, 3x3), split to 6 blocks an SM"}
    # the grouped implicit GEMMs: every tile, whole and split forward, backward-data, split backward-filter
    tiles = [f"implicit GEMM {t.bm}x{t.bn}x{t.bk} tile, {t.tm}x{t.tn} a thread" for t in CONV_TILES]
    splits = [f"{tile}, split to {b} blocks an SM" for tile in tiles for b in (2, 6)]
    assert {(op, name) for op, name in unverified if op in grouped_ops} == {
        *(("conv2d_grouped_fwd", name) for name in tiles + splits + ["direct depthwise"]),
        *(("conv2d_grouped_bwd_data", name) for name in tiles + ["direct depthwise"]),
        *(("conv2d_grouped_bwd_filter", name) for name in splits + ["direct depthwise"])}


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_switched_off_runs_the_default_without_timing(cache_file, monkeypatch, value):
    monkeypatch.setenv(autotune.SWITCH_VARIABLE, value)
    tuner, op = fake_tuner(cache_file), FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    assert op.pick(tuner) == DEFAULT and op.pick(tuner) == DEFAULT
    assert op.runs == [] and not cache_file.exists()
    assert op.candidate_lists == 1  # the default is remembered: no per-call cost for building candidates


def test_switch_is_on_by_default_and_read_at_every_call(cache_file, monkeypatch):
    tuner, op = fake_tuner(cache_file), FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    assert autotune.enabled()
    monkeypatch.setenv(autotune.SWITCH_VARIABLE, "0")
    assert op.pick(tuner) == DEFAULT
    monkeypatch.setenv(autotune.SWITCH_VARIABLE, "1")
    assert op.pick(tuner) == WIDE


def test_rejects_an_unknown_switch_value(cache_file, monkeypatch):
    monkeypatch.setenv(autotune.SWITCH_VARIABLE, "fast")
    with pytest.raises(ValueError, match=r"CNN_GPU_AUTOTUNE must be 1 \(tune\) or 0.*'fast'"):
        FakeOp({}).pick(fake_tuner(cache_file))


def test_when_timing_is_unavailable_runs_the_default_and_remembers_nothing(cache_file):
    """A call during CUDA-graph capture cannot be timed: it runs the default; a later call tunes."""
    def capturing(run):
        raise autotune.TimingUnavailable("capturing")

    capture = autotune.Autotuner(cache_file=cache_file, timer=capturing, context=lambda family: "ctx")
    assert FakeOp({}).pick(capture) == DEFAULT and not cache_file.exists()
    capture._timer = lambda run: run()
    assert FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0}).pick(capture) == WIDE


def test_an_unwritable_cache_file_warns_once_and_keeps_choices_in_memory(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    tuner = fake_tuner(blocker / "autotune.json")  # its directory cannot be created
    op = FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    with pytest.warns(RuntimeWarning, match="cannot write .*kept in memory only"):
        assert op.pick(tuner) == WIDE
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert FakeOp({DEFAULT: 3.0, WIDE: 2.0, SMALL: 1.0}).pick(tuner, key=("other",)) == SMALL
        assert op.pick(tuner) == WIDE


def test_default_cache_file_is_beside_cupys_kernel_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(autotune.CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cupy" / "kernel_cache"))
    assert autotune.default_cache_file() == tmp_path / "cupy" / "cnn_gpu_autotune.json"
    monkeypatch.delenv("CUPY_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert autotune.default_cache_file() == tmp_path / ".cupy" / "cnn_gpu_autotune.json"
    monkeypatch.setenv(autotune.CACHE_VARIABLE, str(tmp_path / "mine.json"))
    assert autotune.default_cache_file() == tmp_path / "mine.json"
    assert autotune.Autotuner().cache_file == tmp_path / "mine.json"


# ---- on a GPU: real timer, real context, through an op ---------------------------------------------
def test_tunes_linear_on_the_device_and_files_the_choice(backend, xp, rng, monkeypatch, cache_file):
    if backend != "cuda":
        pytest.skip("times CUDA kernels")
    import cupy

    tuner = autotune.Autotuner(cache_file=cache_file)
    monkeypatch.setattr(autotune, "_tuner", tuner)
    x, w, b = (rng.standard_normal(s).astype(numpy.float32) for s in ((65, 515), (33, 515), (33,)))
    ref = F.linear(x.astype(numpy.float64), w.astype(numpy.float64), b.astype(numpy.float64), "relu")
    first = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), "relu")  # tunes
    second = F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b), "relu")  # remembered
    assert rel_error(first, ref) < 1e-5
    assert cupy.asnumpy(first).tobytes() == cupy.asnumpy(second).tobytes()
    (context, entries), = json.loads(cache_file.read_text())["choices"].items()
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    assert context.startswith("gemm | ") and (name.decode() if isinstance(name, bytes) else name) in context
    assert [json.loads(key)[:4] for key in entries] == [["nt", 65, 33, 515]]  # x·wᵀ: (65, 515) @ (515, 33)


_WRITER = """
import sys
from cnn_gpu.cuda import autotune
tuner = autotune.Autotuner(cache_file=sys.argv[1], timer=lambda run: run(),
                           context=lambda family: "gemm | Fake GPU sm_90 | source 1")
writer, keys = int(sys.argv[2]), int(sys.argv[3])
for k in range(keys):
    assert tuner.pick("gemm", ("writer", writer, k), lambda: [[1], [2], [3]], lambda c: c[0] if k % 2 else -c[0]) \
        == ([1] if k % 2 else [3])
"""


def test_concurrent_processes_lose_no_entry(cache_file):
    """Four processes tuning 60 keys each at the same time, every one merging into the same cache file:
    every entry of every process is in the file afterwards (the file lock serialises read-merge-write)."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(autotune.__file__).parents[2])
    writers, keys = 4, 60
    processes = [subprocess.Popen([sys.executable, "-c", _WRITER, str(cache_file), str(w), str(keys)],
                                  env={"PYTHONPATH": root, "PATH": ""}, stderr=subprocess.PIPE, text=True)
                 for w in range(writers)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    stored = stored_choices(cache_file)
    assert len(stored) == writers * keys
    for w in range(writers):
        for k in range(keys):
            assert stored[json.dumps(["writer", w, k])] == ([1] if k % 2 else [3])
    assert not [p for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_threads_tune_a_key_once_and_never_time_against_each_other(cache_file):
    """Eight threads' first calls for one key: one thread times the candidates, the others wait for its choice;
    no two timed runs overlap. Other keys, from other threads meanwhile, all reach the file."""
    import threading
    import time

    running, overlaps = [0], []
    guard = threading.Lock()

    def timer(run):
        with guard:
            running[0] += 1
            overlaps.append(running[0] > 1)
        time.sleep(0.01)
        with guard:
            running[0] -= 1
        return run()

    tuner = autotune.Autotuner(cache_file=cache_file, timer=timer, context=lambda family: "gemm | Fake GPU sm_90 | source 1")
    op = FakeOp({DEFAULT: 3.0, WIDE: 1.0, SMALL: 2.0})
    results = []
    barrier = threading.Barrier(8)

    def first_call():
        barrier.wait()
        results.append(op.pick(tuner))

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [WIDE] * 8
    assert sorted(op.runs) == sorted(CANDIDATES) and not any(overlaps)  # each candidate timed once, alone

    def other_keys(t):
        for k in range(20):
            FakeOp({DEFAULT: 1.0, WIDE: 2.0, SMALL: 3.0}).pick(tuner, key=("thread", t, k))

    threads = [threading.Thread(target=other_keys, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored_choices(cache_file)) == 1 + 4 * 20
def test_the_gpu_run_asks_for_unverified_variants():
    """benchmarks/gpu_run.sh is how unverified variants get run on a GPU: it offers them for the whole run."""
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_run.sh").read_text()
    assert f"export {variants.UNVERIFIED_VARIABLE}=1" in script
