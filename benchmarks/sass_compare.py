"""Compare the SASS of every compiled kernel variant between two versions of the code, with no GPU.

    python benchmarks/sass_compare.py compare 47aefdb              # that commit against the working tree
    python benchmarks/sass_compare.py compare 47aefdb HEAD --rename conv2d_sum_partials=sum_splits_bias_act
    python benchmarks/sass_compare.py dump OUT_DIR [--families conv2d gemm]   # this checkout's SASS
    python benchmarks/sass_compare.py diff BEFORE_DIR AFTER_DIR [--diffs DIFF_DIR]
    python benchmarks/sass_compare.py reference tests/data/implicit_gemm_sass.json 0caa3a7   # the test's record

A refactor of kernels/ that should not change what runs is proved by this: every kernel of every variant
below, compiled by NVRTC for sm_80 and sm_90 exactly as run time compiles it (cnn_gpu.cuda.compile_check,
with -Xptxas=-v), read back from the CUBIN with cuobjdump, is byte-identical before and after, and so are
ptxas's registers, shared memory and spills. `compare` extracts a commit's cnn_gpu/ and kernels/ into a
temporary folder (git archive) and runs `dump` there, so each side compiles its own kernels with the define
sets its own Python gives (ConvTile.defines, TileConfig.defines).

Variants: every conv2d tile the autotuner may pick (CONV_TILES: forward, split forward, backward-data,
backward-filter, the bias gradient and the split sum, all in one module per tile); every gemm tile config
(TILE_CONFIGS: gemm_{nn,nt,tn,tt} and the split sum); every other family at its kernel defaults; and, for
the families compiled per layer shape, a sample of the define sets their planners produce (the layers the
tests compile: a 1-filter and an RGB forward, stride 2, a 3×5 window; 1- and 3-channel backward-filter).
`reference` records, for tests/test_sass_identity.py, the sha256 of every conv2d kernel's normalised SASS per
tile variant and arch at a commit, with the NVRTC and cuobjdump versions that produced it: the test recompiles the
recorded define sets and holds the working tree's kernels to those hashes in CI, where no older commit is at hand.

A kernel renamed on purpose is paired with --rename OLD=NEW. Not compared: the function's name line, and the
width of the blanks between columns (cuobjdump aligns them to the widest line of the whole dump). A kernel only the
second side has is reported as ADDED (new kernels beside unchanged ones); one only the first side has as REMOVED.
The exit status is 0 only when every kernel of the first side is on the second, identical.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ARCHS = ("sm_80", "sm_90")
REPO = Path(__file__).resolve().parent.parent

# Per-layer define sets (kernels/conv2d_direct.cu: conv2d_fwd_few_filters' FEWK_*, conv2d_bwd_filter_few_channels'
# FEWC_*), pool.cu's fixed-window forward and conv2d_depthwise.cu's (below), as the planners produce them for
# layers the tests compile.
PER_LAYER_DEFINES = {
    "conv2d_direct": (
        dict(FEWK_K=1, FEWK_R=3, FEWK_S=3, FEWK_SH=1, FEWK_SW=1, FEWK_BX=25, FEWK_BY=5, FEWK_U=4),
        dict(FEWK_K=3, FEWK_R=3, FEWK_S=3, FEWK_SH=1, FEWK_SW=1, FEWK_BX=8, FEWK_BY=16, FEWK_U=2),
        dict(FEWK_K=4, FEWK_R=3, FEWK_S=3, FEWK_SH=2, FEWK_SW=2, FEWK_BX=8, FEWK_BY=16, FEWK_U=1),
        dict(FEWK_K=2, FEWK_R=3, FEWK_S=5, FEWK_SH=1, FEWK_SW=1, FEWK_BX=22, FEWK_BY=2, FEWK_U=4),
        dict(FEWC_C=1, FEWC_R=3, FEWC_S=3, FEWC_SW=1, FEWC_FILTERS=6),
        dict(FEWC_C=3, FEWC_R=3, FEWC_S=3, FEWC_SW=2, FEWC_FILTERS=1),
        dict(FEWC_C=1, FEWC_R=1, FEWC_S=32, FEWC_SW=3, FEWC_FILTERS=2),
    ),
    "pool": (dict(FIXED_WINDOW_R=2, FIXED_WINDOW_S=2), dict(FIXED_WINDOW_R=3, FIXED_WINDOW_S=3)),
}


def _depthwise(r, s, stride, dilation, u, v, bx, by, bp, rc, threads):
    return dict(DEPTHWISE_R=r, DEPTHWISE_S=s, DEPTHWISE_SH=stride, DEPTHWISE_SW=stride, DEPTHWISE_DH=dilation,
                DEPTHWISE_DW=dilation, DEPTHWISE_U=u, DEPTHWISE_V=v, DEPTHWISE_BX=bx, DEPTHWISE_BY=by, DEPTHWISE_BP=bp,
                DEPTHWISE_RC=rc, DEPTHWISE_THREADS=threads)


# kernels/conv2d_depthwise.cu as its planner compiles it for the bench's MobileNetV2 3×3 (stride 1 and 2), ConvNeXt
# 7×7 and RepLKNet 31×31 layers (backward-filter a window row a pass), a dilation-2 and a 5×5 stride-2 layer.
PER_LAYER_DEFINES["conv2d_depthwise"] = (
    _depthwise(3, 3, 1, 1, 2, 4, 14, 9, 1, 3, 128), _depthwise(3, 3, 2, 1, 2, 4, 7, 14, 1, 3, 128),
    _depthwise(7, 7, 1, 1, 2, 8, 7, 18, 1, 7, 128), _depthwise(31, 31, 1, 1, 2, 8, 7, 18, 1, 1, 192),
    _depthwise(3, 3, 1, 2, 2, 4, 3, 5, 2, 3, 32), _depthwise(5, 5, 2, 1, 2, 4, 2, 3, 2, 5, 32),
)

_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")


def variants(families=None) -> list:
    """[(label, family, defines)] of everything compared: labels name the variant, not its define spelling,
    so the two sides pair up even where the define names differ."""
    from cnn_gpu.cuda import loader
    from cnn_gpu.ops.conv import CONV_TILES
    from cnn_gpu.ops.gemm import TILE_CONFIGS

    out = []
    for family in loader.FAMILIES:
        if families and family not in families:
            continue
        if family == "conv2d":
            out += [(f"conv2d {t.bm}x{t.bn}x{t.bk} thread {t.tm}x{t.tn}", family, t.defines) for t in CONV_TILES]
        elif family == "gemm":
            out += [(f"gemm {c.tile_m}x{c.tile_n}x{c.tile_k} thread {c.thread_m}x{c.thread_n} min {c.min_blocks_per_sm}",
                     family, c.defines) for c in TILE_CONFIGS]
        else:
            out.append((f"{family} defaults", family, {}))
            out += [(f"{family} " + " ".join(f"{k}={v}" for k, v in d.items()), family, d)
                    for d in PER_LAYER_DEFINES.get(family, ())]
    return out


def split_functions(sass: str) -> dict:
    """{kernel: its SASS text without the 'Function : name' line} from cuobjdump --dump-sass output."""
    functions, current = {}, None
    for line in sass.splitlines():
        match = _FUNCTION.match(line)
        if match:
            current = match.group(1)
            functions[current] = []
        elif current is not None:
            functions[current].append(line.rstrip())
    return {name: "\n".join(lines).strip("\n") + "\n" for name, lines in functions.items()}


def _compile(job):
    """(label, arch, {kernel: sass}, ptxas report, log) for one variant: run in a worker process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cnn_gpu.cuda import compile_check
    from sass_report import dump_sass

    label, family, defines, arch = job
    result = compile_check.compile_family(family, arch, defines, want_cubin=True)
    if not result.ok:
        return label, arch, None, {}, result.log
    return label, arch, split_functions(dump_sass(result.cubin)), result.report, result.log


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def dump(out: Path, families=None, jobs: int = 2) -> int:
    """Write out/<arch>/<variant>/<kernel>.sass and out/resources.json (ptxas -v per kernel) for this checkout."""
    for arch in ARCHS:  # a fresh dump: no kernel left over from an earlier one
        if (out / arch).is_dir():
            shutil.rmtree(out / arch)
    out.mkdir(parents=True, exist_ok=True)
    work = [(label, family, defines, arch) for label, family, defines in variants(families) for arch in ARCHS]
    resources, failed = {}, []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for label, arch, functions, report, log in pool.map(_compile, work):
            if functions is None:
                failed.append(f"{label} ({arch}):\n{log}")
                continue
            folder = out / arch / _folder_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            for kernel, text in functions.items():
                (folder / f"{kernel}.sass").write_text(text)
            resources.setdefault(arch, {})[label] = report
            print(f"{arch} {label}: {len(functions)} kernels", flush=True)
    index = {"variants": [[label, family, defines] for label, family, defines in variants(families)], "resources": resources}
    tmp = out / "resources.json.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, out / "resources.json")
    for f in failed:
        print(f"FAILED to compile {f}", file=sys.stderr)
    return 1 if failed else 0


