"""train/experiment.py: the exact Wilcoxon test, the choice of learning rate on
validation data only, finetune.py's validation split, and the protocol end to end."""
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from .helpers import script, smooth_volumes

common = script("common")
finetune = script("finetune")
experiment = script("experiment")
protocol_stats = script("protocol_stats")
reporting = script("reporting")


# -- the exact Wilcoxon signed-rank test -------------------------------------------------------------
def test_wilcoxon_known_values():
    # n = 5, all positive: only one of the 32 sign assignments is as extreme on each side
    assert reporting.wilcoxon_exact([0.1, 0.2, 0.3, 0.4, 0.5]) == (0.0, 2 / 32, 5)
    assert reporting.wilcoxon_exact([1.0]) == (0.0, 1.0, 1)
    assert reporting.wilcoxon_exact([0.0, 0.0]) == (0.0, 1.0, 0)  # nothing left after dropping zeros
    stat, p, n = reporting.wilcoxon_exact([1, 2, -3, 4, 4, 0])  # a zero (dropped) and a tie (ranks 4.5, 4.5)
    # T- = 3 or less: negatives {}, {1}, {2}, {3} or {1, 2}, 5 of 32 assignments, twice
    assert (stat, n) == (3.0, 5) and p == pytest.approx(10 / 32)
    with pytest.raises(ValueError, match="NaN"):
        reporting.wilcoxon_exact([1.0, math.nan])


def test_pretext_scores_state_puzzles_against_chance_and_restorations_against_their_baselines():
    puzzle = {"steps": 1500, "order_acc": 0.6347, "chance_order_acc": 1 / 24, "orient_acc": 0.6831,
              "chance_orient_acc": 1 / 3}
    assert reporting.pretext_scores(puzzle) == " (held-out order_acc 0.635, chance 0.042; orient_acc 0.683, chance 0.333)"
    dense = {"steps": 600, "mse": 0.15259, "identity_mse": 1.47631, "mean_mse": 1.03864, "restoration_gain": 0.8966}
    assert reporting.pretext_scores(dense) == " (held-out MSE 0.153, identity 1.476, mean 1.039)"
    assert reporting.pretext_scores(None) == " (not finished)"
    assert reporting.pretext_scores({"steps": 10}) == ""
    diverged = {"mse": math.nan, "identity_mse": 1.0, "mean_mse": 0.5, "order_acc": 0.5, "chance_order_acc": None}
    assert reporting.pretext_scores(diverged) == " (held-out order_acc 0.500, chance n/a; MSE n/a, identity 1.000, mean 0.500)"


@pytest.mark.parametrize("n", range(1, 9))
def test_wilcoxon_matches_scipy(n):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    for trial in range(25):
        # continuous (no ties, no zeros), then small integers (ties and zeros)
        d = rng.normal(0.3, 1.0, size=n) if trial < 10 else rng.integers(-3, 4, size=n).astype(float)
        nonzero = np.abs(d[d != 0])
        if not len(nonzero):
            continue
        if len(nonzero) == n and len(set(nonzero)) == n:  # scipy's method='exact' is exact here
            ref = stats.wilcoxon(d, method="exact")
        else:  # ties or zeros: scipy's exact permutation distribution of the same statistic (2^n resamples)
            ref = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=2 ** n + 1))
        stat, p, m = reporting.wilcoxon_exact(d.tolist())
        assert m == np.count_nonzero(d)
        assert stat == pytest.approx(float(ref.statistic)), d
        assert p == pytest.approx(float(ref.pvalue), abs=1e-12), d


# -- learning rate chosen on validation, never on test --------------------------------------------------
def _fake_runs(val_by_lr, test_by_lr, seeds=(0, 1, 2), task="classification", fraction=0.1):
    runs = []
    arms = sorted(next(iter(val_by_lr.values())))
    for arm, (lr, s) in itertools.product(arms, itertools.product(sorted(val_by_lr), seeds)):
        runs.append({"task": task, "metric": experiment.METRIC[task][0], "fraction": fraction, "arm": arm,
                     "seed": s, "lr": lr, "val": val_by_lr[lr][arm] + 0.01 * s, "test": test_by_lr[lr][arm] + 0.01 * s})
    return runs


