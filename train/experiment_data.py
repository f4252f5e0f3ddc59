"""The protocol on your own data (train/experiment.py --unlabelled, --images,
--labels): its flags (and --seeds ranges such as 0-4), the one split of your
labelled cases that every run shares, the train/pretrain.py and
train/finetune.py flags that point the runs at your files, and the record in
--out that ties its runs to that data.

The split is fixed before any run and is the same for every arm, label
fraction, learning rate and seed: --test-cases and --val-cases when given,
else TEST_SHARE of the cases for testing and VAL_SHARE of the rest for
validation (each at least one), drawn with SPLIT_SEED.  Learning rates are
chosen on the validation cases; the test cases are only reported."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

import common
from common import UserError
from splits import cases_kept, pick_cases

TEST_SHARE = 0.25  # finetune.py's own share of your cases held out for testing
VAL_SHARE = 0.2    # of the non-test cases: finetune.py's --val-fraction default
SPLIT_SEED = 0     # the split is drawn once, not per seed: the seeds pair the same test cases
MIN_CASES = 3      # one each for training, validation and testing
DATA_FILE = "data.json"  # in --out: the data and split its runs were made on
SUFFIX = "-own-data"     # of the document markers and plot: your data's table stands beside the bundled one


def add_flags(parser) -> None:
    g = parser.add_argument_group("your data, instead of the bundled tasks (segmentation)")
    g.add_argument("--unlabelled", default="", help="scans the pretrained arms pretrain on (train/pretrain.py "
                                                    "--data: NIfTI, NRRD, MHA or DICOM; folder, glob, file or "
                                                    "comma list); never a test case")
    g.add_argument("--images", default="", help="your labelled images (folder or glob)")
    g.add_argument("--labels", default="", help="their label maps, in the same order as --images")
    g.add_argument("--test-cases", default="", help=common.help_text(
        f"cases held out for testing, 0-based indices in file order or file names (empty: {TEST_SHARE:.0%} of "
        f"the cases, at least one, drawn with seed {SPLIT_SEED})"))
    g.add_argument("--val-cases", default="", help=common.help_text(
        f"cases that choose the learning rate (empty: {VAL_SHARE:.0%} of the non-test cases, at least one)"))


def parse_seeds(text: str) -> list:
    """--seeds: comma-separated ints and ranges (0-4 is 0,1,2,3,4), or a UserError naming the flag."""
    items = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        lo, dash, hi = item.partition("-")
        if dash and lo.isdigit() and hi.isdigit():
            if int(lo) > int(hi):
                raise UserError(f"--seeds: the range {item!r} runs backwards (write {hi}-{lo})")
            items += map(str, range(int(lo), int(hi) + 1))
        else:
            items.append(item)
    return common.parse_list(",".join(items), int, "--seeds")


def given(args) -> bool:
    """Whether the flags ask for the protocol on your data."""
    return any((args.unlabelled, args.images, args.labels, args.test_cases, args.val_cases))


def _files(spec, flag: str) -> list:
    from rubikops.data import DataError, find_files
    try:
        return find_files(spec)
    except DataError as exc:
        raise UserError(f"{flag}: {exc}") from None


def split_cases(n: int, names: list, test_spec: str, val_spec: str) -> dict:
    """{"train", "val", "test"}: sorted index lists, and "chosen_by"; a UserError naming the flag when a
    part would be empty."""
    if n < MIN_CASES:
        raise UserError(f"--images/--labels: {n} labelled case(s); the protocol needs at least {MIN_CASES}: one to "
                        "train on, one for validation (--val-cases) and one for testing (--test-cases)")
    test, val = pick_cases(test_spec, names, "--test-cases"), pick_cases(val_spec, names, "--val-cases")
    both = sorted(set(test) & set(val))
    if both:
        raise UserError(f"--test-cases and --val-cases both name {[names[i] for i in both]}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n).tolist()
    chosen_by = ["--test-cases" if test else f"test: {TEST_SHARE:.0%} of the cases",
                 "--val-cases" if val else f"validation: {VAL_SHARE:.0%} of the non-test cases"]
    if not test:
        test = [i for i in order if i not in val][:max(1, round(n * TEST_SHARE))]
    if not val:
        rest = [i for i in order if i not in test]
        val = rest[:max(1, round(len(rest) * VAL_SHARE))]
    train = [i for i in range(n) if i not in test and i not in val]
    if not train:
        raise UserError(f"no training case is left out of {n}: --test-cases and --val-cases take them all")
    if not test or not val:
        raise UserError(f"--test-cases and --val-cases leave no {'test' if not test else 'validation'} case")
    if not (test_spec and val_spec):
        chosen_by.append(f"drawn with seed {SPLIT_SEED}")
    return {"train": train, "val": sorted(val), "test": sorted(test), "chosen_by": ", ".join(chosen_by)}


def resolve(args) -> dict:
    """The record of your data: the files, the split (indices and names) and how it was chosen; a one-line
    UserError naming the flag for what cannot run."""
    if not (args.images and args.labels):
        raise UserError("--images and --labels go together: your labelled images and their label maps, in the "
                        "same order")
    if not args.unlabelled:
        raise UserError("--unlabelled: the scans the pretrained arms pretrain on is missing (it may hold the "
                        "training cases' images, never the test cases')")
    images, labels = _files(args.images, "--images"), _files(args.labels, "--labels")
    if len(images) != len(labels):
        raise UserError(f"--images matches {len(images)} case(s) but --labels {len(labels)}; each image needs its "
                        "label map, in the same order")
    names = [os.path.basename(os.fspath(p)) for p in images]
    split = split_cases(len(images), names, args.test_cases, args.val_cases)
    held_out = {os.path.realpath(images[i]): names[i] for i in split["test"]}
    pool = [s for s in args.unlabelled.split(",") if s] if "," in args.unlabelled else args.unlabelled  # as pretrain.py
    scans = _files(pool, "--unlabelled")
    leaks = [p for p in scans if os.path.realpath(p) in held_out]
    if leaks:
        raise UserError(f"--unlabelled: {leaks[0]} is the test case {held_out[os.path.realpath(leaks[0])]!r}; "
                        "pretraining on a test scan leaks it: leave it out of --unlabelled or choose other "
                        "--test-cases")
    return {"unlabelled": args.unlabelled, "unlabelled_files": [os.path.abspath(p) for p in scans],
            "images": args.images, "labels": args.labels,
            "image_files": [os.path.abspath(p) for p in images], "label_files": [os.path.abspath(p) for p in labels],
            "cases": names, "split": split}


def open_out(args) -> Optional[dict]:
    """Your data's record (None for the bundled tasks), checked against --out: a folder keeps the runs of one
    data set and split.  Written there before the first run, so a resumed run cannot mix data."""
    record = resolve(args) if given(args) else None
    path = os.path.join(args.out, DATA_FILE)
    old = None
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
    if record is None and old is not None:
        raise UserError(f"--out {args.out}: holds runs on your data ({path}); the bundled tasks need another --out")
    if record is not None and old is None and os.path.isdir(args.out) and any(
            e.startswith("pretrain_") or e in ("classification", "segmentation") for e in os.listdir(args.out)):
        raise UserError(f"--out {args.out}: holds runs on the bundled tasks; runs on your data need another --out")
    if record is not None and old is not None and old != record:
        raise UserError(f"--out {args.out}: its runs were made on other data or another split ({path}); pass "
                        "another --out")
    if record is not None and old is None and not args.report_only:
        os.makedirs(args.out, exist_ok=True)
        common.write_json(path, record)
    return record


def pretrain_flags(record: Optional[dict]) -> list:
    return [] if record is None else ["--data", record["unlabelled"]]


def finetune_flags(record: Optional[dict]) -> list:
    if record is None:
        return []
    split = record["split"]
    return ["--images", record["images"], "--labels", record["labels"],
            "--test-cases", ",".join(map(str, split["test"])), "--val-cases", ",".join(map(str, split["val"]))]


def check_record(doc: dict, path: str) -> None:
    """A results file's "data" (your data's record), when it has one, or a UserError naming the file."""
    record = doc.get("data")
    if record is None:
        return
    ok = isinstance(record, dict) and isinstance(record.get("cases"), list) and isinstance(record.get("split"), dict) \
        and all(isinstance(record["split"].get(k), list) for k in ("train", "val", "test"))
    if not ok:
        raise UserError(f"--results: {path}: 'data' is not the record of your data that train/experiment.py writes")


def describe(record: dict, fractions) -> str:
    """One paragraph for the table: the data, which cases trained, validated and tested, and what each label
    fraction kept."""
    names, split = record["cases"], record["split"]

    def part(key):
        cases = [names[i] for i in split[key]]
        return f"{len(cases)} ({', '.join(cases)})" if len(cases) <= 8 else str(len(cases))
    n = len(split["train"])
    kept = ("the label fraction is the share of its axial slices that keep their labels" if n == 1 else
            "each label fraction keeps the first training cases in file order (" +
            ", ".join(f"{f:g}: {cases_kept(n, f)}" for f in fractions) + ")")
    return (f"Your data: {len(names)} labelled cases, split once for every run ({split['chosen_by']}): training "
            f"{part('train')}, validation {part('val')}, test {part('test')}; {kept}; the pretrained arms "
            f"pretrain on `{record['unlabelled']}`.")
