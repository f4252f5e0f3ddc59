"""train/finetune.py and train/experiment.py on tiny settings."""
import json
import os

import pytest
import torch

from .helpers import script, smooth_volumes, tiny_args

common = script("common")
pretrain = script("pretrain")
finetune = script("finetune")
experiment = script("experiment")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    t = tmp_path_factory.mktemp("pre")
    data = smooth_volumes(t / "scans")
    assert common.run_main(pretrain.main, tiny_args(data, t / "run", t / "cache")) == 0
    return str(t / "run" / "encoder.pt")


def _ft(capsys, *args):
    rc = common.run_main(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", *args])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("task,extra", [("classification", []), ("segmentation", ["--decoder", "unet"]),
                                        ("segmentation", ["--decoder", "duc", "--label-fraction", "0.5"])])
def test_finetune_loads_the_encoder_and_reports_it(encoder, tmp_path, capsys, task, extra):
    out = tmp_path / "ft"
    rc, cap = _ft(capsys, "--task", task, "--pretrained", encoder, "--out", str(out), *extra)
    assert rc == 0, cap.err
    res = json.load(open(out / "results.json"))
    n_enc = len(torch.load(encoder))
    assert res["encoder_load"] == {"loaded": n_enc, "missing": [], "unexpected": [], "mismatched": []}
    assert "encoder weights: %d tensors loaded, 0 missing" % n_enc in cap.err
    key = "macro_auc" if task == "classification" else "mean_dice"
    assert key in res["metrics"] and res["steps"] == 4
    assert os.path.exists(out / "checkpoints" / "step_0000004.pt")


def test_scratch_with_frozen_warmup_and_class_weights(tmp_path, capsys):
    rc, cap = _ft(capsys, "--task", "classification", "--out", str(tmp_path / "ft"), "--freeze-steps", "2",
                  "--class-weights", "auto", "--label-fraction", "0.5")
    assert rc == 0, cap.err
    import csv
    rows = list(csv.DictReader(open(tmp_path / "ft" / "metrics.csv")))
    frozen = [r["encoder_frozen"] for r in rows if r["train/loss"]]
    assert "random initialisation" in cap.err
    assert frozen == ["1", "1", "0", "0"]


BAD = [
    (["--task", "detection"], "--task must be classification or segmentation"),
    (["--task", "classification", "--pretrained", "/nonexistent/encoder.pt"], "no such file"),
    (["--task", "segmentation", "--patch", "200,200,200"], "--patch (200, 200, 200) does not fit"),
    (["--task", "classification", "--label-fraction", "0"], "--label-fraction must be in (0, 1]"),
    (["--task", "classification", "--class-weights", "1,2"], "--class-weights: 2 weights for 4 classes"),
    (["--task", "segmentation", "--images", "x/*.nii.gz"], "--images and --labels go together"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(tmp_path, capsys, case):
    args, msg = BAD[case]
    rc, cap = _ft(capsys, *args, "--out", str(tmp_path / "o"))
    err = cap.err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and msg in err[-1], cap.err


def test_experiment_runs_resumes_and_writes_table_and_plot(tmp_path, capsys):
    data = smooth_volumes(tmp_path / "scans")
    argv = ["--out", str(tmp_path / "exp"), "--docs", str(tmp_path / "docs"), "--tasks", "classification",
            "--fractions", "0.5,1", "--seeds", "0", "--pretrain-steps", "4", "--steps", "classification=3",
            "--pretrain-args", f"--preset tiny --data {data} --spacing 1 --no-tensorboard --cache-dir {tmp_path}/c",
            "--finetune-args", "--preset tiny"]
    assert common.run_main(experiment.main, argv) == 0
    md = open(tmp_path / "docs" / "experiment.md").read()
    assert md.count("| classification | macro AUC |") == 2 and "± " in md
    assert os.path.getsize(tmp_path / "docs" / "experiment.png") > 1000
    capsys.readouterr()
    assert common.run_main(experiment.main, argv) == 0  # everything done: only the report is rebuilt
    assert "== " not in capsys.readouterr().out


def test_exact_resume_after_sigkill(tmp_path):
    from .helpers import run_subprocess
    base = ["train/finetune.py", "--preset", "tiny", "--task", "segmentation", "--no-progress", "--no-tensorboard"]
    r = run_subprocess([*base, "--out", str(tmp_path / "straight")])
    assert r.returncode == 0, r.stderr
    r = run_subprocess([*base, "--out", str(tmp_path / "killed")], env_extra={"RUBIKOPS_TEST_KILL_AT_STEP": "2"})
    assert r.returncode == -9, r.stderr
    r = run_subprocess(["train/finetune.py", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"])
    assert r.returncode == 0, r.stderr
    a = torch.load(tmp_path / "straight" / "checkpoints" / "step_0000004.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "step_0000004.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.load(open(tmp_path / "straight" / "results.json"))["metrics"]
    rb = json.load(open(tmp_path / "killed" / "results.json"))["metrics"]
    assert ra == rb


def test_ddp_two_processes_gloo(tmp_path):
    from .helpers import run_subprocess
    out = tmp_path / "ddp"
    r = run_subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train/finetune.py",
                        "--preset", "tiny", "--task", "classification", "--out", str(out), "--no-progress",
                        "--no-tensorboard", "--device", "cpu"], env_extra={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(out / "checkpoints" / "step_0000004.pt", weights_only=False)
    assert len(state["rng"]) == 2  # both ranks' batch streams saved
    assert json.load(open(out / "results.json"))["steps"] == 4