def _doc(runs, arms, seeds, lrs, fractions=(0.1,), tasks=("classification",)):
    return {"command": "python train/experiment.py", "tasks": list(tasks), "arms": list(arms),
            "fractions": list(fractions), "seeds": list(seeds), "lrs": list(lrs), "rows": runs}


def test_lr_is_chosen_on_validation_and_test_never_looked_at():
    lrs = [1e-4, 1e-3, 1e-2]
    # validation prefers 1e-3 for scratch and 1e-2 for rubik; test would prefer the opposite ends
    val = {1e-4: {"scratch": 0.5, "rubik": 0.5}, 1e-3: {"scratch": 0.9, "rubik": 0.6}, 1e-2: {"scratch": 0.6, "rubik": 0.8}}
    test = {1e-4: {"scratch": 0.95, "rubik": 0.2}, 1e-3: {"scratch": 0.7, "rubik": 0.99}, 1e-2: {"scratch": 0.3, "rubik": 0.4}}
    runs = _fake_runs(val, test)
    assert protocol_stats.choose_lr(runs, "classification", "scratch", 0.1, lrs)[0] == 1e-3
    assert protocol_stats.choose_lr(runs, "classification", "rubik", 0.1, lrs)[0] == 1e-2
    (row,) = protocol_stats.compare(runs, ["classification"], ["scratch", "rubik"], [0.1], lrs, [0, 1, 2])
    assert row["arms"]["scratch"]["lr"] == 1e-3 and row["arms"]["rubik"]["lr"] == 1e-2
    assert row["arms"]["scratch"]["mean"] == pytest.approx(0.71) and row["arms"]["rubik"]["mean"] == pytest.approx(0.41)
    assert row["winner"] == "scratch" and row["best_pretrained"] == "rubik"
    # any change of the test metrics leaves the choice alone
    rng = np.random.default_rng(0)
    for r in runs:
        r["test"] = float(rng.random())
    (again,) = protocol_stats.compare(runs, ["classification"], ["scratch", "rubik"], [0.1], lrs, [0, 1, 2])
    assert (again["arms"]["scratch"]["lr"], again["arms"]["rubik"]["lr"]) == (1e-3, 1e-2)
    # a run without a validation metric does not count towards its rate
    for r in runs:
        r["val"] = None if r["lr"] == 1e-3 else r["val"]
    assert protocol_stats.choose_lr(runs, "classification", "scratch", 0.1, lrs)[0] == 1e-2


def test_a_validation_metric_that_ties_across_the_grid_is_refused():
    lrs = [1e-4, 1e-3, 1e-2]
    flat = {lr: {"scratch": 0.0, "rubik": 0.5 + lr} for lr in lrs}  # scratch: 0.000 at every rate
    runs = _fake_runs(flat, flat, seeds=(0,), task="segmentation", fraction=0.05)
    with pytest.raises(common.UserError, match=r"^segmentation, arm scratch, label fraction 0.05: the mean "
                                               r"validation mean Dice ties across learning rates"):
        protocol_stats.compare(runs, ["segmentation"], ["scratch", "rubik"], [0.05], lrs, [0])
    # two of three rates sharing the best mean: refused too; a tie below the best is harmless
    two = {1e-4: {"scratch": 0.7, "rubik": 0.2}, 1e-3: {"scratch": 0.7, "rubik": 0.2}, 1e-2: {"scratch": 0.6, "rubik": 0.3}}
    runs = _fake_runs(two, two, seeds=(0,))
    with pytest.raises(common.UserError, match=r"arm scratch, .*\['0.0001', '0.001'\]"):
        protocol_stats.choose_lr(runs, "classification", "scratch", 0.1, lrs)
    assert protocol_stats.choose_lr(runs, "classification", "rubik", 0.1, lrs) == (1e-2, 0.3)