def normalise(sass: str) -> str:
    """The SASS with each line's runs of blanks as one space: cuobjdump pads its columns to the widest instruction
    text of the whole dump, so an unchanged kernel's spacing moves when another kernel's longest line does."""
    return "\n".join(" ".join(line.split()) for line in sass.splitlines()) + "\n"


def _load(folder: Path) -> tuple:
    """({(arch, variant folder, kernel): normalised sass}, {(arch, variant folder, kernel): ptxas report})."""
    sass = {(p.parts[-3], p.parts[-2], p.stem): normalise(p.read_text()) for p in folder.glob("*/*/*.sass")}
    index = json.loads((folder / "resources.json").read_text())
    resources = {(arch, _folder_name(label), kernel): r for arch, by_label in index["resources"].items()
                 for label, report in by_label.items() for kernel, r in report.items()}
    return sass, resources


def _instructions(text: str) -> int:
    return sum(1 for line in text.splitlines() if re.match(r"^\s*/\*[0-9a-f]{4,}\*/", line))


_OPCODE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def opcode_changes(before: str, after: str) -> str:
    """'IMAD 239->240, MOV 201->207' for the base opcodes (LDG.E.128 counts as LDG) whose counts differ."""
    count = lambda text: Counter(m.group(1) for m in map(_OPCODE.match, text.splitlines()) if m)  # noqa: E731
    a, b = count(before), count(after)
    return ", ".join(f"{op} {a[op]}->{b[op]}" for op in sorted(set(a) | set(b)) if a[op] != b[op]) or "none"


