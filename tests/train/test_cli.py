"""Every script's --help, and bad flag values: one ``error:`` line naming the
flag, exit code 2, no traceback, nothing written."""
import os

import pytest

from .helpers import run_subprocess, script

common = script("common")


def _help_text(main, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["pretrain", "finetune", "experiment", "pretext_study", "rubikops.data", "rubikops.demo"])
def test_help_exits_0_and_shows_each_default_once(name, capsys):
    if name.startswith("rubikops."):
        import importlib
        main = importlib.import_module(name + (".__main__" if name == "rubikops.data" else "")).main
    else:
        main = script(name).main
    text = _help_text(main, capsys)
    assert "usage:" in text
    for option in text.split("\n  -")[1:]:
        assert option.count("(default:") <= 1, option
    assert "(default: None)" not in text


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_help_names_only_flags_the_script_has(name, capsys):
    """--help's texts (the --resume line lists the settings a resume may change) name no flag the
    script does not take: finetune.py has no --cache-dir."""
    import re
    text = re.sub(r"-\n\s+", "-", _help_text(script(name).main, capsys))  # argparse wraps at hyphens
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    # the options themselves: "  --flag V", "  --flag, --no-flag", "  -h, --help"
    options = {f for line in text.splitlines() if re.match(r"\s{2}-", line)
               for f in re.findall(r"(--[a-z][a-z0-9-]*)", line.split("  ")[1] if "  " in line[2:] else line)}
    assert "--resume" in options and len(options) > 20
    assert flags <= options, sorted(flags - options)


def test_help_as_a_new_user_types_it():
    r = run_subprocess(["train/pretrain.py", "--help"])
    assert r.returncode == 0 and "60% and 85%" in r.stdout, r.stderr


PRETRAIN_BAD = [
    (["--log-every", "0"], "--log-every must be a positive integer, got 0"),
    (["--eval-every", "0"], "--eval-every must be a positive integer, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be a positive integer, got 0"),
    (["--eval-puzzles", "0"], "--eval-puzzles must be a positive integer, got 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be a positive integer"),
    (["--width", "0"], "--width must be a positive integer, got 0"),
    (["--channels", "0"], "--channels must be a positive integer"),
    (["--hidden", "-1"], "--hidden must be >= 0"),
    (["--holdout", "-2"], "--holdout must be >= -1"),
    (["--spacing", "-1"], "--spacing must be in [0, inf), got -1.0"),
    (["--lr", "0"], "--lr must be in (0, inf)"),
    (["--lr", "nan"], "--lr must be in (0, inf)"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--mask-prob", "1.5"], "--mask-prob must be in [0, 1]"),
    (["--task", "genesis", "--curve-prob", "1.5"], "--curve-prob must be in [0, 1]"),
    (["--task", "genesis", "--outpaint-prob", "-0.1"], "--outpaint-prob must be in [0, 1]"),
    (["--task", "genesis", "--shuffle-prob", "nan"], "--shuffle-prob must be in [0, 1]"),
    (["--window", "100,-100"], "--window takes lo,hi with lo < hi"),
    (["--norm", "layer"], "--norm must be batch, instance or group"),
    (["--steps", "ten"], "steps = 'ten' is not a valid int"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]

FINETUNE_BAD = [
    (["--log-every", "0"], "--log-every must be a positive integer"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be a positive integer"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--width", "0"], "--width must be a positive integer"),
    (["--num-cases", "0"], "--num-cases must be a positive integer"),
    (["--spacing", "-1"], "--spacing must be in [0, inf)"),
    (["--patch", "0,16,16"], "--patch takes 3 positive ints"),
    (["--patch", "16"], "--patch takes 3 positive ints"),
    (["--test-fraction", "1"], "--test-fraction must be in (0, 1)"),
    (["--overlap", "1"], "--overlap must be in [0, 1)"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),
    (["--num-cases", "8"], "--val-fraction 0.2: no class has 2 training cases to hold one out"),
    (["--encoder-lr", "-1"], "--encoder-lr must be in (0, inf)"),
    (["--decoder", "fpn"], "--decoder must be unet or duc"),
    (["--test-cases", "99"], "--test-cases: index 99 is out of range for 12 case(s)"),
    (["--test-cases", "0", "--val-cases", "0"], "--test-cases and --val-cases both name"),
    (["--test-cases", "nosuchcase"], "--test-cases: 'nosuchcase' names no case"),
    (["--task", "segmentation", "--test-cases", "0"], "--test-cases and --val-cases choose among your own cases"),
]

EXPERIMENT_BAD = [
    (["--fractions", "0.5,x"], "--fractions: '0.5,x' is not a comma-separated list of floats"),
    (["--fractions", "0,1"], "--fractions: [0.0] not in (0, 1]"),
    (["--seeds", "a"], "--seeds: 'a' is not a comma-separated list of ints"),
    (["--pretrain-steps", "0"], "--pretrain-steps must be a positive integer"),
    (["--steps", "classification=x"], "--steps: 'classification=x' is not TASK=STEPS"),
    (["--tasks", "classification", "--steps", "segmentation=3"], "--steps: no step count for ['classification']"),
    (["--tasks", "detection"], "--tasks: unknown task 'detection'"),
    (["--lrs", "1e-3,0"], "--lrs: '1e-3,0' must be distinct positive learning rates"),
    (["--lrs", "fast"], "--lrs: 'fast' is not a comma-separated list of floats"),
    (["--arms", "rubik"], "--arms: 'rubik' must name scratch and at least one of rubik, ordering"),
    (["--inits", "scratch,imagenet"], "--arms: 'scratch,imagenet' must name scratch"),  # --inits: the old name
    (["--pretrain-scale", "big"], "argument --pretrain-scale: invalid choice: 'big'"),
    (["--seeds", "0,0"], "--seeds: '0,0' names a seed twice"),
]


# Each script with the flags every bad-flag run gets (a fresh --out under tmp_path, "OUT" below).
BASE = {"pretrain": ["--out", "OUT"], "finetune": ["--preset", "tiny", "--no-progress", "--out", "OUT"],
        "experiment": ["--out", "OUT", "--docs", "OUT/docs"]}
BAD = ([("pretrain", *c) for c in PRETRAIN_BAD] + [("finetune", *c) for c in FINETUNE_BAD]
       + [("experiment", *c) for c in EXPERIMENT_BAD])


@pytest.mark.parametrize("name,argv,message", BAD, ids=[f"{n} {' '.join(a)}" for n, a, _ in BAD])
def test_bad_flag_is_one_line_naming_it(name, argv, message, tmp_path, capsys):
    out = str(tmp_path / "o")
    rc = common.run_main(script(name).main, [out if a == "OUT" else a.replace("OUT", out) for a in BASE[name]] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not os.path.exists(out)


def test_bad_flag_as_a_subprocess_exits_2_without_traceback():
    r = run_subprocess(["train/pretrain.py", "--log-every", "0", "--out", "/nonexistent/never-written"])
    assert r.returncode == 2 and r.stderr.strip() == "error: --log-every must be a positive integer, got 0"
