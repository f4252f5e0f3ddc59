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


# -- the exact Wilcoxon signed-rank test -------------------------------------------------------------
def test_wilcoxon_known_values():
    # n = 5, all positive: only one of the 32 sign assignments is as extreme on each side
    assert experiment.wilcoxon_exact([0.1, 0.2, 0.3, 0.4, 0.5]) == (0.0, 2 / 32, 5)
    assert experiment.wilcoxon_exact([1.0]) == (0.0, 1.0, 1)
    assert experiment.wilcoxon_exact([0.0, 0.0]) == (0.0, 1.0, 0)  # nothing left after dropping zeros
    stat, p, n = experiment.wilcoxon_exact([1, 2, -3, 4, 4, 0])  # a zero (dropped) and a tie (ranks 4.5, 4.5)
    # T- = 3 or less: negatives {}, {1}, {2}, {3} or {1, 2}, 5 of 32 assignments, twice
    assert (stat, n) == (3.0, 5) and p == pytest.approx(10 / 32)
    with pytest.raises(ValueError, match="NaN"):
        experiment.wilcoxon_exact([1.0, math.nan])


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
        stat, p, m = experiment.wilcoxon_exact(d.tolist())
        assert m == np.count_nonzero(d)
        assert stat == pytest.approx(float(ref.statistic)), d
        assert p == pytest.approx(float(ref.pvalue), abs=1e-12), d


# -- learning rate chosen on validation, never on test --------------------------------------------------
def _fake_runs(val_by_lr, test_by_lr, seeds=(0, 1, 2), task="classification", fraction=0.1):
    runs = []
    for init, (lr, s) in itertools.product(("scratch", "rubik"), itertools.product(sorted(val_by_lr), seeds)):
        runs.append({"task": task, "init": init, "fraction": fraction, "lr": lr, "seed": s,
                     "val": val_by_lr[lr][init] + 0.01 * s, "test": test_by_lr[lr][init] + 0.01 * s})
    return runs


def test_lr_is_chosen_on_validation_and_test_never_looked_at():
    lrs = [1e-4, 1e-3, 1e-2]
    # validation prefers 1e-3 for scratch and 1e-2 for rubik; test would prefer the opposite ends
    val = {1e-4: {"scratch": 0.5, "rubik": 0.5}, 1e-3: {"scratch": 0.9, "rubik": 0.6}, 1e-2: {"scratch": 0.6, "rubik": 0.8}}
    test = {1e-4: {"scratch": 0.95, "rubik": 0.2}, 1e-3: {"scratch": 0.7, "rubik": 0.99}, 1e-2: {"scratch": 0.3, "rubik": 0.4}}
    runs = _fake_runs(val, test)
    assert experiment.choose_lr(runs, "classification", "scratch", 0.1, lrs)[0] == 1e-3
    assert experiment.choose_lr(runs, "classification", "rubik", 0.1, lrs)[0] == 1e-2
    (row,) = experiment.compare(runs, ["classification"], ["scratch", "rubik"], [0.1], lrs, [0, 1, 2])
    assert row["scratch"]["lr"] == 1e-3 and row["pretrained"]["lr"] == 1e-2
    assert row["scratch"]["mean"] == pytest.approx(0.71) and row["pretrained"]["mean"] == pytest.approx(0.41)
    # any change of the test metrics leaves the choice alone
    rng = np.random.default_rng(0)
    for r in runs:
        r["test"] = float(rng.random())
    (again,) = experiment.compare(runs, ["classification"], ["scratch", "rubik"], [0.1], lrs, [0, 1, 2])
    assert (again["scratch"]["lr"], again["pretrained"]["lr"]) == (1e-3, 1e-2)
    # a run without a validation metric does not count towards its rate
    for r in runs:
        r["val"] = None if r["lr"] == 1e-3 else r["val"]
    assert experiment.choose_lr(runs, "classification", "scratch", 0.1, lrs)[0] == 1e-2


