"""train/finetune.py on tiny settings (train/experiment.py: test_experiment.py)."""
import json
import os

import pytest
import torch

from rubikops.sparse_labels import patch_origin_range

from .helpers import script, smooth_volumes, tiny_args

common = script("common")
pretrain = script("pretrain")
finetune = script("finetune")


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


def test_the_readme_commands_run_in_order_without_colliding(encoder, tmp_path, capsys, monkeypatch):
    """No --out: runs/finetune-TASK, so the README's classification and segmentation commands, run one
    after the other, each get their own folder."""
    monkeypatch.chdir(tmp_path)
    for task in ("classification", "segmentation"):
        rc, cap = _ft(capsys, "--task", task, "--pretrained", encoder)
        assert rc == 0, cap.err
        assert json.load(open(tmp_path / "runs" / f"finetune-{task}" / "results.json"))["steps"] == 4


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
    (["--task", "classification", "--pretrained-decoder-lr", "0.01"], "--pretrained-decoder-lr applies to --task "
                                                                       "segmentation only"),
    (["--task", "segmentation", "--pretrained-decoder-lr", "-1"], "--pretrained-decoder-lr must be in [0, inf)"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(tmp_path, capsys, case):
    args, msg = BAD[case]
    rc, cap = _ft(capsys, *args, "--out", str(tmp_path / "o"))
    err = cap.err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and msg in err[-1], cap.err


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


def test_pretraining_checkpoint_as_pretrained(encoder, tmp_path, capsys):
    best = os.path.join(os.path.dirname(encoder), "checkpoints", "best.pt")
    rc, cap = _ft(capsys, "--task", "classification", "--pretrained", best, "--out", str(tmp_path / "ft"))
    assert rc == 0, cap.err
    res = json.load(open(tmp_path / "ft" / "results.json"))
    assert res["encoder_load"]["loaded"] == len(torch.load(encoder)) and not res["encoder_load"]["missing"]
    assert "chance:" in cap.out and f"results: {tmp_path / 'ft' / 'results.json'}" in cap.out
    assert res["chance"]["macro_auc"] == 0.5 and res["split"]["chosen_by"] == "--seed 0, --val-fraction 0.2"


def _bare_copy(encoder, folder, value=None, meta=None):
    """encoder.pt (or ``value`` saved in its place) in a folder of its own, with ``meta`` as encoder.json."""
    import shutil
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "encoder.pt")
    torch.save(value, path) if value is not None else shutil.copyfile(encoder, path)
    if meta is not None:
        open(os.path.join(folder, "encoder.json"), "w").write(meta)
    return path


def test_encoder_files_that_do_not_fit_are_refused(encoder, tmp_path, capsys):
    bare = _bare_copy(encoder, tmp_path / "bare")  # width 4, no encoder.json: built from the flags
    cases = [
        ([bare, "--width", "8"], "does not fit a vgg encoder of width 8"),
        ([bare, "--backbone", "resnet18", "--width", "4"], "does not fit a resnet18 encoder of width 4"),
        ([_bare_copy(encoder, tmp_path / "tensor", torch.zeros(3))], "holds a Tensor, not an encoder state_dict"),
        ([_bare_copy(encoder, tmp_path / "list", [1, 2])], "holds a list, not an encoder state_dict"),
        ([_bare_copy(encoder, tmp_path / "json", meta="{not json")], "encoder.json: not a readable encoder.json"),
        ([_bare_copy(encoder, tmp_path / "json2", meta='{"width": 4}')], "encoder.json: 'backbone' must be a str"),
    ]
    for argv, message in cases:
        rc, cap = _ft(capsys, "--task", "classification", "--out", str(tmp_path / "o"), "--pretrained", *argv)
        err = cap.err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("error: --pretrained: ") and message in err[-1], (argv, cap.err)
        assert "Traceback" not in cap.err and not os.path.exists(tmp_path / "o")
    rc, cap = _ft(capsys, "--task", "classification", "--out", str(tmp_path / "o"), "--pretrained", bare,
                  "--width", "8", "--allow-partial-load")
    assert rc == 0, cap.err
    assert json.load(open(tmp_path / "o" / "results.json"))["encoder_load"]["mismatched"]


