"""The scale section of the benchmark, ``python benchmarks/run.py --scale``:
thousands of small scans, on this machine.

1. A synthetic corpus (generated once into ``--scale-dir``, reused while the
   generator's version and size match): ``--scale-files`` (2000) valid NIfTI
   files of shapes drawn from 24..48 per axis, spacings from 0.7..2 mm, a
   third of them stored in another orientation, each a smooth random field
   with a bright "head"; plus the bad files a real folder holds: garbage
   bytes with a .nii.gz name, an empty file, a 2-D image, a NaN-filled one,
   an exact duplicate, and one that a thread rewrites every few milliseconds
   while the preparing job runs.
2. ``rubikops.data.prepare`` (no resampling, no intensity change: the
   cheapest settings) with 1 and 2 workers, each into a fresh folder:
   files/s, and a check that report.json lists every bad file with the
   expected reason and the manifest every good one.
3. Puzzle batches (``bank.puzzles`` in a loop) from a resident VolumeBank of
   the whole prepared corpus against a StreamingBank of the same volumes
   holding 10% of the corpus bytes, the two alternated in rounds.
   Floor: streaming >= 0.9 x resident puzzles/s (medians over the rounds).
4. Peak host RSS per rank of ``train/pretrain.py --data-prepared`` as a
   2-rank gloo job (OMP_NUM_THREADS=1, ``--preset tiny``).  Corpus bytes:
   the prepared volumes' float32 bytes (sum of C*X*Y*Z*4 over the manifest).
   The fixed overhead is what the same command peaks at on a tiny prepared
   corpus (the first 20 good files); floor: each rank's peak <= 0.6 x corpus
   bytes + that overhead (the larger rank's).  Measured for the float32
   resident bank (the default), int16 storage and ``--bank-budget`` (10% of
   the corpus bytes); the floor holds when one of them meets it, and the
   table says which.

``--quick``: 40 files, shorter rounds, the float32 bank only; floors are
printed but not enforced (the bad-file checks are)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

import utils

import rubikops
from rubikops.data import Preprocessing, VolumeBank, load_prepared, prepare, read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATOR_VERSION = 1  # bump when what make_corpus writes changes
OWNER = "rubikops-scale-bench.json"  # marks a folder this benchmark made (it deletes only inside those)
FILES, QUICK_FILES = 2000, 40
TINY_FILES, QUICK_TINY_FILES = 20, 10
SHAPES = (24, 48)  # per axis, inclusive
SETTINGS = Preprocessing(intensity="none")  # = python -m rubikops.data prepare SRC --out DIR (its defaults)
SPEED_FLOOR = 0.9  # streaming / resident puzzles/s
MEMORY_FRACTION = 0.6  # of the corpus bytes, per rank, on top of the overhead
BUDGET_FRACTION = 0.1  # of the corpus bytes
CHANGING = "bad-changing.nii.gz"
BAD = {  # file -> the reason report.json must give
    "bad-garbage.nii.gz": "unreadable",
    "bad-empty.nii.gz": "empty",
    "bad-2d.nii.gz": "not 3-D",
    "bad-nan.nii.gz": "NaN or Inf voxels",
    CHANGING: "changed during the job",
}
MIB = 2**20


# -- the corpus ----------------------------------------------------------------------------------
def smooth_volume(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """A smooth random field (three cumulative sums of noise) plus a slope and a
    bright ellipsoid "head", so puzzle cubes have structure; int16, as scans are stored."""
    x = rng.standard_normal(shape, dtype=np.float32)
    for axis in range(3):
        np.cumsum(x, axis=axis, out=x)
    x -= x.mean()
    x /= x.std() + 1e-6
    z, y, w = (np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
               for i, n in enumerate(shape))
    x += 3 * (z + 0.5 * y) + 5 * ((z ** 2 + y ** 2 + w ** 2) < 0.8)
    return np.rint(x * 50 + 200).astype(np.int16)


def _affine(rng: np.random.Generator, flip: bool) -> np.ndarray:
    spacing = rng.uniform(0.7, 2.0, 3)
    aff = np.diag([*spacing, 1.0])
    if flip:  # stored left-posterior: preparing reorients it to RAS
        aff[0, 0], aff[1, 1] = -aff[0, 0], -aff[1, 1]
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    return aff


def own_folder(path: str) -> str:
    """``path``, made or reused only when this benchmark made it (it deletes inside it)."""
    os.makedirs(path, exist_ok=True)
    mark = os.path.join(path, OWNER)
    if not os.path.exists(mark):
        if os.listdir(path):
            raise SystemExit(f"--scale-dir {path}: not empty and not made by this benchmark "
                             f"(no {OWNER}); choose another folder")
        with open(mark, "w") as f:
            json.dump({"made_by": "benchmarks/scale.py"}, f)
    return path


def make_corpus(root: str, n_good: int, seed: int = 0) -> dict:
    """The corpus under ``root/corpus``, generated unless ``root/corpus.json``
    says an identical one (generator version, size, seed) is there."""
    folder, marker = os.path.join(root, "corpus"), os.path.join(root, "corpus.json")
    want = {"version": GENERATOR_VERSION, "good": n_good, "seed": seed}
    try:
        with open(marker) as f:
            old = json.load(f)
        if {k: old.get(k) for k in want} == want and os.path.isdir(folder):
            print(f"corpus: reusing {folder} ({n_good} good + {len(old['bad'])} bad files)")
            return old
    except (OSError, ValueError):
        pass
    if os.path.exists(marker):
        os.remove(marker)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    import nibabel as nib
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    good = []
    for i in range(n_good):
        shape = tuple(int(s) for s in rng.integers(SHAPES[0], SHAPES[1] + 1, 3))
        name = f"vol{i:05d}.nii.gz"
        nib.save(nib.Nifti1Image(smooth_volume(rng, shape), _affine(rng, i % 3 == 2)), os.path.join(folder, name))
        good.append(name)
    bad = dict(BAD)
    with open(os.path.join(folder, "bad-garbage.nii.gz"), "wb") as f:
        f.write(rng.bytes(4096))
    open(os.path.join(folder, "bad-empty.nii.gz"), "wb").close()
    nib.save(nib.Nifti1Image(np.ones((40, 40), np.float32), np.eye(4)), os.path.join(folder, "bad-2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((24, 24, 24), np.nan, np.float32), np.eye(4)),
             os.path.join(folder, "bad-nan.nii.gz"))
    duplicate = f"zz-duplicate-of-{good[0]}"  # sorts after its original: the original is kept
    shutil.copyfile(os.path.join(folder, good[0]), os.path.join(folder, duplicate))
    bad[duplicate] = "duplicate"
    ChangingFile.create(os.path.join(folder, CHANGING))
    source_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    desc = {**want, "folder": folder, "good_files": good, "bad": bad, "source_bytes": source_bytes,
            "generate_s": time.perf_counter() - t0}
    with open(marker + ".tmp", "w") as f:
        json.dump(desc, f)
    os.replace(marker + ".tmp", marker)  # last: marks the corpus complete
    print(f"corpus: generated {n_good} good + {len(bad)} bad files in {folder} ({source_bytes / MIB:.0f} MiB) "
          f"in {desc['generate_s']:.0f} s")
    return desc


class ChangingFile:
    """``with ChangingFile(path):`` a thread replaces ``path`` (atomically) with
    new content every ``period_s`` until the block ends: a valid volume whose
    every version differs (the gzip header's time stamp counts up), large
    enough (96^3) that reading and preparing it takes longer than a period,
    small on disk (a sphere compresses well), so the rewrites cost little."""

    EDGE = 96

    def __init__(self, path: str, period_s: float = 0.002):
        self.path, self.period_s = path, period_s
        self.versions = 0

    @classmethod
    def create(cls, path: str) -> None:
        import nibabel as nib
        e = cls.EDGE
        z, y, x = np.ogrid[:e, :e, :e]
        ball = ((z - e / 2) ** 2 + (y - e / 2) ** 2 + (x - e / 2) ** 2) < (e / 3) ** 2
        raw = nib.Nifti1Image((300 * ball).astype(np.int16), np.eye(4)).to_bytes()
        with open(path, "wb") as f:
            f.write(gzip.compress(raw, compresslevel=6, mtime=0))

    def __enter__(self):
        with open(self.path, "rb") as f:
            self._data = bytearray(f.read())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="changing-file", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        tmp = self.path + ".tmp"  # not a NIfTI name: the job never lists it
        while not self._stop.wait(self.period_s):
            self.versions += 1
            self._data[4:8] = (self.versions % 2**32).to_bytes(4, "little")  # gzip MTIME
            with open(tmp, "wb") as f:
                f.write(self._data)
            os.replace(tmp, self.path)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- preparing -----------------------------------------------------------------------------------
def time_prepare(corpus: dict, out: str, workers: int) -> tuple:
    """Seconds to prepare the corpus into a fresh ``out`` with ``workers``
    processes, the changing file changing throughout; and how often it changed."""
    shutil.rmtree(out, ignore_errors=True)
    with ChangingFile(os.path.join(corpus["folder"], CHANGING)) as changing:
        t0 = time.perf_counter()
        prepare(corpus["folder"], out, SETTINGS, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
    return seconds, changing.versions


def check_prepared(out: str, corpus: dict) -> dict:
    """What report.json and manifest.json say, against what the corpus holds:
    every bad file skipped for its reason, every good one prepared."""
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    skipped = {os.path.basename(s["file"]): s["reason"] for s in report["skipped"]}
    prepared = {os.path.basename(v["sources"][0]) for v in read_manifest(out)["volumes"]}
    problems = []
    for name, reason in corpus["bad"].items():
        if name not in skipped:
            problems.append(f"{name}: not in report.json" + (" (it was prepared)" if name in prepared else ""))
        elif skipped[name] != reason:
            problems.append(f"{name}: reported as {skipped[name]!r}, expected {reason!r}")
    problems += [f"{name}: skipped ({skipped[name]}) but valid" for name in sorted(set(skipped) - set(corpus["bad"]))]
    missing = sorted(set(corpus["good_files"]) - prepared)
    if missing:
        problems.append(f"{len(missing)} good file(s) not prepared, e.g. {missing[0]}")
    return {"skipped": skipped, "prepared": len(prepared), "problems": problems}


def bench_prepare(corpus: dict, root: str, order: tuple) -> tuple:
    """Prepare the corpus into a fresh folder once per entry of ``order``
    (1, 2, 2, 1: a drift of the machine's other load cancels out): rows,
    the checks of each worker count (problems of all its runs), and the times."""
    n_files = len(corpus["good_files"]) + len(corpus["bad"])
    times, checks, versions = {}, {}, {}
    for workers in order:
        out = os.path.join(root, f"prepared-w{workers}")
        seconds, changed = time_prepare(corpus, out, workers)
        check = check_prepared(out, corpus)
        if workers in checks:
            check["problems"] = checks[workers]["problems"] + check["problems"]
        checks[workers] = check
        times.setdefault(workers, []).append(seconds)
        versions.setdefault(workers, []).append(changed)
        print(f"prepare, {workers} worker(s): {n_files} files in {seconds:.1f} s = {n_files / seconds:.1f} files/s; "
              f"{check['prepared']} volumes, {len(check['skipped'])} skipped (the changing file was rewritten "
              f"{changed} times during the job)")
    rows, prep = [], {}
    base = utils.timing_of(times[1]).median_s
    for workers in sorted(times):
        t = utils.timing_of(times[workers])
        prep[workers] = {"seconds": times[workers], "median_s": t.median_s, "files_per_s": n_files / t.median_s,
                         "changing_file_versions": versions[workers]}
        rows.append(utils.Row(f"scale: prepare, {workers} worker{'s' if workers > 1 else ''}",
                              f"{n_files} NIfTI files ({len(corpus['bad'])} bad), {SHAPES[0]}-{SHAPES[1]} per axis",
                              t, 0, baseline_s=base, extra={"files_per_s": n_files / t.median_s}))
    return rows, checks, prep


def corpus_bytes(out: str) -> tuple:
    """(float32 bytes of the prepared volumes, bytes of the largest (C, X, Y, Z) box
    around them: a StreamingBank slot)."""
    shapes = np.array([v["shape"] for v in read_manifest(out)["volumes"]], dtype=np.int64)
    return int(np.prod(shapes, axis=1).sum()) * 4, int(np.prod(shapes.max(0))) * 4


# -- puzzles/s: resident against streaming -------------------------------------------------------
def puzzle_task():
    """2x2x2 cubes of 10^3 with gaps up to 4: a 24^3 crop, the smallest volume."""
    return rubikops.RubikCube(grid=(2, 2, 2), cube_size=10, gap=(0, 4), num_permutations=24, rotations="paper",
                              validate=False)


def bench_streaming(out: str, budget: int, quick: bool, batch: int = 32) -> tuple:
    """Rows and result of bank.puzzles from the resident bank against the
    streaming bank over the same volumes, rounds alternating (which goes first
    too), each round at least ``round_s`` of batches; None as the result when
    this checkout has no StreamingBank."""
    try:
        from rubikops.data import StreamingBank
    except ImportError:
        return [], {"status": "NOT MEASURED", "why": "rubikops.data.StreamingBank is not in this checkout"}
    rounds, round_s = (2, 0.3) if quick else (6, 2.0)
    vols = load_prepared(out)
    task = puzzle_task()
    t0 = time.perf_counter()
    banks = {"resident": VolumeBank(vols, "cpu")}
    build = {"resident": time.perf_counter() - t0}
    t0 = time.perf_counter()
    banks["streaming"] = StreamingBank(vols, "cpu", budget=budget, seed=0)
    build["streaming"] = time.perf_counter() - t0
    gens = {k: torch.Generator().manual_seed(0) for k in banks}
    for k, bank in banks.items():  # warm-up: first-call checks, allocator
        for _ in range(3):
            bank.puzzles(task, batch, gens[k])
    per_batch = {k: [] for k in banks}
    for r in range(rounds):
        for k in (("resident", "streaming") if r % 2 == 0 else ("streaming", "resident")):
            n, t0 = 0, time.perf_counter()
            while True:
                banks[k].puzzles(task, batch, gens[k])
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= round_s:
                    break
            per_batch[k].append(elapsed / n)
    timing = {k: utils.timing_of(v) for k, v in per_batch.items()}
    rate = {k: batch / t.median_s for k, t in timing.items()}
    ratio = rate["streaming"] / rate["resident"]
    paired = float(np.median([a / b for a, b in zip(per_batch["resident"], per_batch["streaming"])]))
    streaming = banks["streaming"]
    wl = (f"B={batch} 8x10^3 gap<=4 from {len(vols)} prepared volumes, {rounds} alternated rounds "
          f">= {round_s:g} s")
    nbytes = 2 * batch * 8 * 10 ** 3 * 4
    rows = [utils.Row("scale: puzzles, resident VolumeBank", wl, timing["resident"], nbytes,
                      extra={"puzzles_per_s": rate["resident"]}),
            utils.Row(f"scale: puzzles, StreamingBank {budget / MIB:.0f} MiB", wl, timing["streaming"], nbytes,
                      baseline_s=timing["resident"].median_s,
                      extra={"puzzles_per_s": rate["streaming"], "ratio_to_resident": ratio})]
    result = {"status": _status(ratio >= SPEED_FLOOR), "ratio": ratio, "paired_ratio_median": paired,
              "puzzles_per_s": rate, "rounds": rounds, "round_s": round_s, "batch": batch,
              "budget_bytes": budget, "bank_bytes": {k: b.storage.numel() * b.storage.element_size()
                                                     for k, b in banks.items()},
              "streaming_slots": getattr(streaming, "slots", None), "volumes": len(vols),
              "volumes_loaded": getattr(streaming, "loads", None), "build_s": build}
    print(f"puzzles/s, {len(vols)} volumes: resident VolumeBank {rate['resident']:.0f}, StreamingBank "
          f"({budget / MIB:.1f} MiB, {result['streaming_slots']} slots) {rate['streaming']:.0f}: ratio {ratio:.3f} "
          f"(median of per-round ratios {paired:.3f}; {result['volumes_loaded']} volumes streamed in)")
    return rows, result


# -- peak RSS of a 2-rank gloo run ---------------------------------------------------------------
def pretrain_2ranks(prepared: str, out: str, flags: list) -> dict:
    """train/pretrain.py --data-prepared as a 2-rank gloo job: its summary's
    peak RSS per rank and puzzles/s, and the wall time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train", "pretrain.py"), "--preset", "tiny", "--data-prepared", prepared,
           "--out", out, "--no-progress", "--no-tensorboard", "--device", "cpu", "--eval-puzzles", "8", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"rss": [int(r) for r in summary["peak_host_rss_bytes"]], "puzzles_per_s": summary["puzzles_per_s"],
            "wall_s": wall}


def has_bank_budget() -> bool:
    """Whether this checkout's train/pretrain.py takes --bank-budget."""
    with open(os.path.join(ROOT, "train", "pretrain.py")) as f:
        return "bank_budget:" in f.read()


def bench_memory(prepared: str, tiny: str, runs: str, cbytes: int, budget: int, quick: bool) -> tuple:
    configs = [("float32 resident", [])]  # the default
    if not quick:
        configs.append(("int16 resident", ["--storage-dtype", "int16"]))
        if has_bank_budget():
            configs.append(("--bank-budget", ["--bank-budget", str(budget)]))
    rows, results = [], []
    for name, flags in configs:
        tag = name.strip("-").replace(" ", "-")
        base = pretrain_2ranks(tiny, os.path.join(runs, f"{tag}-tiny"), flags)
        run = pretrain_2ranks(prepared, os.path.join(runs, tag), flags)
        overhead = max(base["rss"])
        limit = MEMORY_FRACTION * cbytes + overhead
        ok = all(r <= limit for r in run["rss"])
        results.append({"config": name, "flags": flags, "rss_bytes": run["rss"], "overhead_rss_bytes": base["rss"],
                        "overhead_bytes": overhead, "limit_bytes": limit, "status": _status(ok),
                        "puzzles_per_s": run["puzzles_per_s"], "wall_s": run["wall_s"]})
        rows.append(utils.Row(f"scale: 2-rank pretrain, {name}", f"gloo, --preset tiny {' '.join(flags)}".strip(),
                              utils.timing_of([run["wall_s"]]), 0,
                              extra={"peak_rss_rank0_mib": run["rss"][0] / MIB,
                                     "peak_rss_rank1_mib": run["rss"][1] / MIB,
                                     "overhead_mib": overhead / MIB, "limit_mib": limit / MIB,
                                     "puzzles_per_s": run["puzzles_per_s"]}))
        print(f"peak RSS per rank, {name}: {_mib(run['rss'])} MiB; same command on the tiny corpus "
              f"{_mib(base['rss'])} MiB; limit {MEMORY_FRACTION} x {cbytes / MIB:.0f} + {overhead / MIB:.0f} = "
              f"{limit / MIB:.0f} MiB: {results[-1]['status']}")
    return rows, results


# -- the section ---------------------------------------------------------------------------------
def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _mib(values) -> str:
    return ", ".join(f"{v / MIB:.0f}" for v in values)


def default_dir(n_good: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"rubikops-scale-{n_good}")


def bench_scale(args) -> tuple:
    """(rows, section): the rows for the results table and the section's own
    record (corpus, checks, floors), ``section["failed"]`` naming what failed."""
    n_good = args.scale_files or (QUICK_FILES if args.quick else FILES)
    root = own_folder(os.path.abspath(args.scale_dir or default_dir(n_good)))
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    corpus = make_corpus(root, n_good)
    rows, checks, prep = bench_prepare(corpus, root, (1, 2) if args.quick else (1, 2, 2, 1))
    prepared = os.path.join(root, "prepared-w2")
    cbytes, slot = corpus_bytes(prepared)
    budget = max(int(BUDGET_FRACTION * cbytes), 3 * slot)
    print(f"corpus bytes (prepared volumes, float32): {cbytes} = {cbytes / MIB:.1f} MiB; streaming budget "
          f"{budget} bytes = {budget / MIB:.1f} MiB ({budget / cbytes:.1%} of the corpus"
          + (", raised to hold 3 of the largest volumes" if budget > BUDGET_FRACTION * cbytes else "") + ")")
    tiny = os.path.join(root, "prepared-tiny")
    shutil.rmtree(tiny, ignore_errors=True)
    n_tiny = QUICK_TINY_FILES if args.quick else TINY_FILES
    prepare([os.path.join(corpus["folder"], f) for f in corpus["good_files"][:n_tiny]], tiny, SETTINGS,
            progress=False)
    tiny_bytes, _ = corpus_bytes(tiny)
    srows, streaming = bench_streaming(prepared, budget, args.quick)
    rows += srows
    mrows, memory = bench_memory(prepared, tiny, os.path.join(root, "runs"), cbytes, budget, args.quick)
    rows += mrows
    section = {"corpus": {"folder": corpus["folder"], "good": n_good, "bad": corpus["bad"],
                          "source_bytes": corpus["source_bytes"], "shapes": list(SHAPES),
                          "prepare_settings": json.loads(SETTINGS.key()), "corpus_bytes": cbytes,
                          "corpus_bytes_means": "sum over the prepared volumes of C*X*Y*Z*4 (float32)",
                          "tiny_corpus": {"files": n_tiny, "corpus_bytes": tiny_bytes}},
               "checks": {str(w): c for w, c in checks.items()}, "prepare": {str(w): p for w, p in prep.items()},
               "streaming": streaming, "memory": memory, "enforced": not args.quick,
               "load_average_1min": [load_start, os.getloadavg()[0]], "cores": os.cpu_count()}
    section["floors"] = _floors(section)
    section["failed"] = [f["floor"] for f in section["floors"] if f["status"] != "PASS" and (
        f["kind"] == "check" or f["kind"] == "floor" and section["enforced"])]
    section["seconds"] = time.perf_counter() - t_start
    return rows, section


def _floors(section: dict) -> list:
    floors = []
    for w, c in section["checks"].items():
        floors.append({"floor": f"prepare --workers {w}: bad files reported, good ones prepared",
                       "measured": f"{len(c['skipped'])} skipped, {c['prepared']} prepared"
                       + (f"; {'; '.join(c['problems'][:3])}" if c["problems"] else ""),
                       "limit": f"{len(section['corpus']['bad'])} skipped, {section['corpus']['good']} prepared",
                       "status": _status(not c["problems"]), "kind": "check"})
    s = section["streaming"]
    measured = (f"{s['ratio']:.3f} ({s['puzzles_per_s']['streaming']:.0f} / {s['puzzles_per_s']['resident']:.0f})"
                if "ratio" in s else s["why"])
    floors.append({"floor": "StreamingBank puzzles/s / VolumeBank puzzles/s", "measured": measured,
                   "limit": f">= {SPEED_FLOOR}", "status": s["status"], "kind": "floor"})
    for m in section["memory"]:
        floors.append({"floor": f"peak RSS per rank (MiB), {m['config']}", "measured": _mib(m["rss_bytes"]),
                       "limit": f"<= {m['limit_bytes'] / MIB:.0f}", "status": m["status"], "kind": "config"})
    met = [m["config"] for m in section["memory"] if m["status"] == "PASS"]
    floors.append({"floor": f"memory: peak RSS per rank <= {MEMORY_FRACTION} x corpus + overhead",
                   "measured": "met by: " + ", ".join(met) if met else "no configuration meets it",
                   "limit": "one configuration", "status": _status(bool(met)), "kind": "floor"})
    return floors


def format_section(section: dict) -> str:
    """The floors and checks of a scale run, one line each, and what they rest on."""
    c = section["corpus"]
    head = f"{'floor / check':58s} {'measured':>28s} {'limit':>22s} {'result':>6s}"
    lines = [f"corpus: {c['good']} good + {len(c['bad'])} bad NIfTI files ({c['source_bytes'] / MIB:.0f} MiB), "
             f"prepared float32 bytes {c['corpus_bytes']} ({c['corpus_bytes'] / MIB:.1f} MiB)",
             "bad files and the reasons report.json gives (--workers 2): " + ", ".join(
                 f"{n}: {section['checks']['2']['skipped'].get(n, 'NOT REPORTED')}" for n in c["bad"]),
             "prepare: " + ", ".join(f"{w} worker(s) {p['files_per_s']:.1f} files/s (median of "
                                     f"{', '.join(f'{t:.1f}' for t in p['seconds'])} s)"
                                     for w, p in section["prepare"].items())]
    if section["memory"]:
        lines.append("end to end, puzzles/s of each 2-rank --preset tiny run (6 steps, startup included: a rough "
                     "figure, no floor): " + ", ".join(f"{m['config']} {m['puzzles_per_s']:.1f}"
                                                       for m in section["memory"]))
    lines.append("load average (1 min) at the start and end of the section: " + " and ".join(
        f"{v:.1f}" for v in section["load_average_1min"]) + f" on {section['cores']} cores (other processes "
                 "count in it: files/s and puzzles/s are shared-machine figures; the speed floor is a ratio)")
    for m in section["memory"]:
        lines.append(f"overhead, {m['config']}: the same command on the first {c['tiny_corpus']['files']} files "
                     f"peaks at {_mib(m['overhead_rss_bytes'])} MiB per rank; the limit takes the larger")
    lines += ["", head, "-" * len(head)]
    for f in section["floors"]:
        status = (f"({f['status']})" if f["kind"] == "config" else
                  f["status"] + "*" if f["kind"] == "floor" and not section["enforced"] else f["status"])
        lines.append(f"{f['floor']:58s} {f['measured']:>28s} {f['limit']:>22s} {status:>6s}")
    if section["memory"]:
        lines.append("(PASS)/(FAIL): one configuration against the memory floor; the row after them decides")
    if not section["enforced"]:
        lines.append("* --quick: speed and memory floors are not enforced (the bad-file checks are)")
    return "\n".join(lines)


def exit_code(section: dict) -> int:
    """1 when a check fails, or (without --quick) a floor: the per-configuration memory rows
    count through the "one configuration" row."""
    return int(bool(section["failed"]))