def test_rows_pair_by_seed_and_say_whether_pretrained_beats_scratch_by_one_sd():
    val = {1e-3: {"scratch": 0.5, "rubik": 0.5}}
    test = {1e-3: {"scratch": 0.60, "rubik": 0.70}}
    runs = _fake_runs(val, test, seeds=(0, 1, 2, 3, 4))
    (row,) = experiment.compare(runs, ["classification"], ["scratch", "rubik"], [0.1], [1e-3], [0, 1, 2, 3, 4])
    assert row["difference"] == pytest.approx(0.1) and row["scratch"]["sd"] == pytest.approx(0.0158, abs=1e-4)
    assert row["beats_by_one_sd"] and row["wilcoxon"]["n"] == 5 and row["wilcoxon"]["p"] == pytest.approx(2 / 32)
    text = experiment.table([row], "python train/experiment.py", 5, 5, [0, 1, 2, 3, 4])
    assert "| classification | macro AUC | 0.1 | 0.620 ± 0.016 (0.001) | Rubik's cube | 0.720 ± 0.016 (0.001) " \
           "| +0.100 | 0.062 (5) | **yes** |" in text
    assert "**Rubik's cube: met** (1 of 1 such rows)." in text


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
def test_experiment_end_to_end_fills_the_markers_and_keeps_the_rest(tmp_path, capsys):
    data = smooth_volumes(tmp_path / "scans")
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    docs.mkdir()
    (docs / "experiment.md").write_text("# Title\n\nintro\n\n<!-- protocol:start -->\nold table\n"
                                        "<!-- protocol:end -->\n\n<!-- pretext-study:start -->\nstudy\n"
                                        "<!-- pretext-study:end -->\n")
    readme.write_text("# rubikops\n\nbefore\n\n<!-- protocol:start -->\nold\n<!-- protocol:end -->\n\nafter\n")
    argv = ["--out", str(tmp_path / "exp"), "--docs", str(docs), "--readme", str(readme),
            "--fractions", "0.5,1", "--seeds", "0,1", "--lrs", "1e-3,3e-3", "--pretrain-steps", "4",
            "--steps", "classification=3,segmentation=2",
            "--pretrain-args", f"--preset tiny --data {data} --spacing 1 --no-tensorboard --cache-dir {tmp_path}/c",
            "--finetune-args", "--preset tiny --num-cases 16 --checkpoint-every 100 --overlap 0"]
    assert common.run_main(experiment.main, argv) == 0
    out = capsys.readouterr().out
    md = (docs / "experiment.md").read_text()
    assert md.startswith("# Title\n\nintro\n\n<!-- protocol:start -->\nMade by `python train/experiment.py --out ")
    assert "old table" not in md and "<!-- pretext-study:start -->\nstudy\n<!-- pretext-study:end -->" in md
    for task, metric in (("classification", "macro AUC"), ("segmentation", "mean Dice")):
        assert md.count(f"| {task} | {metric} |") == 2
    assert "Wilcoxon p" in md and "](experiment.png)" in md and "Incomplete" not in md
    text = readme.read_text()
    assert text.startswith("# rubikops\n\nbefore\n\n<!-- protocol:start -->\nMade by") and text.endswith("\n\nafter\n")
    assert "](docs/experiment.png)" in text and "\nold\n" not in text
    assert os.path.getsize(docs / "experiment.png") > 1000
    res = json.load(open(tmp_path / "exp" / "results.json"))
    assert len(res["runs"]) == 2 * 2 * 2 * 2 * 2 and len(res["rows"]) == 4
    assert all(r["val"] is not None and r["results"]["split"]["val"] for r in res["runs"])
    for row in res["rows"]:
        assert row["scratch"]["lr"] in (1e-3, 3e-3) and row["seeds"] == [0, 1]
    run = res["runs"][0]["results"]
    assert set(run["split"]["val"]).isdisjoint(run["split"]["train"] + run["split"]["test"])
    assert "--finetune-args" in out and "== classification scratch fraction 0.5 lr 0.001 seed 0" in out
    # everything done: nothing is trained again, and --report-only rebuilds the same table
    assert common.run_main(experiment.main, argv) == 0
    assert "== " not in capsys.readouterr().out
    (docs / "experiment.png").unlink()
    assert common.run_main(experiment.main, argv + ["--report-only"]) == 0
    assert (docs / "experiment.md").read_text() == md and (docs / "experiment.png").exists()
    # --report-only with runs missing trains nothing and says how many are finished
    assert common.run_main(experiment.main, argv + ["--report-only", "--seeds", "0,1,2"]) == 0
    cap = capsys.readouterr().out
    assert "== " not in cap and "Incomplete: 32 of 48 runs finished" in cap