def test_own_cases_split_as_the_user_chooses(tmp_path, capsys):
    import numpy as np
    from tests.data.nifti_files import write
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.normal(size=(20, 20, 20)).astype(np.float32)
        write(tmp_path / f"img{i}.nii.gz", img)
        write(tmp_path / f"lab{i}.nii.gz", (img > 0.5).astype(np.uint8))
    own = ["--task", "segmentation", "--images", str(tmp_path / "img*.nii.gz"), "--labels",
           str(tmp_path / "lab*.nii.gz")]
    rc, cap = _ft(capsys, *own, "--out", str(tmp_path / "a"), "--test-cases", "img2.nii.gz", "--val-cases", "0")
    assert rc == 0, cap.err
    res = json.load(open(tmp_path / "a" / "results.json"))
    assert res["split"] == {"train": ["img1.nii.gz"], "val": ["img0.nii.gz"], "test": ["img2.nii.gz"],
                            "chosen_by": "--test-cases and --val-cases"}
    assert "split (--test-cases and --val-cases): train 1 ['img1.nii.gz'], val 1" in cap.err
    assert "mean_dice" in res["val_metrics"] and "chance mean Dice" in cap.out and "validation (1 cases)" in cap.out
    rc, cap = _ft(capsys, *own, "--out", str(tmp_path / "b"), "--test-cases", "0,2", "--val-cases", "1")
    assert rc == 2 and "no training case is left out of 3" in cap.err


# -- sparse labels (--label-fraction on one segmentation volume) ------------------------------------------
def test_segmentation_loss_ignores_unlabelled_voxels():
    ft = script("finetune")
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 5, 6, 7, generator=g)
    target = torch.randint(4, (2, 5, 6, 7), generator=g)
    sparse = target.clone()
    sparse[..., :2] = ft.UNLABELLED
    sparse[..., 5:] = ft.UNLABELLED
    # unlabelled voxels contribute nothing: the loss equals the one of the labelled slab alone
    expected = ft.segmentation_loss(logits[..., 2:5], target[..., 2:5])
    torch.testing.assert_close(ft.segmentation_loss(logits, sparse), expected)
    # and what the unlabelled voxels' logits say does not matter
    scrambled = logits.clone()
    scrambled[..., :2] = torch.randn(2, 4, 5, 6, 2, generator=g) * 10
    torch.testing.assert_close(ft.segmentation_loss(scrambled, sparse), expected)


@pytest.mark.parametrize("first,last,depth,patch", [(0, 9, 10, 4), (3, 3, 20, 8), (18, 19, 20, 8), (5, 12, 30, 16)])
def test_every_training_patch_holds_labelled_slices(first, last, depth, patch):
    ft = script("finetune")
    label = torch.full((6, 5, depth), ft.UNLABELLED)
    label[..., first:last + 1] = 1
    lo, hi = patch_origin_range(label, (4, 3, patch))
    assert lo[:2] == [0, 0] and hi[:2] == [2, 2]
    origins = range(lo[-1], hi[-1] + 1)
    # exactly the origins whose patch fits the volume and overlaps the labelled slices
    assert list(origins) == [z for z in range(depth - patch + 1) if z <= last and z + patch - 1 >= first]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    t = tmp_path_factory.mktemp("dense")
    data = smooth_volumes(t / "scans")
    assert common.run_main(pretrain.main, tiny_args(data, t / "run", t / "cache", "--task", "genesis")) == 0
    return t / "run"


def test_a_dense_pretraining_loads_encoder_and_decoder_for_unet_segmentation(dense_run, tmp_path, capsys):
    network = torch.load(dense_run / "network.pt")
    decoder_keys = sorted(k for k in network if k.startswith(("up.", "dec.")))
    finetune_cfg, _ = finetune.parse(["--preset", "tiny", "--task", "segmentation", "--pretrained", str(dense_run)])
    model, enc_report, dec_report = finetune.build_model(finetune_cfg, num_classes=6, in_channels=1)
    assert sorted(dec_report.loaded) == decoder_keys and not dec_report.missing and not dec_report.mismatched
    for k in decoder_keys:  # the values, not just the names
        assert torch.equal(model.state_dict()[k], network[k]), k
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, network["encoder." + k]), k
    assert model.out.weight.shape[0] == 6  # the output layer is the new task's
    out = tmp_path / "ft"
    rc, cap = _ft(capsys, "--task", "segmentation", "--pretrained", str(dense_run), "--out", str(out))
    assert rc == 0, cap.err
    res = json.load(open(out / "results.json"))
    assert res["decoder_load"]["loaded"] == len(decoder_keys) and "decoder weights: %d tensors loaded" % len(
        decoder_keys) in cap.err
    # the same pretraining from one of its checkpoints
    step = sorted(p for p in os.listdir(dense_run / "checkpoints") if p.startswith("step_"))[-1]
    cfg, _ = finetune.parse(["--preset", "tiny", "--task", "segmentation", "--pretrained",
                             str(dense_run / "checkpoints" / step)])
    assert sorted(finetune.build_model(cfg, 6, 1)[2].loaded) == decoder_keys


