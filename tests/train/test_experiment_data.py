"""train/experiment.py on your own data (--unlabelled, --images, --labels): the split every run shares, bad input
as one-line errors, and the protocol end to end on generated volumes."""
import json
import os
import shutil

import numpy as np
import pytest

from .helpers import script, smooth_volumes

common = script("common")
experiment = script("experiment")
experiment_data = script("experiment_data")


def labelled_cases(folder, n, seed=0) -> tuple:
    """n smooth volumes (img/) and label maps (lab/): two foreground classes, the brightest 15% and the next 25%
    of each volume's voxels, so every case holds every class."""
    import nibabel as nib
    smooth_volumes(folder / "img", n=n, seed=seed)
    (folder / "lab").mkdir()
    for i in range(n):
        img = nib.load(str(folder / "img" / f"v{i}.nii.gz"))
        x = np.asarray(img.dataobj)
        lab = (x > np.percentile(x, 60)).astype(np.uint8) + (x > np.percentile(x, 85))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), str(folder / "lab" / f"v{i}.nii.gz"))
    return str(folder / "img" / "*.nii.gz"), str(folder / "lab" / "*.nii.gz")


# -- the split -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 4, 6, 9, 20, 41])
def test_default_split_by_its_definition(n):
    names = [f"c{i}.nii.gz" for i in range(n)]
    split = experiment_data.split_cases(n, names, "", "")
    train, val, test = (split[k] for k in ("train", "val", "test"))
    assert sorted(train + val + test) == list(range(n))  # disjoint and complete
    assert len(test) == max(1, round(n * 0.25)) and len(val) == max(1, round((n - len(test)) * 0.2)) and train
    # drawn once with the fixed seed: the order of a permutation, not the files' order
    order = np.random.default_rng(experiment_data.SPLIT_SEED).permutation(n).tolist()
    assert test == sorted(order[:len(test)]) and val == sorted(order[len(test):len(test) + len(val)])
    assert split == experiment_data.split_cases(n, names, "", "")
    assert split["chosen_by"] == "test: 25% of the cases, validation: 20% of the non-test cases, drawn with seed 0"


def test_the_cases_you_name_are_kept_and_the_rest_drawn():
    names = [f"c{i}.nii.gz" for i in range(8)]
    split = experiment_data.split_cases(8, names, "c3.nii.gz,0", "")
    assert split["test"] == [0, 3] and len(split["val"]) == 1 and split["val"][0] not in (0, 3)
    assert split["chosen_by"].startswith("--test-cases, validation: 20%")
    split = experiment_data.split_cases(8, names, "1", "2,c5.nii.gz")
    assert (split["test"], split["val"], split["train"]) == ([1], [2, 5], [0, 3, 4, 6, 7])
    assert split["chosen_by"] == "--test-cases, --val-cases"


