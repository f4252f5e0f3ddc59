"""Adversarial probes of the newer surfaces, as a new and a careless user would try them (issue 28).

``python -m tests.probes`` (from the repository root) prints one line per probe and a table per surface; tests/test_probes.py
runs them and requires zero silently wrong results, zero raw tracebacks and zero user files lost.

Each probe does one thing to one surface and says what a right answer is:

- ``refused(fn, *words)``: a one-line ValueError/TypeError (DataError included) whose message holds
  ``words`` (the argument or file it names); another message is *misleading*, another exception a
  *traceback*, no exception *silently wrong*;
- ``script(main, argv, *words)``: exit code 2 with one ``error:`` line holding ``words``; exit 0 is
  *silently wrong*, an exception escaping ``run_main`` a *traceback*;
- ``correct(fn, check)``: ``fn()`` returns a result ``check`` accepts (else *silently wrong*);
- every probe may name user files (``keep``) that must be byte-identical afterwards (else *data lost*).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

# run as a file, Python puts tests/ first on the path, where tests/triton would hide the triton package
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # as tests/conftest.py: Triton on CPU tensors runs in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from rubikops.data import (Preprocessing, StreamingBank, VolumeBank, load_nifti, load_prepared,  # noqa: E402
                           make_bank, parse_size, prepare, read_manifest)
from rubikops.data.__main__ import main as data_cli  # noqa: E402
from rubikops.data.streaming import slot_bytes  # noqa: E402
from rubikops.tasks import get  # noqa: E402
from tests.train.helpers import script as train_script  # noqa: E402
from tests.train.helpers import smooth_volumes, tiny_args  # noqa: E402

OUTCOMES = ("clear", "misleading", "silently wrong", "raw traceback", "data lost")
CLEAN = (ValueError, TypeError)


@dataclass
class Probe:
    surface: str
    name: str
    run: Callable[[], tuple]          # -> (outcome, detail)
    keep: list = field(default_factory=list)  # user files that must not change


def refused(fn, *words) -> tuple:
    try:
        result = fn()
    except CLEAN as exc:
        text = str(exc)
        if "\n" in text or not all(w in text for w in words):
            return "misleading", f"{type(exc).__name__}: {text[:200]}"
        return "clear", text[:200]
    except Exception as exc:  # noqa: BLE001 (what the probe looks for)
        return "raw traceback", f"{type(exc).__name__}: {str(exc)[:200]}"
    return "silently wrong", f"accepted, returned {type(result).__name__}"


def correct(fn, check) -> tuple:
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001
        return "raw traceback", f"{type(exc).__name__}: {str(exc)[:200]}"
    ok = check(result)
    return ("clear" if ok else "silently wrong"), "correct" if ok else f"wrong result {str(result)[:200]}"


def script(main, argv, *words) -> tuple:
    common = train_script("common")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = common.run_main(main, argv)
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:  # noqa: BLE001
        return "raw traceback", f"{type(exc).__name__}: {str(exc)[:200]}"
    text = err.getvalue().strip()
    if "Traceback" in text:
        return "raw traceback", text.splitlines()[-1][:200]
    if rc == 0:
        return "silently wrong", "exit 0"
    last = text.splitlines()[-1] if text else ""
    if rc != 2 or not last.startswith("error: ") or not all(w in last for w in words):
        return "misleading", f"exit {rc}: {last[:200]}"
    return "clear", last[:200]


def cli(argv, *words) -> tuple:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = data_cli(argv)
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:  # noqa: BLE001
        return "raw traceback", f"{type(exc).__name__}: {str(exc)[:200]}"
    last = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
    if rc == 0:
        return "silently wrong", "exit 0"
    if rc != 2 or not last.startswith("error: ") or not all(w in last for w in words):
        return "misleading", f"exit {rc}: {last[:200]}"
    return "clear", last[:200]


def snapshot(paths) -> dict:
    return {p: open(p, "rb").read() if os.path.isfile(p) else None for p in paths}


# -- fixtures ---------------------------------------------------------------------------------------------
class World:
    """Scans, a prepared folder and a finished tiny pretraining run, made once in a temporary folder."""

    def __init__(self, root: str):
        self.root = root
        self.scans = smooth_volumes(os.path.join(root, "scans"), n=4, shape=(24, 26, 22))
        self.settings = Preprocessing(spacing=1.0, intensity="zscore", crop_foreground=True)
        self.prepared = os.path.join(root, "prepared")
        prepare(self.scans, self.prepared, self.settings, progress=False)
        self.run = os.path.join(root, "run")
        pretrain = train_script("pretrain")
        common = train_script("common")
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert common.run_main(pretrain.main, tiny_args(self.scans, self.run, os.path.join(root, "cache"))) == 0
        self.n = 0

    def fresh(self, name: str) -> str:
        self.n += 1
        return os.path.join(self.root, f"{self.n:03d}-{name}")

    def prepared_copy(self) -> str:
        copy = self.fresh("prepared")
        shutil.copytree(self.prepared, copy)
        return copy

    def edit_manifest(self, edit) -> str:
        folder = self.prepared_copy()
        path = os.path.join(folder, "manifest.json")
        m = json.load(open(path))
        edit(m)
        json.dump(m, open(path, "w"))
        return folder

    def edit_npy(self, edit, i: int = 0) -> str:
        folder = self.prepared_copy()
        path = os.path.join(folder, read_manifest(folder)["volumes"][i]["file"])
        edit(path)
        return folder


def npy_nan(path):
    np.save(path, np.full(np.load(path).shape, np.nan, np.float32))


# -- the probes ---------------------------------------------------------------------------------------------
def data_probes(w: World) -> list:
    s = "prepare / info"
    out = []

    def foreign(name):
        folder = w.fresh("theirs")
        os.makedirs(folder)
        path = os.path.join(folder, name)
        open(path, "w").write('{"mine": 1}')
        return Probe(s, f"--out holding their {name}", lambda: cli(["prepare", w.scans, "--out", folder,
                                                                    "--no-progress"], "did not write", name),
                     keep=[path])
    out += [foreign("manifest.json"), foreign("report.json"), foreign("notes.txt")]
    for flags, word in ((["--spacing", "-1"], "spacing"), (["--spacing", "0"], "spacing"),
                        (["--spacing", "nan"], "spacing"), (["--window", "1,0"], "window"),
                        (["--workers", "0"], "--workers"), (["--rank", "2", "--world", "2"], "--rank")):
        out.append(Probe(s, f"prepare {' '.join(flags)}", lambda f=flags, wd=word: cli(
            ["prepare", w.scans, "--out", w.fresh("o"), "--no-progress", *f], wd)))
    out.append(Probe(s, "--out that is a file", lambda: cli(["prepare", w.scans, "--out", os.path.join(
        w.scans, "v0.nii.gz"), "--no-progress"], "--out is a file"), keep=[os.path.join(w.scans, "v0.nii.gz")]))
    out.append(Probe(s, "info of a missing path", lambda: cli(["info", w.fresh("none")], "no such file")))
    out.append(Probe(s, "info --spacing -1", lambda: cli(["info", w.scans, "--spacing", "-1"], "spacing")))
    out.append(Probe(s, "prepare of a missing SRC", lambda: cli(["prepare", w.fresh("none"), "--out", w.fresh("o"),
                                                                  "--no-progress"], "no such file")))

    def huge_spacing(mm, target):
        def go():
            src = w.fresh("huge")
            shutil.copytree(w.scans, src)
            nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.diag([mm] * 3 + [1.0])),
                     os.path.join(src, "huge.nii.gz"))
            rep = prepare(src, w.fresh("o"), Preprocessing(spacing=target), progress=False)
            return rep
        return lambda: correct(go, lambda r: r.manifest is not None and len(r.skipped) == 1 and
                               r.skipped[0]["file"].endswith("huge.nii.gz"))
    out.append(Probe(s, "a file of 1e6 mm voxels", huge_spacing(1e6, 1.5)))
    out.append(Probe(s, "a file of 1000 mm voxels at --spacing 4", huge_spacing(1000.0, 4.0 / 16)))

    def mixed_ranks():
        folder = w.fresh("ranks")
        prepare(w.scans, folder, w.settings, rank=0, world=2, progress=False)
        prepare(w.scans, folder, Preprocessing(spacing=2.0), rank=1, world=2, progress=False)
        return read_manifest(folder)
    out.append(Probe(s, "ranks prepared with different settings", lambda: refused(mixed_ranks, "other settings")))

    def label_17():
        path = os.path.join(w.fresh("lab") + ".nii.gz")
        lab = np.zeros((4, 4, 4), np.float32)
        lab[0, 0, 0] = 1.7
        nib.save(nib.Nifti1Image(lab, np.eye(4)), path)
        return load_nifti(path, label=True)
    out.append(Probe(s, "a label map of 1.7", lambda: refused(label_17, "non-integer")))
    return out


def bank_probes(w: World) -> list:
    s = "load_prepared / banks"
    out = []
    stream = lambda vols: StreamingBank(vols, budget=2 * slot_bytes(vols), refresh_every=1)  # noqa: E731

    def cut_all(bank):
        task = get("rotation")(cube_size=4)
        for _ in range(2 * len(bank)):
            bank.puzzles(task, 2)
        return bank
    out.append(Probe(s, "a NaN .npy in a VolumeBank", lambda: refused(
        lambda: VolumeBank(load_prepared(w.edit_npy(npy_nan))), "NaN or Inf")))
    out.append(Probe(s, "a NaN .npy in a StreamingBank", lambda: refused(
        lambda: cut_all(stream(load_prepared(w.edit_npy(npy_nan, 1)))), "NaN or Inf")))
    for key, value in (("mean", 1e6), ("std", 0.0), ("mean", -24064.0)):
        out.append(Probe(s, f"manifest {key}={value}", lambda k=key, v=value: refused(
            lambda: VolumeBank(load_prepared(w.edit_manifest(lambda m: m["volumes"][0]["stats"].__setitem__(k, v)))),
            "statistics")))
    out.append(Probe(s, "changed .npy values", lambda: refused(lambda: VolumeBank(load_prepared(
        w.edit_npy(lambda p: np.save(p, np.load(p) * 5 + 3))), dtype="int16"), "statistics")))
    out.append(Probe(s, "a float64 .npy", lambda: refused(lambda: load_prepared(
        w.edit_npy(lambda p: np.save(p, np.load(p).astype(np.float64)))), "dtype")))
    out.append(Probe(s, "an int16 .npy", lambda: refused(lambda: load_prepared(
        w.edit_npy(lambda p: np.save(p, np.load(p).astype(np.int16)))), "dtype")))
    out.append(Probe(s, "a zero-byte .npy", lambda: refused(lambda: load_prepared(
        w.edit_npy(lambda p: open(p, "w").close())), ".npy")))
    edits = {"missing stats": lambda m: m["volumes"][0].pop("stats"),
             "shape as a string": lambda m: m["volumes"][0].__setitem__("shape", "1,2,3,4"),
             "file outside the folder": lambda m: m["volumes"][0].__setitem__("file", "../../etc/passwd"),
             "an absolute file": lambda m: m["volumes"][0].__setitem__("file", "/etc/passwd"),
             "volumes as a dict": lambda m: m.__setitem__("volumes", {}),
             "affine of 3 rows": lambda m: m["volumes"][0].__setitem__("affine", [[1, 0, 0, 0]] * 3)}
    for name, edit in edits.items():
        out.append(Probe(s, f"manifest: {name}", lambda e=edit: refused(lambda: load_prepared(w.edit_manifest(e)),
                                                                          "manifest.json")))

    def part_without_world():
        folder = w.fresh("ranks")
        prepare(w.scans, folder, w.settings, rank=0, world=2, progress=False)
        path = os.path.join(folder, "manifest.rank0.json")
        part = json.load(open(path))
        part.pop("world")
        json.dump(part, open(path, "w"))
        return prepare(w.scans, folder, w.settings, rank=1, world=2, progress=False)
    out.append(Probe(s, "a rank part without world", lambda: refused(part_without_world, "manifest.rank0.json")))
    out.append(Probe(s, "load_prepared(volumes=[9])", lambda: refused(lambda: load_prepared(w.prepared, volumes=[9]),
                                                                       "volumes")))
    arrays = [np.random.default_rng(i).random((1, 10, 10, 10), dtype=np.float32) for i in range(4)]
    if not torch.cuda.is_available():
        out.append(Probe(s, "StreamingBank(device='cuda') on a CPU build", lambda: refused(
            lambda: StreamingBank(arrays, device="cuda", budget=9000), "CUDA")))
    out.append(Probe(s, "StreamingBank(seed=-1)", lambda: refused(lambda: StreamingBank(arrays, budget=9000, seed=-1),
                                                                    "seed")))
    out.append(Probe(s, "names shorter than the volumes", lambda: refused(lambda: VolumeBank(arrays, names=["a"]),
                                                                            "names")))
    for text in ("1e400", "-5", "lots", "0"):
        out.append(Probe(s, f"budget {text}", lambda t=text: refused(lambda: parse_size(t, "budget"), "budget")))
    out.append(Probe(s, "make_bank names shorter than the volumes", lambda: refused(
        lambda: make_bank(arrays, budget=9000, names=["a", "b"]), "names")))
    for calls in ("x", -3, 1.5):
        out.append(Probe(s, f"load_state_dict(calls={calls!r})", lambda c=calls: refused(
            lambda: StreamingBank(arrays, budget=9000).load_state_dict(
                dict(StreamingBank(arrays, budget=9000).state_dict(), calls=c)), "calls")))
    out.append(Probe(s, "a bank state over reordered arrays", lambda: refused(
        lambda: StreamingBank(arrays[::-1], budget=9000).load_state_dict(
            StreamingBank(arrays, budget=9000).state_dict()),
        "volumes_hash")))

    def zscore_stats():
        vols = load_prepared(w.prepared)
        bank = VolumeBank(vols)
        return [(float(bank.stats[0][i]), float(bank.stats[1][i]), np.array(v.data, np.float64))
                for i, v in enumerate(vols)]
    out.append(Probe(s, "prepared statistics equal the content's", lambda: correct(zscore_stats, lambda r: all(
        abs(m - a.mean()) < 1e-6 and abs(sd - a.std()) < 1e-6 for m, sd, a in r))))
    return out


def task_probes(w: World) -> list:
    s = "pretext tasks"
    V = torch.randn(3, 1, 30, 30, 30, generator=torch.Generator().manual_seed(1))
    small = {"rubik": dict(cube_size=6), "jigsaw": dict(cube_size=4, gap=0), "rotation": dict(cube_size=6),
             "relative_location": dict(cube_size=4, gap=0)}
    out = []
    for name, kw in small.items():
        for what, index in (("index 5 of 3", torch.tensor([0, 5])), ("index -1", torch.tensor([0, -1])),
                            ("a float index", torch.tensor([0.0, 1.0])), ("a 2-D index", torch.tensor([[0, 1]]))):
            out.append(Probe(s, f"{name} with {what}", lambda n=name, k=kw, i=index: refused(
                lambda: get(n)(**k)(V, index=i), "index")))
        out.append(Probe(s, f"{name} on meta volumes", lambda n=name, k=kw: refused(
            lambda: get(n)(**k)(torch.empty(3, 1, 30, 30, 30, device="meta")), "meta")))
        bank = VolumeBank([np.zeros((1, 30, 30, 30), np.float32)] * 2)
        out.append(Probe(s, f"{name} with cube_size 1e6, validate=False", lambda n=name, k=kw, b=bank: refused(
            lambda: get(n)(**dict(k, cube_size=10**6), validate=False)(b), "crop")))

        def reference(n=name, k=kw):
            task = get(n)(**k)
            cubes, t = task(V, generator=torch.Generator().manual_seed(2))
            c = task.cube_size
            from rubikops.rotations import apply_code
            want = torch.stack([torch.stack([apply_code(V[i, :, o[0]:o[0] + c[0], o[1]:o[1] + c[1], o[2]:o[2] + c[2]],
                                                        int(t.codes[b, m]))
                                             for m, o in enumerate(t.origins[b].tolist())])
                                for b, i in enumerate(t.index.tolist())])
            return torch.equal(cubes, want)
        out.append(Probe(s, f"{name} cubes equal plain slicing", lambda r=reference: correct(r, bool)))
    out.append(Probe(s, "get(['rubik'])", lambda: refused(lambda: get(["rubik"]), "name")))
    out.append(Probe(s, "normalize=('window', 0, inf)", lambda: refused(
        lambda: get("rotation")(cube_size=6, normalize=("window", 0, float("inf"))), "window")))
    out.append(Probe(s, "volume_shapes with 1 row for 3 volumes", lambda: refused(
        lambda: get("rotation")(cube_size=6)(V, volume_shapes=torch.tensor([[30, 30, 30]])), "volume_shapes")))
    for value in (2.5, "10"):
        out.append(Probe(s, f"num_permutations={value!r}", lambda v=value: refused(
            lambda: get("rubik")(cube_size=4, num_permutations=v), "num_permutations")))
    for option in ("mask_prob", "mask_keep_prob", "mask_fill"):
        out.append(Probe(s, f"{option}='0.5'", lambda o=option: refused(
            lambda: get("rubik")(cube_size=4, **{o: "0.5"}), o)))
    out.append(Probe(s, "volume_offsets without volume_shapes", lambda: refused(
        lambda: get("rotation")(cube_size=6)(V[:1], volume_offsets=torch.zeros(1, 3, dtype=torch.int64)),
        "volume_offsets")))
    out.append(Probe(s, "float volume_shapes", lambda: refused(
        lambda: get("rotation")(cube_size=6)(V, volume_shapes=torch.full((3, 3), 30.0)), "volume_shapes")))
    return out


def script_probes(w: World) -> list:
    pretrain, finetune = train_script("pretrain"), train_script("finetune")
    s, f = "train/pretrain.py", "train/finetune.py"
    out = []
    tiny = lambda *extra: tiny_args(w.scans, w.fresh("run"), os.path.join(w.root, "cache"), *extra)  # noqa: E731

    def yaml(text):
        path = w.fresh("c") + ".yaml"
        open(path, "w").write(text)
        return path
    out.append(Probe(s, "a prepared folder with a NaN volume", lambda: script(pretrain.main, [
        "--preset", "tiny", "--data-prepared", w.edit_npy(npy_nan), "--out", w.fresh("run"), "--no-progress",
        "--no-tensorboard"], "NaN or Inf")))
    for text, word in (("steps: null\n", "steps"), ("steps: 2.7\n", "steps"), ("lr: null\n", "lr"),
                       ("batch_size: 2.5\n", "batch_size"), ("steps: true\n", "steps")):
        out.append(Probe(s, f"YAML {text.strip()}", lambda t=text, wd=word: script(
            pretrain.main, tiny("--config", yaml(t)), wd)))
    out.append(Probe(s, "--bank-budget 1e400", lambda: script(pretrain.main, tiny("--bank-budget", "1e400"),
                                                              "--bank-budget")))
    out.append(Probe(s, "--cube-size 4 on vgg", lambda: script(pretrain.main, tiny("--cube-size", "4"), "--cube-size")))
    for drop in ("optimizer", "config"):
        def crafted(d=drop):
            state = torch.load(os.path.join(w.run, "checkpoints", "step_0000006.pt"), weights_only=False)
            del state[d]
            path = w.fresh("crafted") + ".pt"
            torch.save(state, path)
            return script(pretrain.main, ["--out", w.fresh("o"), "--resume", path, "--steps", "9", "--no-progress"],
                          d)
        out.append(Probe(s, f"a checkpoint without {drop}", crafted))
    summary = [os.path.join(w.run, n) for n in ("summary.json", "config.yaml", "metrics.csv")]
    out.append(Probe(s, "--resume --steps 4 after 6 steps", lambda: script(
        pretrain.main, ["--out", w.run, "--resume", "--steps", "4", "--no-progress"], "--steps"), keep=summary))
    out.append(Probe(s, "--out of a finished run without --resume", lambda: script(
        pretrain.main, tiny_args(w.scans, w.run, os.path.join(w.root, "cache")), "already holds a run"),
        keep=summary))

    def nan_loss():
        cls = pretrain.rubikops.RubikCube
        real = cls.loss
        cls.loss = lambda self, o, t, **kw: (real(self, o, t, **kw)[0] * float("nan"), {})
        try:
            return script(pretrain.main, tiny("--augment", "intensity"), "step 1", "NaN or Inf")
        finally:
            cls.loss = real
    out.append(Probe(s, "a loss that turns NaN", nan_loss))

    def nan_encoder():
        folder = w.fresh("enc")
        os.makedirs(folder)
        state = torch.load(os.path.join(w.run, "encoder.pt"))
        state = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, os.path.join(folder, "encoder.pt"))
        shutil.copy(os.path.join(w.run, "encoder.json"), folder)
        return script(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                      w.fresh("ft"), "--pretrained", os.path.join(folder, "encoder.pt")], "NaN")
    out.append(Probe(f, "a NaN encoder", nan_encoder))

    def one_class():
        path = w.fresh("labels") + ".csv"
        with open(path, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["image", "label"])
            for i in range(4):
                wr.writerow([os.path.join(w.scans, f"v{i}.nii.gz"), "same"])
        return script(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                      w.fresh("ft"), "--csv", path], "2 classes")
    out.append(Probe(f, "a one-class CSV", one_class))
    for weights in ("nan,1,1,1", "inf,1,1,1", "0,0,0,0"):
        out.append(Probe(f, f"--class-weights {weights}", lambda wt=weights: script(finetune.main, [
            "--preset", "tiny", "--no-progress", "--no-tensorboard", "--out", w.fresh("ft"),
            "--class-weights", wt], "--class-weights")))

    def nothing_fits():
        folder = w.fresh("enc")
        os.makedirs(folder)
        state = torch.load(os.path.join(w.run, "encoder.pt"))
        torch.save({f"x.{k}": v for k, v in state.items()}, os.path.join(folder, "encoder.pt"))
        return script(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                      w.fresh("ft"), "--pretrained", os.path.join(folder, "encoder.pt"),
                                      "--width", "4", "--allow-partial-load"], "none of its")
    out.append(Probe(f, "--allow-partial-load when nothing fits", nothing_fits))
    out.append(Probe(f, "--resume on a pretraining folder", lambda: script(finetune.main, [
        "--preset", "tiny", "--out", w.run, "--resume", "--no-progress"], "another script"), keep=summary))
    return out


def all_probes(w: World) -> list:
    return data_probes(w) + bank_probes(w) + task_probes(w) + script_probes(w)


def run_probes(root: str, verbose: bool = False) -> list:
    """(probe, outcome, detail) of every probe, run in a world made under ``root``."""
    w = World(root)
    results = []
    for probe in all_probes(w):
        before = snapshot(probe.keep)
        outcome, detail = probe.run()
        if snapshot(probe.keep) != before:
            outcome, detail = "data lost", f"changed: {[p for p in probe.keep if snapshot([p]) != {p: before[p]}]}"
        results.append((probe, outcome, detail))
        if verbose:
            print(f"{outcome:15s} {probe.surface:22s} {probe.name}: {detail}")
    return results


def table(results: list) -> str:
    surfaces = list(dict.fromkeys(p.surface for p, _, _ in results))
    lines = [f"| surface | tried | {' | '.join(OUTCOMES)} |", "|---|---|" + "---|" * len(OUTCOMES)]
    for s in surfaces + ["all"]:
        rows = [o for p, o, _ in results if s in (p.surface, "all")]
        lines.append(f"| {s} | {len(rows)} | " + " | ".join(str(rows.count(o)) for o in OUTCOMES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        res = run_probes(tmp, verbose=True)
    print(table(res))
    sys.exit(0 if all(o in ("clear", "misleading") for _, o, _ in res) else 1)