def diff(before: Path, after: Path, renames: dict, diffs: Path | None = None) -> int:
    """Print the comparison of two dumps; 0 when every kernel's SASS and resources are identical."""
    old_sass, old_res = _load(before)
    new_sass, new_res = _load(after)
    rename = lambda key: (key[0], key[1], renames.get(key[2], key[2]))  # noqa: E731
    old_sass = {rename(k): v for k, v in old_sass.items()}
    old_res = {rename(k): v for k, v in old_res.items()}
    identical, changed = [], []
    for key in sorted(set(old_sass) & set(new_sass)):
        if old_sass[key] == new_sass[key] and old_res.get(key) == new_res.get(key):
            identical.append(key)
            continue
        changed.append(key)
        a, b = old_sass[key].splitlines(), new_sass[key].splitlines()
        delta = list(difflib.unified_diff(a, b, "before", "after", lineterm="", n=3))
        plus = sum(1 for line in delta if line.startswith("+") and not line.startswith("+++"))
        minus = sum(1 for line in delta if line.startswith("-") and not line.startswith("---"))
        res = "" if old_res.get(key) == new_res.get(key) else f"; resources {old_res.get(key)} -> {new_res.get(key)}"
        print(f"DIFFERS {' | '.join(key)}: {_instructions(old_sass[key])} -> {_instructions(new_sass[key])} "
              f"instructions, -{minus} +{plus} lines{res}; opcode counts changed: {opcode_changes(old_sass[key], new_sass[key])}")
        if diffs is not None:
            path = diffs / key[0] / _folder_name(key[1]) / f"{key[2]}.diff"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(delta) + "\n")
    only_before = sorted(set(old_sass) - set(new_sass))
    only_after = sorted(set(new_sass) - set(old_sass))
    for key in only_before:
        print(f"REMOVED {' | '.join(key)}")
    for key in only_after:
        print(f"ADDED {' | '.join(key)}: {_instructions(new_sass[key])} instructions, {new_res.get(key)}")
    variants_compared = len({k[:2] for k in identical + changed})
    print(f"{len(identical) + len(changed)} kernels compared over {variants_compared} (variant, arch) pairs: "
          f"{len(identical)} identical (SASS and ptxas registers/smem/spills), {len(changed)} differ, "
          f"{len(only_before)} removed, {len(only_after)} added")
    return 0 if not (changed or only_before) else 1


def sass_sha256(sass: str) -> str:
    """The hash a kernel's SASS is recorded by: sha256 of its normalised text."""
    return hashlib.sha256(normalise(sass).encode()).hexdigest()