def test_help_names_the_flags_of_your_data(capsys):
    with pytest.raises(SystemExit) as stop:
        experiment.parse(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--unlabelled" in out and "25% of the cases" in out and "20% of the" in out
    # your data's runs default to a folder of their own, beside the bundled tasks' runs/experiment
    own = experiment.parse(["--images", "i", "--labels", "l", "--unlabelled", "u"])
    assert experiment.check_args(own)[0] == ["segmentation"] and own.out == "runs/experiment-own-data"
    bundled = experiment.parse([])
    assert experiment.check_args(bundled)[0] == ["classification", "segmentation"] and bundled.out == "runs/experiment"


def test_a_results_file_with_a_bad_data_record_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"command": "c", "tasks": [], "arms": [], "fractions": [], "seeds": [], "lrs": [],
                                "rows": [], "data": {"cases": ["a"], "split": {"train": [0]}}}))
    assert common.run_main(experiment.main, ["--report-only", "--results", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --results: {path}: 'data' is not the record of your data that train/experiment.py "
                   "writes"]


def test_seed_ranges():
    parse = experiment_data.parse_seeds
    assert parse("0-4") == [0, 1, 2, 3, 4] and parse("0-2,7") == [0, 1, 2, 7] and parse("3") == [3]
    assert parse("-1,3") == [-1, 3] and parse(" 5-5 ") == [5]
    with pytest.raises(common.UserError, match=r"^--seeds: the range '4-0' runs backwards \(write 0-4\)"):
        parse("4-0")
    with pytest.raises(common.UserError, match=r"^--seeds: '1-' is not a comma-separated list of ints"):
        parse("1-")


# -- bad input: one line, naming the flag, before any run ---------------------------------------------------------
@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    images, labels = labelled_cases(root, 6)
    return root, images, labels


@pytest.mark.parametrize("flags,message", [
    (["--images", "{img}"], "--images and --labels go together"),
    (["--labels", "{lab}", "--unlabelled", "{scans}"], "--images and --labels go together"),
    (["--images", "{img}", "--labels", "{lab}"], "--unlabelled: the scans the pretrained arms pretrain on is missing"),
    (["--images", "{img}", "--labels", "{root}/lab/v[0-4].nii.gz", "--unlabelled", "{scans}"],
     "--images matches 6 case(s) but --labels 5; each image needs its label map"),
    (["--images", "{root}/img/v[01].nii.gz", "--labels", "{root}/lab/v[01].nii.gz", "--unlabelled", "{scans}"],
     "--images/--labels: 2 labelled case(s); the protocol needs at least 3: one to train on, one for validation "
     "(--val-cases) and one for testing (--test-cases)"),
    (["--images", "{root}/none/*.nii.gz", "--labels", "{lab}", "--unlabelled", "{scans}"],
     "--images: {root}/none/*.nii.gz: pattern matches no"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{root}/img", "--test-cases", "v2.nii.gz"],
     "--unlabelled: {root}/img/v2.nii.gz is the test case 'v2.nii.gz'; pretraining on a test scan leaks it"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{scans}", "--test-cases", "1", "--val-cases", "1"],
     "--test-cases and --val-cases both name ['v1.nii.gz']"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{scans}", "--test-cases", "0,1,2",
      "--val-cases", "3,4,5"], "no training case is left out of 6"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{scans}", "--test-cases", "9"],
     "--test-cases: index 9 is out of range for 6 case(s)"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{scans}", "--tasks", "classification"],
     "--images/--labels: your data is one segmentation task at its own scale"),
    (["--images", "{img}", "--labels", "{lab}", "--unlabelled", "{scans}", "--pretrain-scale", "matched"],
     "--images/--labels: your data is one segmentation task at its own scale"),
])
def test_bad_input_is_a_one_line_error_before_any_run(cases, tmp_path, capsys, flags, message):
    root, images, labels = cases
    fill = dict(img=images, lab=labels, root=root, scans=root / "img")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--arms", "scratch,rubik", *[f.format(**fill) for f in flags]]
    assert common.run_main(experiment.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(**fill) in err[0], err
    assert not out.exists()


# -- the protocol end to end ---------------------------------------------------------------------------------------
def test_protocol_on_your_data_end_to_end(tmp_path, capsys):
    images, labels = labelled_cases(tmp_path, 6)
    scans = smooth_volumes(tmp_path / "scans", n=3, seed=1)
    out, results, docs = tmp_path / "exp", tmp_path / "results.json", tmp_path / "docs"
    run = ["--out", str(out), "--unlabelled", scans, "--images", images, "--labels", labels, "--arms", "scratch,rubik",
           "--fractions", "0.34,1", "--seeds", "0-1", "--lrs", "1e-3,3e-3", "--pretrain-steps", "4",
           "--steps", "segmentation=3",
           # group norm: after 3 steps batch norm's running statistics still make every voxel background,
           # the same validation Dice at every rate, which the protocol refuses to choose on
           "--pretrain-args", f"--preset tiny --spacing 1 --no-tensorboard --cache-dir {tmp_path}/c --norm group",
           "--finetune-args", "--preset tiny --checkpoint-every 100 --overlap 0 --norm group"]
    assert common.run_main(experiment.main, run + ["--results", str(results), "--docs", str(docs)]) == 0
    cap = capsys.readouterr()
    assert "== pretraining rubik" in cap.out and "== segmentation scratch fraction 0.34 lr 0.001 seed 0" in cap.out
    doc = json.loads(results.read_text())
    assert doc["tasks"] == ["segmentation"] and doc["seeds"] == [0, 1] and doc["arms"] == ["scratch", "rubik"]
    assert len(doc["rows"]) == 2 * 2 * 2 * 2
    assert {k for r in doc["rows"] for k in r} == {"task", "metric", "fraction", "arm", "seed", "lr", "val", "test"}
    assert {(r["task"], r["metric"]) for r in doc["rows"]} == {("segmentation", "mean_dice")}
    assert all(isinstance(r["val"], float) and isinstance(r["test"], float) for r in doc["rows"])
    assert doc["command"].startswith("python train/experiment.py --out ") and doc["machine"]["cores"] >= 1
    # the split: 6 cases, 2 test (25%), 1 validation (20% of 4), 3 training; recorded in the results file
    data = doc["data"]
    assert data["cases"] == [f"v{i}.nii.gz" for i in range(6)]
    split = data["split"]
    assert (len(split["test"]), len(split["val"]), len(split["train"])) == (2, 1, 3)
    assert json.loads((out / "data.json").read_text()) == data
    assert f"--data {scans}" in doc["pretraining"]["rubik"]["flags"]
    for r in doc["rows"]:  # each row is its run's results.json, every run on the one split
        res = json.load(open(os.path.join(experiment.run_folder(str(out), "segmentation", r["arm"], r["fraction"],
                                                                r["lr"], r["seed"]), "results.json")))
        assert (r["val"], r["test"]) == (res["val_metrics"]["mean_dice"], res["metrics"]["mean_dice"])
        assert res["split"]["test"] == [data["cases"][i] for i in split["test"]]
        assert res["split"]["val"] == [data["cases"][i] for i in split["val"]]
        # a label fraction keeps the first training cases in file order: 0.34 of 3 is 1
        assert res["split"]["train"] == [data["cases"][i] for i in split["train"]][:1 if r["fraction"] < 1 else 3]
    md = (docs / "experiment.md").read_text()
    assert "<!-- protocol-own-data:start -->" in md and "](experiment-own-data.png)" in md
    assert "Your data: 6 labelled cases, split once for every run (test: 25% of the cases" in md
    assert "each label fraction keeps the first training cases in file order (0.34: 1, 1: 3)" in md
    assert md.count("| segmentation | mean Dice |") == 2 and (docs / "experiment-own-data.png").exists()
    # resumed: nothing retrained; another split in the same --out, or the bundled tasks there, are refused
    assert common.run_main(experiment.main, run) == 0
    assert "== " not in capsys.readouterr().out
    assert common.run_main(experiment.main, run + ["--test-cases", "0"]) == 2
    assert "its runs were made on other data or another split" in capsys.readouterr().err
    assert common.run_main(experiment.main, ["--out", str(out), "--arms", "scratch,rubik"]) == 2
    assert "holds runs on your data" in capsys.readouterr().err
    shutil.copy(os.path.join(scans, "v0.nii.gz"), os.path.join(scans, "v9.nii.gz"))  # another scan to pretrain on
    assert common.run_main(experiment.main, run) == 2
    assert "its runs were made on other data or another split" in capsys.readouterr().err
    # a fresh clone: the results file alone rebuilds the same table and plot
    saved = md
    shutil.rmtree(out)
    shutil.rmtree(docs)
    assert common.run_main(experiment.main, ["--report-only", "--results", str(results), "--docs", str(docs)]) == 0
    assert (docs / "experiment.md").read_text() == saved and (docs / "experiment-own-data.png").exists()
    assert set(experiment.render(str(results))) == {"protocol-own-data", "protocol-verdict-own-data"}
