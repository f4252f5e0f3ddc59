"""Issue 28 on train/pretrain.py and train/finetune.py: non-finite data, losses and encoders are refused
at once; a resume that would train nothing is refused with the run's files untouched; bad settings and
crafted checkpoints are one ``error:`` line and exit 2."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from rubikops.data import prepare, read_manifest, Preprocessing

from .helpers import script, smooth_volumes, tiny_args

common = script("common")
pretrain = script("pretrain")
finetune = script("finetune")


def run(main, argv, capsys):
    rc = common.run_main(main, argv)
    cap = capsys.readouterr()
    return rc, cap


def assert_one_error_line(rc, cap, *words):
    assert rc == 2, cap.err
    assert "Traceback" not in cap.err
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), cap.err


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """A finished tiny pretraining run (6 steps)."""
    t = tmp_path_factory.mktemp("pre")
    assert common.run_main(pretrain.main, tiny_args(data, t / "run", t / "cache")) == 0
    return t / "run"


def prepared_folder(data, out):
    prepare(data, out, Preprocessing(spacing=1.0, intensity="zscore", crop_foreground=True), progress=False)
    return out


def prepared_args(folder, out, *extra):
    return ["--preset", "tiny", "--data-prepared", str(folder), "--out", str(out), "--no-progress",
            "--no-tensorboard", *extra]


# -- item 2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [[], ["--bank-budget", "420KB", "--bank-refresh-every", "1"]])
def test_pretraining_on_a_nan_volume_is_refused_naming_it(data, tmp_path, capsys, budget):
    folder = prepared_folder(data, tmp_path / "prep")
    npy = os.path.join(folder, read_manifest(folder)["volumes"][0]["file"])
    np.save(npy, np.full(np.load(npy).shape, np.nan, dtype=np.float32))
    rc, cap = run(pretrain.main, prepared_args(folder, tmp_path / "run", *budget), capsys)
    assert_one_error_line(rc, cap, os.path.basename(npy), "NaN or Inf")
    assert not os.path.exists(tmp_path / "run" / "encoder.pt")


def test_a_non_finite_loss_stops_the_run_at_that_step(data, tmp_path, capsys, monkeypatch):
    real = pretrain.rubikops.RubikCube.loss
    calls = {"n": 0}

    def loss_nan_at_step_2(self, outputs, targets, **kw):
        loss, parts = real(self, outputs, targets, **kw)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] == 2 else (loss, parts)
    monkeypatch.setattr(pretrain.rubikops.RubikCube, "loss", loss_nan_at_step_2)
    rc, cap = run(pretrain.main, tiny_args(data, tmp_path / "run", tmp_path / "cache", "--augment", "intensity"),
                  capsys)
    assert_one_error_line(rc, cap, "step 2: the loss is NaN or Inf on a batch of v")
    assert not os.path.exists(tmp_path / "run" / "encoder.pt")  # the first checkpoint is at step 3
    assert not os.path.exists(tmp_path / "run" / "summary.json")


def test_finetune_refuses_a_non_finite_encoder(pretrained, tmp_path, capsys):
    state = torch.load(pretrained / "encoder.pt")
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    folder = tmp_path / "nan"
    folder.mkdir()
    torch.save(state, folder / "encoder.pt")
    (folder / "encoder.json").write_text((pretrained / "encoder.json").read_text())
    rc, cap = run(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                  str(tmp_path / "ft"), "--pretrained", str(folder / "encoder.pt")], capsys)
    assert_one_error_line(rc, cap, "hold NaN or Inf", name)
    assert not os.path.exists(tmp_path / "ft")


# -- item 3 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", ["4", "6"])
def test_a_resume_that_would_train_nothing_is_refused_and_changes_nothing(pretrained, tmp_path, capsys, steps):
    before = {f: (pretrained / f).read_bytes() for f in ("summary.json", "config.yaml", "metrics.csv")}
    rc, cap = run(pretrain.main, ["--out", str(pretrained), "--resume", "--steps", steps, "--no-progress"], capsys)
    assert_one_error_line(rc, cap, "has 6 steps already", f"--steps is {steps}")
    assert {f: (pretrained / f).read_bytes() for f in before} == before


def test_a_run_stopped_before_its_summary_resumes_to_the_summary_of_its_last_evaluation(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert common.run_main(pretrain.main, tiny_args(data, out, tmp_path / "cache")) == 0
    summary = json.loads((out / "summary.json").read_text())
    os.unlink(out / "summary.json")  # as a kill between the last checkpoint and the summary leaves it
    rc, cap = run(pretrain.main, ["--out", str(out), "--resume", "--no-progress"], capsys)
    assert rc == 0, cap.err
    again = json.loads((out / "summary.json").read_text())
    assert summary["order_acc"] is not None and again["order_acc"] == summary["order_acc"]
    assert again["orient_acc"] == summary["orient_acc"] and again["steps"] == 6


# -- item 4 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [("steps: null\n", ["steps = null"]), ("steps: 2.7\n", ["steps = 2.7"]),
                                         ("steps: true\n", ["steps = True"]),
                                         ("cube_size: null\n", ["cube_size = null"])])
def test_yaml_values_that_are_not_the_settings_type_are_refused(data, tmp_path, capsys, text, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    rc, cap = run(pretrain.main, tiny_args(data, tmp_path / "run", tmp_path / "cache", "--config", str(cfg)), capsys)
    assert_one_error_line(rc, cap, *words)


@pytest.mark.parametrize("flags, words", [
    (["--bank-budget", "1e400"], ["--bank-budget", "beyond any memory"]),
    (["--cube-size", "4"], ["--cube-size", "cube_size (4, 4, 4) is too small for the VGG3D"]),
    (["--cube-size", "6", "--grid", "1,1,2", "--num-permutations", "2"], ["cube_size (6, 6, 6) is too small"])])
def test_script_flags_that_cannot_work_are_one_line(data, tmp_path, capsys, flags, words):
    rc, cap = run(pretrain.main, tiny_args(data, tmp_path / "run", tmp_path / "cache", *flags), capsys)
    assert_one_error_line(rc, cap, *words)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("drop", ["optimizer", "config", "scheduler", "rng"])
def test_a_crafted_checkpoint_missing_an_entry_is_refused(pretrained, tmp_path, capsys, drop):
    state = torch.load(pretrained / "checkpoints" / "step_0000006.pt", weights_only=False)
    del state[drop]
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    rc, cap = run(pretrain.main, ["--out", str(tmp_path / "o"), "--resume", str(crafted), "--steps", "9",
                                  "--no-progress"], capsys)
    assert_one_error_line(rc, cap, "crafted.pt", f"missing {drop}")


def test_finetune_resume_on_a_pretraining_folder_is_refused(pretrained, tmp_path, capsys):
    rc, cap = run(finetune.main, ["--preset", "tiny", "--out", str(pretrained), "--resume", "--no-progress"], capsys)
    assert_one_error_line(rc, cap, "was written by another script")


# -- item 5 -------------------------------------------------------------------------------------------------
def one_class_csv(tmp_path) -> str:
    scans = smooth_volumes(tmp_path / "scans", n=4, shape=(20, 20, 20))
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for i in range(4):
            w.writerow([os.path.join(scans, f"v{i}.nii.gz"), "healthy"])
    return str(path)


def test_finetune_refuses_a_one_class_csv(tmp_path, capsys):
    rc, cap = run(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                  str(tmp_path / "ft"), "--csv", one_class_csv(tmp_path)], capsys)
    assert_one_error_line(rc, cap, "labels.csv", "at least 2 classes")


@pytest.mark.parametrize("weights", ["nan,1,1,1", "inf,1,1,1", "-1,1,1,1", "0,0,0,0"])
def test_finetune_refuses_class_weights_that_are_not_finite_and_positive(tmp_path, capsys, weights):
    rc, cap = run(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                  str(tmp_path / "ft"), f"--class-weights={weights}"], capsys)
    assert_one_error_line(rc, cap, "--class-weights", "finite")


def test_allow_partial_load_refuses_an_encoder_of_which_nothing_fits(pretrained, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    state = torch.load(pretrained / "encoder.pt")
    torch.save({f"other.{k}": v for k, v in state.items()}, bare / "encoder.pt")
    rc, cap = run(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--out",
                                  str(tmp_path / "ft"), "--pretrained", str(bare / "encoder.pt"), "--width", "4",
                                  "--allow-partial-load"], capsys)
    assert_one_error_line(rc, cap, "none of its", "tensors fit")
    assert not os.path.exists(tmp_path / "ft" / "results.json")