def tool_versions() -> dict:
    """{'nvrtc': 'major.minor', 'cuobjdump': its release line}: what a recorded hash depends on besides the source."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cnn_gpu.cuda import compile_check
    from sass_report import find_cuobjdump

    text = subprocess.run([find_cuobjdump(), "--version"], check=True, capture_output=True, text=True).stdout
    release = next((line.strip() for line in text.splitlines() if "release" in line), text.strip())
    return {"nvrtc": compile_check.nvrtc_version(), "cuobjdump": release}


def reference(out: Path, rev: str, jobs: int) -> int:
    """Write out (JSON): commit rev's conv2d variants (label, defines) and each kernel's sass_sha256 per arch."""
    with tempfile.TemporaryDirectory() as tmp:
        dump_dir = Path(tmp) / "dump"
        _dump_revision(rev, dump_dir, ["conv2d"], jobs)
        index = json.loads((dump_dir / "resources.json").read_text())
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], check=True, capture_output=True,
                                text=True).stdout.strip()
        record = {"commit": commit, "archs": list(ARCHS), **tool_versions(), "variants": []}
        for label, family, defines in index["variants"]:
            kernels = {}
            for arch in ARCHS:
                for path in sorted((dump_dir / arch / _folder_name(label)).glob("*.sass")):
                    kernels.setdefault(path.stem, {})[arch] = sass_sha256(path.read_text())
            record["variants"].append({"label": label, "family": family, "defines": defines, "sha256": kernels})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out.with_name(out.name + ".tmp")
    tmp_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_path, out)
    print(f"{out}: {sum(len(v['sha256']) for v in record['variants'])} kernels x {len(ARCHS)} archs of "
          f"{len(record['variants'])} variants at {commit[:7]} (NVRTC {record['nvrtc']})")
    return 0


def _dump_revision(rev: str, out: Path, families, jobs: int) -> None:
    """Dump the SASS of commit rev (its cnn_gpu/ and kernels/, extracted with git archive) into out."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "cnn_gpu", "kernels"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        _dump_checkout(Path(tmp), out, families, jobs)


def _dump_checkout(root: Path, out: Path, families, jobs: int) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), "dump", str(out.resolve()), "--jobs", str(jobs)]
    if families:
        command += ["--families", *families]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(root)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_dump = sub.add_parser("dump", help="this checkout's SASS (the cnn_gpu on PYTHONPATH) into a folder")
    p_dump.add_argument("out", type=Path)
    p_diff = sub.add_parser("diff", help="compare two dumps")
    p_diff.add_argument("before", type=Path)
    p_diff.add_argument("after", type=Path)
    p_cmp = sub.add_parser("compare", help="dump a commit and the working tree (or a second commit) and compare")
    p_cmp.add_argument("before_rev")
    p_cmp.add_argument("after_rev", nargs="?", default=None, help="default: the working tree")
    p_cmp.add_argument("--keep", type=Path, default=None, help="keep both dumps under this folder")
    p_ref = sub.add_parser("reference", help="record a commit's conv2d SASS hashes (tests/test_sass_identity.py)")
    p_ref.add_argument("out", type=Path)
    p_ref.add_argument("rev")
    p_ref.add_argument("--jobs", type=int, default=2, help="compiles in parallel")
    for p in (p_dump, p_cmp):
        p.add_argument("--families", nargs="*", default=None, help="only these kernel families")
        p.add_argument("--jobs", type=int, default=2, help="compiles in parallel")
    for p in (p_diff, p_cmp):
        p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                       help="pair kernel OLD of the first side with NEW of the second")
        p.add_argument("--diffs", type=Path, default=None, help="write each differing kernel's unified diff here")
    args = parser.parse_args(argv)

    if args.command == "dump":
        return dump(args.out, args.families, args.jobs)
    if args.command == "reference":
        return reference(args.out, args.rev, args.jobs)
    renames = dict(r.split("=", 1) for r in args.rename)
    if args.command == "diff":
        return diff(args.before, args.after, renames, args.diffs)
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        before, after = root / "before", root / "after"
        _dump_revision(args.before_rev, before, args.families, args.jobs)
        if args.after_rev:
            _dump_revision(args.after_rev, after, args.families, args.jobs)
        else:
            _dump_checkout(REPO, after, args.families, args.jobs)
        return diff(before, after, renames, args.diffs)


if __name__ == "__main__":
    sys.exit(main())