@pytest.mark.parametrize("decoder_lr", [0.0, 0.02])
def test_each_parameter_learns_at_the_rate_of_its_origin(dense_run, decoder_lr):
    """Encoder at --encoder-lr, the decoder tensors the pretraining trained at --pretrained-decoder-lr (0: the
    encoder's), every new layer at --head-lr, each parameter in one group; freezing takes encoder and decoder."""
    network = torch.load(dense_run / "network.pt")
    cfg, _ = finetune.parse(["--preset", "tiny", "--task", "segmentation", "--pretrained", str(dense_run),
                             "--encoder-lr", "0.001", "--head-lr", "0.005", "--pretrained-decoder-lr", str(decoder_lr)])
    model, _, dec_report = finetune.build_model(cfg, num_classes=6, in_channels=1)
    opt, pretrained = finetune.make_optimizer(cfg, model, dec_report)
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in lr_of
            lr_of[id(p)] = group["lr"]
    expected_groups = 3 if decoder_lr else 2
    assert len(opt.param_groups) == expected_groups
    trained_decoder = {k for k in network if not k.startswith("encoder.")
                       and model.state_dict().get(k) is not None and model.state_dict()[k].shape == network[k].shape}
    assert trained_decoder and "out.weight" not in trained_decoder
    for name, p in model.named_parameters():
        origin = "encoder" if name.startswith("encoder.") else "decoder" if name in trained_decoder else "new"
        want = {"encoder": 0.001, "decoder": decoder_lr or 0.001, "new": 0.005}[origin]
        assert lr_of.pop(id(p)) == want, name
    assert not lr_of
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in pretrained} == {n for n in names.values()
                                                  if n.startswith("encoder.") or n in trained_decoder}


def test_a_dense_run_checkpointed_before_the_decoder_rate_option_resumes(dense_run, tmp_path, capsys):
    """A checkpoint whose config has no pretrained_decoder_lr (made before the option) resumes with its two
    optimizer groups, the loaded decoder at the encoder's rate as it was trained."""
    out = tmp_path / "ft"
    rc, cap = _ft(capsys, "--task", "segmentation", "--pretrained", str(dense_run), "--out", str(out), "--steps", "2",
                  "--checkpoint-every", "2")
    assert rc == 0, cap.err
    (ckpt,) = sorted((out / "checkpoints").glob("step_*.pt"))
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["pretrained_decoder_lr"]
    assert len(state["optimizer"]["param_groups"]) == 2
    torch.save(state, ckpt)
    (out / "results.json").unlink()
    rc, cap = _ft(capsys, "--out", str(out), "--resume", "--steps", "4")
    assert rc == 0, cap.err
    resumed = torch.load(sorted((out / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    assert resumed["step"] == 4 and len(resumed["optimizer"]["param_groups"]) == 2


def test_scratch_ignores_the_pretrained_decoder_rate(tmp_path, capsys):
    """Nothing loaded, nothing at --pretrained-decoder-lr: the run equals one without it."""
    losses = []
    for i, extra in enumerate([[], ["--pretrained-decoder-lr", "0.5"]]):
        rc, cap = _ft(capsys, "--task", "segmentation", "--out", str(tmp_path / f"ft{i}"), *extra)
        assert rc == 0, cap.err
        losses.append(json.load(open(tmp_path / f"ft{i}" / "results.json"))["metrics"])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("task,extra", [("classification", []), ("segmentation", ["--decoder", "duc"])])
def test_classification_and_duc_take_the_encoder_alone(dense_run, tmp_path, capsys, task, extra):
    rc, cap = _ft(capsys, "--task", task, "--pretrained", str(dense_run), "--out", str(tmp_path / "ft"), *extra)
    assert rc == 0, cap.err
    res = json.load(open(tmp_path / "ft" / "results.json"))
    assert res["decoder_load"] is None and res["encoder_load"]["loaded"] > 0 and "decoder weights" not in cap.err


def test_a_finished_run_resumed_is_refused_and_one_killed_before_its_results_gets_them(encoder, tmp_path, capsys):
    """--resume at the last step: with results.json there, nothing to do (refused, file kept); without it
    (killed between the last checkpoint and the results), the trained model is evaluated and they are written."""
    out = tmp_path / "ft"
    args = ["--task", "classification", "--pretrained", encoder, "--out", str(out)]
    rc, cap = _ft(capsys, *args)
    assert rc == 0, cap.err
    before = open(out / "results.json").read()
    rc, cap = _ft(capsys, *args, "--resume")
    assert rc == 2 and "nothing was changed" in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
    assert open(out / "results.json").read() == before
    os.remove(out / "results.json")
    rc, cap = _ft(capsys, *args, "--resume")
    assert rc == 0, cap.err
    again = json.load(open(out / "results.json"))
    assert again["metrics"] == json.loads(before)["metrics"] and again["steps"] == 4