def test_rows_say_which_arm_wins_and_which_beat_scratch_by_one_sd():
    seeds = [0, 1, 2, 3, 4]
    val = {1e-3: {"scratch": 0.5, "rubik": 0.5, "genesis": 0.5}}
    test = {1e-3: {"scratch": 0.60, "rubik": 0.70, "genesis": 0.61}}
    runs = _fake_runs(val, test, seeds=seeds)
    arms = ["scratch", "rubik", "genesis"]
    (row,) = protocol_stats.compare(runs, ["classification"], arms, [0.1], [1e-3], seeds)
    assert row["winner"] == row["best_pretrained"] == "rubik"
    v = row["versus_scratch"]
    assert v["rubik"]["difference"] == pytest.approx(0.1) and row["arms"]["scratch"]["sd"] == pytest.approx(0.0158, abs=1e-4)
    assert v["rubik"]["beats_by_one_sd"] and v["rubik"]["wilcoxon"]["n"] == 5
    assert v["rubik"]["wilcoxon"]["p"] == pytest.approx(2 / 32)
    assert not v["genesis"]["beats_by_one_sd"]  # +0.01 is less than scratch's sd
    text = experiment.table([row], _doc(runs, arms, seeds, [1e-3]), len(runs))
    assert ("| classification | macro AUC | 0.1 | 0.620 ± 0.016 | **0.720 ± 0.016** | 0.630 ± 0.016 | Rubik's cube "
            "| Rubik's cube | +0.100 | 0.062 (5) | **yes**: Rubik's cube |") in text
    assert "| classification | 0.1 | 0.001 (0.520) | 0.001 (0.520) | 0.001 (0.520) |" in text
    assert "Rubik's cube beats scratch by more than one sd of scratch at 1 of 1: **met**" in text
    assert "Models Genesis beats scratch by more than one sd of scratch at 0 of 1: **not met**" in text
    assert "Incomplete" not in text
    assert "**Incomplete: 14 of 15 runs finished.**" in experiment.table([row], _doc(runs, arms, seeds, [1e-3]), 14)
    # scratch ahead: it wins, and no arm is marked
    runs = _fake_runs(val, {1e-3: {"scratch": 0.8, "rubik": 0.70, "genesis": 0.61}}, seeds=seeds)
    (row,) = protocol_stats.compare(runs, ["classification"], arms, [0.1], [1e-3], seeds)
    assert row["winner"] == "scratch" and row["best_pretrained"] == "rubik"
    verdict = experiment.verdict([row], _doc(runs, arms, seeds, [1e-3]))
    assert "| classification | 0.1 | from scratch 0.820 ± 0.016 | 0.820 ± 0.016 | none |" in verdict
    assert verdict.endswith("Models Genesis beats scratch by more than one sd of scratch at 0 of 1: **not met**.")


def test_an_arm_with_one_finished_seed_never_beats_scratch():
    """An unfinished grid: rubik has seed 0 alone, far above scratch's seed 0.  One pair has no spread
    (sd 0), so it is no evidence: no win is claimed, and the table says the grid is incomplete."""
    seeds = [0, 1, 2]
    val = {1e-3: {"scratch": 0.5, "rubik": 0.5}}
    test = {1e-3: {"scratch": 0.30, "rubik": 0.90}}
    runs = [r for r in _fake_runs(val, test, seeds=seeds) if r["arm"] == "scratch" or r["seed"] == 0]
    arms = ["scratch", "rubik"]
    (row,) = protocol_stats.compare(runs, ["classification"], arms, [0.1], [1e-3], seeds)
    assert row["versus_scratch"]["rubik"]["seeds"] == [0] and row["versus_scratch"]["rubik"]["difference"] > 0.5
    assert not row["versus_scratch"]["rubik"]["beats_by_one_sd"]
    text = experiment.table([row], _doc(runs, arms, seeds, [1e-3]), len(runs))
    assert "**Incomplete: 4 of 6 runs finished.**" in text and "**yes**" not in text


def test_arms_and_the_matched_scale_follow_both_scripts_defaults():
    pre, fine = script("pretrain").PretrainConfig(), finetune.FinetuneConfig()
    assert experiment.pretrain_flags("rubik", "default") == []
    matched = experiment.pretrain_flags("rubik", "matched")
    # matched: the voxels and cubes that segmentation fine-tuning sees, the gap the same in millimetres
    assert matched == ["--spacing", "2", "--cube-size", ",".join(map(str, fine.patch)), "--gap",
                       ",".join(str(int(g * pre.spacing / 2)) for g in pre.gap)]
    assert fine.patch == (32, 32, 32) and pre.spacing == 4.0 and pre.cube_size == (16, 16, 16)
    assert experiment.pretrain_flags("genesis", "matched")[:2] == ["--task", "genesis"]
    assert experiment.pretrain_flags("rubik_small", "matched") == experiment.pretrain_flags("rubik_small", "default") \
        == ["--spacing", "2", "--gap", "0,4"]  # the default 16^3 cubes at 2 mm, the gap in the same millimetres
    assert experiment.arm_folder("rubik", "matched") == "rubik_matched"
    assert experiment.arm_folder("rubik_small", "matched") == "rubik_small"
    assert experiment.ARMS["scratch"].pretrain is None
    # every pretrained arm's flags parse as train/pretrain.py settings
    for arm in experiment.ARMS:
        if experiment.ARMS[arm].pretrain is not None and "--task" not in experiment.ARMS[arm].pretrain:
            for scale in experiment.SCALES:
                cfg, _ = script("pretrain").parse(experiment.pretrain_flags(arm, scale))
                script("pretrain").check_config(cfg)


@pytest.mark.parametrize("rate", ["head", "encoder"])
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_a_pretrained_decoder_learns_at_the_rate_the_protocol_says(tmp_path, monkeypatch, rate, task):
    """head: finetune.py gets --pretrained-decoder-lr at the new layers' rate, so a dense arm trains every layer at
    scratch's rate; encoder: finetune.py's default; classification loads no decoder and gets no flag."""
    calls = []
    monkeypatch.setattr(experiment.common, "run_main", lambda main, argv: calls.append(argv) or 0)
    args = experiment.parse(["--out", str(tmp_path), "--pretrained-decoder-lr", rate])
    args.own = None
    experiment._finetune(task, "masked", 0.1, 2e-3, 3, {"masked": "pre"}, args, 5)
    (argv,) = calls
    cfg, _ = finetune.parse(argv)
    assert cfg.encoder_lr == 2e-3 and cfg.head_lr == pytest.approx(2e-3 * experiment.HEAD_LR_RATIO)
    want = cfg.head_lr if (rate, task) == ("head", "segmentation") else 0.0
    assert cfg.pretrained_decoder_lr == want
    sentence = experiment.decoder_rate_sentence({"pretrained_decoder_lr": rate, "head_lr_ratio": 3.0})
    assert ("new layers' rate" in sentence) == (rate == "head") and f"--pretrained-decoder-lr {rate}" in sentence
    # a results file from before the flag: finetune.py's default then, the encoder's rate
    assert "--pretrained-decoder-lr encoder" in experiment.decoder_rate_sentence({"head_lr_ratio": 3.0})


@pytest.mark.parametrize("made", [None, 0.0, 0.006])
@pytest.mark.parametrize("rate", ["head", "encoder"])
def test_a_dense_run_made_at_another_decoder_rate_is_refused_naming_it(tmp_path, rate, made):
    """A run in --out whose pretrained decoder learned at another rate than the flag gives (one made before the
    flag: no key, the encoder's rate) would be reported under the wrong rate: an error naming its folder."""
    folder = tmp_path / "segmentation" / "masked_matched_frac0.1_lr0.002_seed0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("encoder_lr: 0.002\n" + ("" if made is None else
                                                                 f"pretrained_decoder_lr: {made}\n"))
    args = experiment.parse(["--out", str(tmp_path), "--pretrained-decoder-lr", rate])
    agrees = (rate == "head") == (made == 0.006)
    if agrees:
        experiment.check_decoder_rate(str(folder), "segmentation", 2e-3, args)
    else:
        with pytest.raises(common.UserError, match=f"{folder}: its pretrained decoder learned at"):
            experiment.check_decoder_rate(str(folder), "segmentation", 2e-3, args)


@pytest.mark.parametrize("argv,message", [
    (["--pretrained-decoder-lr", "fast"], "argument --pretrained-decoder-lr: invalid choice"),
    (["--finetune-args", "--val-fraction 0.2 --encoder-lr 0.1"], "--finetune-args: --encoder-lr is set by the "
                                                                  "protocol itself"),
    (["--finetune-args=--pretrained-decoder-lr=0.1"], "--finetune-args: --pretrained-decoder-lr is set by"),
    (["--arms", "rubik,genesis"], "--arms: 'rubik,genesis' must name scratch"),
    (["--arms", "scratch,bogus"], "--arms: 'scratch,bogus' must name scratch"),
    (["--inits", "scratch"], "--arms: 'scratch' must name scratch and at least one of rubik"),
    (["--pretrain-scale", "huge"], "argument --pretrain-scale: invalid choice"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert common.run_main(experiment.main, ["--report-only", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_arm_whose_pretext_task_is_missing_stops_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment.pretrain, "TASKS", {k: v for k, v in experiment.pretrain.TASKS.items()
                                                       if k != "rubik"})
    assert common.run_main(experiment.main, ["--out", str(tmp_path / "x"), "--arms", "scratch,rubik"]) == 2
    err = capsys.readouterr().err
    assert "--arms: rubik pretrains with train/pretrain.py --task rubik, which this installation does not" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content,message", [
    ("not json", "not a readable results file (JSONDecodeError)"),
    ('{"rows": []}', "missing ['command', 'tasks', 'arms', 'fractions', 'seeds', 'lrs']"),
    ('{"command": "c", "tasks": [], "arms": [], "fractions": [], "seeds": [], "lrs": [], "rows": [{"arm": "x"}]}',
     "row 0 lacks one of"),
    ('{"command": "c", "tasks": [], "arms": [], "fractions": [], "seeds": [], "lrs": [], "rows": [{"task": "t", '
     '"metric": "m", "fraction": 1, "arm": "imagenet", "seed": 0, "lr": 1, "val": 0, "test": 0}]}',
     "unknown arm(s) or task(s) ['imagenet', 't']"),
])
def test_a_bad_results_file_is_a_one_line_error_naming_it(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    assert common.run_main(experiment.main, ["--report-only", "--results", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --results: {path}: ") and message in err[0], err


def test_recorded_command_leaves_out_where_outputs_go():
    argv = ["--arms", "scratch,rubik", "--docs", "docs", "--results=x.json", "--report-only", "--readme", "R.md",
            "--seeds", "0,1"]
    assert experiment.recorded_command(argv) == "python train/experiment.py --arms scratch,rubik --seeds 0,1"


# -- finetune.py's validation split ----------------------------------------------------------------
def _cfg(*argv):
    cfg, _ = finetune.parse(["--preset", "tiny", *argv])
    finetune.check_config(cfg)
    return cfg


@pytest.mark.parametrize("seed", [0, 3])
def test_classification_val_split_is_disjoint_stratified_and_independent_of_label_fraction(seed):
    splits = {}
    for fraction in (0.05, 0.25, 1.0):
        *_, idx, names, named = finetune.load_classification(_cfg("--num-cases", "40", "--seed", str(seed),
                                                                  "--label-fraction", str(fraction)))
        tr, va, te = set(idx["train"]), set(idx["val"]), set(idx["test"])
        assert tr and va and te and not (tr & va) and not (tr & te) and not (va & te)
        assert "--val-fraction 0.2" in named["chosen_by"]
        splits[fraction] = idx
    assert splits[0.05]["val"] == splits[0.25]["val"] == splits[1.0]["val"]
    assert splits[0.05]["test"] == splits[1.0]["test"]
    assert set(splits[0.05]["train"]) < set(splits[0.25]["train"]) < set(splits[1.0]["train"])
    assert len(splits[1.0]["val"]) == 8  # 40 cases, 10 per class: 2 test + 2 val (round(8 * 0.2)) per class
    *_, idx, _, named = finetune.load_classification(_cfg("--num-cases", "40", "--seed", str(seed),
                                                          "--val-fraction", "0"))
    assert idx["val"] == [] and len(idx["train"]) == 32


@pytest.fixture(scope="module")
def atlas():
    from rubikops.data import default
    (train,), (test,), names = default.atlas_segmentation_task()
    return train.label.data[0], test.label.data[0], names


def test_segmentation_validation_holds_every_class_and_labels_spread_over_the_volume(atlas):
    train_truth, test_truth, names = atlas
    depth = train_truth.shape[-1]
    classes = set(range(len(names)))
    seen = {}
    for fraction in (0.05, 0.1, 0.25, 1.0):
        train, val, test, _, named = finetune.load_segmentation(_cfg("--task", "segmentation", "--patch", "16,16,16",
                                                                     "--label-fraction", str(fraction)))
        (img, lab), ((vimg, vlab),), ((_, tlab),) = train[0], val, test
        assert len(train) == 1 and img.shape[-1] == vimg.shape[-1] == depth  # the image kept whole
        labelled = np.flatnonzero((lab.numpy() != finetune.UNLABELLED).any((0, 1))).tolist()
        val_slices = np.flatnonzero((vlab.numpy() != finetune.UNLABELLED).any((0, 1))).tolist()
        assert labelled == named["axial_slices"]["train"] and val_slices == named["axial_slices"]["val"]
        # labels are the atlas's own where given, UNLABELLED elsewhere
        np.testing.assert_array_equal(lab.numpy()[..., labelled], train_truth[..., labelled])
        np.testing.assert_array_equal(vlab.numpy()[..., val_slices], train_truth[..., val_slices])
        np.testing.assert_array_equal(tlab.numpy(), test_truth)
        # validation: every class, disjoint from the training labels by more than the guard, and from the test
        assert set(np.unique(vlab.numpy()[..., val_slices]).tolist()) == classes
        assert min(abs(a - b) for a in labelled for b in val_slices) > finetune.GUARD_SLICES
        assert "left hemisphere" in named["val"][0] and "right hemisphere" in named["test"][0]
        # the labelled slices are spread over the volume, not one slab: every class is labelled
        assert set(np.unique(lab.numpy()[..., labelled]).tolist()) == classes, fraction
        assert labelled[0] < depth // 4 and labelled[-1] > 3 * depth // 4
        seen[fraction] = (tuple(labelled), tuple(val_slices))
    assert len({v[1] for v in seen.values()}) == 1  # the same validation slices at every label fraction
    counts = [len(seen[f][0]) for f in (0.05, 0.1, 0.25, 1.0)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[-1] == depth - len(seen[1.0][1]) - 2 * finetune.GUARD_SLICES * finetune.VAL_SLABS
    assert counts[0] == round(0.05 * counts[-1])
    too_much = _cfg("--task", "segmentation", "--patch", "16,16,16", "--val-fraction", "0.9")
    with pytest.raises(common.UserError, match=r"^--val-fraction 0.9: 4 validation slabs of 21 axial slices"):
        finetune.load_segmentation(too_much)
    train, val, *_ = finetune.load_segmentation(_cfg("--task", "segmentation", "--val-fraction", "0",
                                                     "--label-fraction", "0.1"))
    assert val == [] and (train[0][1] != finetune.UNLABELLED).flatten(0, 1).any(0).sum() == round(0.1 * depth)


class _NearestClass(torch.nn.Module):
    """Logits -(x - c)^2: every voxel predicted as the class nearest its intensity."""

    def __init__(self, k):
        super().__init__()
        self.register_buffer("c", torch.arange(k, dtype=torch.float32).view(1, k, 1, 1, 1))

    def forward(self, x):
        return -(x - self.c) ** 2


@pytest.mark.parametrize("seed", [0, 1])
def test_segmentation_evaluation_scores_labelled_voxels_only_against_numpy(seed):
    rng = np.random.default_rng(seed)
    k, shape = 5, (13, 18, 23)
    img = torch.from_numpy(rng.uniform(-0.4, k - 0.6, size=(1, *shape)).astype(np.float32))
    truth = rng.integers(0, k - 1, size=shape)  # class k-1 absent from the truth: left out, though predicted
    lab = torch.from_numpy(truth).clone()
    lab[..., rng.random(shape[-1]) < 0.6] = finetune.UNLABELLED  # sparse axial slices, as a validation split
    cfg = _cfg("--task", "segmentation", "--patch", "8,8,8", "--overlap", "0.5")
    rep = finetune.evaluate(_NearestClass(k), cfg, True, torch.device("cpu"), common.autocast(torch.device("cpu"),
                            "none"), [f"c{i}" for i in range(k)], [(img, lab)])
    pred = np.clip(np.rint(img[0].numpy()), 0, k - 1)
    keep = lab.numpy() != finetune.UNLABELLED
    ref = [2 * ((pred == c) & (truth == c) & keep).sum() / (((pred == c) & keep).sum() + ((truth == c) & keep).sum())
           for c in range(k - 1)]
    assert rep["dice_per_class"][:k - 1] == pytest.approx(ref, abs=1e-12) and math.isnan(rep["dice_per_class"][-1])
    assert rep["mean_dice"] == pytest.approx(np.mean(ref[1:]), abs=1e-12)


@pytest.mark.parametrize("depth,fraction", [(91, 0.2), (40, 0.1), (60, 0.15), (200, 0.05)])
def test_axial_split_by_its_definition(depth, fraction):
    splits = script("splits")
    layout = splits.axial_split(depth, fraction)
    thick = math.ceil(fraction * depth / splits.VAL_SLABS)
    slabs = [z for z in layout.val if z - 1 not in layout.val]  # the first slice of each slab
    assert len(slabs) * thick == len(layout.val) <= depth
    for first in slabs:
        centre = first + thick / 2
        assert any(abs(centre - (i + 0.5) * depth / splits.VAL_SLABS) <= 1 for i in range(splits.VAL_SLABS))
    guard = {z + d for z in layout.val for d in range(-splits.GUARD_SLICES, splits.GUARD_SLICES + 1)}
    assert layout.candidates == tuple(z for z in range(depth) if z not in guard)
    for f in (0.05, 0.3, 1.0):
        lab = layout.labelled(f)
        assert set(lab) <= set(layout.candidates) and list(lab) == sorted(set(lab))
        assert len(lab) == (len(layout.candidates) if f == 1 else max(1, round(f * len(layout.candidates))))
        gaps = np.diff([layout.candidates.index(z) for z in lab])
        assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # every k-th candidate slice


def test_training_patches_always_hold_labelled_slices_when_labels_are_sparse():
    sparse_labels = pytest.importorskip("rubikops.sparse_labels")
    label = torch.full((5, 4, 40), finetune.UNLABELLED)
    label[..., [3, 20, 37]] = 1
    origins = sparse_labels.patch_origins(label, (2, 4, 8))
    assert origins[0].tolist() == [0, 1, 2, 3] and origins[1].tolist() == [0]
    assert origins[2].tolist() == [z for z in range(33) if any(z <= s < z + 8 for s in (3, 20, 37))]


# -- the protocol end to end -------------------------------------------------------------------------
def test_experiment_end_to_end_writes_documents_only_when_asked_and_rebuilds_from_the_results_file(tmp_path, capsys):
    data = smooth_volumes(tmp_path / "scans")
    docs, readme, results = tmp_path / "docs", tmp_path / "README.md", tmp_path / "results" / "experiment-x.json"
    docs.mkdir()
    (docs / "experiment.md").write_text("# Title\n\nintro\n\n<!-- protocol:start -->\nold table\n"
                                        "<!-- protocol:end -->\n\n<!-- pretext-study:start -->\nstudy\n"
                                        "<!-- pretext-study:end -->\n")
    readme.write_text("# rubikops\n\nbefore\n\n<!-- protocol-verdict:start -->\nold\n<!-- protocol-verdict:end -->"
                      "\n\nafter\n")
    before = {p: p.read_text() for p in (docs / "experiment.md", readme)}
    run = ["--out", str(tmp_path / "exp"), "--arms", "scratch,rubik,ordering", "--fractions", "0.5", "--seeds", "0,1",
           "--lrs", "1e-3,3e-3", "--pretrain-steps", "4", "--steps", "classification=3,segmentation=2",
           # group norm: after 2 steps batch norm's running statistics still make every voxel background,
           # a validation Dice of 0.000 at every rate, which the protocol refuses to choose on
           "--pretrain-args", f"--preset tiny --data {data} --spacing 1 --no-tensorboard --cache-dir {tmp_path}/c "
                              "--norm group",
           "--finetune-args", "--preset tiny --num-cases 40 --checkpoint-every 100 --overlap 0 --norm group"]
    # without --docs and --readme: the runs and the results file, no document touched
    assert common.run_main(experiment.main, run + ["--results", str(results)]) == 0
    cap = capsys.readouterr()
    assert {p: p.read_text() for p in before} == before and not (docs / "experiment.png").exists()
    assert f"wrote {results}" in cap.err and "no document written" in cap.err
    assert "== pretraining rubik" in cap.out and "== pretraining ordering" in cap.out
    assert "== classification scratch fraction 0.5 lr 0.001 seed 0" in cap.out
    doc = json.loads(results.read_text())
    assert len(doc["rows"]) == 2 * 3 * 1 * 2 * 2 and doc["arms"] == ["scratch", "rubik", "ordering"]
    assert {k for r in doc["rows"] for k in r} == {"task", "metric", "fraction", "arm", "seed", "lr", "val", "test"}
    assert all(isinstance(r["val"], float) and isinstance(r["test"], float) for r in doc["rows"])
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"] and len(doc["git_revision"].split("-")[0]) == 40
    assert doc["command"].startswith("python train/experiment.py --out ") and "--results" not in doc["command"]
    assert doc["pretraining"]["ordering"]["flags"].startswith("--steps 4 --rotations none --preset tiny")
    assert doc["pretraining"]["rubik"]["summary"]["steps"] == 4 and doc["pretrained_decoder_lr"] == "head"
    assert doc["command"].endswith(" --pretrained-decoder-lr head")  # the rate in effect, so that it reruns as made
    # each row's numbers are the run's own results.json
    r = next(r for r in doc["rows"] if r["task"] == "segmentation")
    res = json.load(open(experiment.run_folder(str(tmp_path / "exp"), "segmentation", r["arm"], r["fraction"], r["lr"],
                                               r["seed"]) + "/results.json"))
    assert (r["val"], r["test"]) == (res["val_metrics"]["mean_dice"], res["metrics"]["mean_dice"])
    # with --docs and --readme: nothing retrained, both sections replaced, the rest kept, every file named
    assert common.run_main(experiment.main, run + ["--docs", str(docs), "--readme", str(readme)]) == 0
    cap = capsys.readouterr()
    assert "== " not in cap.out
    for path in (docs / "experiment.md", docs / "experiment.png", readme):
        assert f"wrote {path}" in cap.err
    md = (docs / "experiment.md").read_text()
    assert md.startswith("# Title\n\nintro\n\n<!-- protocol:start -->\nMade by `python train/experiment.py --out ")
    assert "old table" not in md and "<!-- pretext-study:start -->\nstudy\n<!-- pretext-study:end -->" in md
    for task, metric in (("classification", "macro AUC"), ("segmentation", "mean Dice")):
        assert md.count(f"| {task} | {metric} | 0.5 |") == 1
    text = readme.read_text()
    assert text.startswith("# rubikops\n\nbefore\n\n<!-- protocol-verdict:start -->\nMean ± sd") and \
        text.endswith("\n\nafter\n") and "\nold\n" not in text
    assert os.path.getsize(docs / "experiment.png") > 1000
    # a fresh clone: no runs folder, only the results file -> the same blocks, byte for byte, and render() agrees
    import shutil
    shutil.rmtree(tmp_path / "exp")
    (docs / "experiment.png").unlink()
    saved = {p: p.read_text() for p in (docs / "experiment.md", readme)}
    for p in saved:
        p.write_text(p.read_text().replace("Mean ± sd", "edited").replace("Made by", "edited"))
    assert common.run_main(experiment.main, ["--report-only", "--results", str(results), "--docs", str(docs),
                                             "--readme", str(readme)]) == 0
    assert {p: p.read_text() for p in saved} == saved and (docs / "experiment.png").exists()
    blocks = experiment.render(str(results))
    assert f"<!-- protocol:start -->\n{blocks['protocol']}\n<!-- protocol:end -->" in saved[docs / "experiment.md"]
    assert f"<!-- protocol-verdict:start -->\n{blocks['protocol-verdict']}\n<!-- protocol-verdict:end -->" in \
        saved[readme]
    # a matched-scale protocol has markers and a plot of its own, beside the default one
    matched = dict(json.loads(results.read_text()), pretrain_scale="matched")
    (tmp_path / "matched.json").write_text(json.dumps(matched))
    assert common.run_main(experiment.main, ["--report-only", "--results", str(tmp_path / "matched.json"),
                                             "--docs", str(docs)]) == 0
    md = (docs / "experiment.md").read_text()
    assert md.startswith(saved[docs / "experiment.md"].rstrip("\n")) and "<!-- protocol-matched:start -->" in md
    assert "](experiment-matched.png)\n<!-- protocol-matched:end -->" in md and (docs / "experiment-matched.png").exists()
    assert set(experiment.render(str(tmp_path / "matched.json"))) == {"protocol-matched", "protocol-verdict-matched"}
    # --report-only with a results file that is not there
    capsys.readouterr()
    assert common.run_main(experiment.main, run + ["--report-only", "--results", str(tmp_path / "none.json")]) == 2
    assert "--results: " in capsys.readouterr().err
