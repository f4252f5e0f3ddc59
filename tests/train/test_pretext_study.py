"""train/pretext_study.py end to end with tiny settings: each row is a pretraining run with the
row's flags, finished rows are read back instead of rerun, and the table lands between the
docs' and the README's markers without touching the rest of either file."""
import json
import os

from .helpers import script

study = script("pretext_study")
common = script("common")


def test_rows_run_resume_and_fill_the_docs_section(data, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "experiment.md").write_text("# Title\n\nkept above\n\n<!-- pretext-study:start -->\nold\n"
                                        "<!-- pretext-study:end -->\n\nkept below\n")
    readme = tmp_path / "README.md"
    readme.write_text("# rubikops\n\n<!-- pretext-study:start -->\nold\n<!-- pretext-study:end -->\n\nafter\n")
    out = tmp_path / "study"
    argv = ["--out", str(out), "--rows", "rotation_only,ordering_only", "--seeds", "0,1", "--steps", "4",
            "--pretrain-args", f"--preset tiny --data {data} --cache-dir {tmp_path / 'cache'} --spacing 1",
            "--docs", str(docs), "--readme", str(readme)]
    assert common.run_main(study.main, argv) == 0, capsys.readouterr().err
    for row in ("rotation_only", "ordering_only"):
        for seed in (0, 1):
            summary = json.load(open(out / f"{row}_seed{seed}" / "summary.json"))
            assert summary["steps"] == 4
    assert json.load(open(out / "rotation_only_seed0" / "summary.json"))["trained_order"] is False
    text = (docs / "experiment.md").read_text()
    assert text.startswith("# Title\n\nkept above\n") and text.rstrip().endswith("kept below")
    assert "old" not in text and "| rotation_only |" in text and "mean ± sd over seeds" in text
    table_rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "not trained" in table_rows["rotation_only"].split("|")[3]    # ordering column
    assert "not trained" in table_rows["ordering_only"].split("|")[4]    # orientation column
    assert "`--alpha 0`" in table_rows["rotation_only"]
    # the README gets the same table between its own markers
    md = readme.read_text()
    assert md.startswith("# rubikops\n") and md.rstrip().endswith("after") and "old" not in md
    assert text.split("<!-- pretext-study:start -->")[1].split("<!-- pretext-study:end -->")[0] in md
    # a second call reads the finished rows back: nothing is rerun
    stamp = os.path.getmtime(out / "ordering_only_seed0" / "summary.json")
    capsys.readouterr()
    assert common.run_main(study.main, argv) == 0
    assert "== ordering_only" not in capsys.readouterr().out
    assert os.path.getmtime(out / "ordering_only_seed0" / "summary.json") == stamp


def test_unknown_row_is_one_line(capsys):
    assert common.run_main(study.main, ["--rows", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rows" in err[0] and "nope" in err[0]


def test_every_row_is_valid_and_fits_the_bundled_volumes(tmp_path):
    """Each row's flags parse and pass pretrain's checks, and its puzzle crop fits every bundled
    volume at the row's spacing (a row that did not would stop the study midway)."""
    from rubikops.data import VolumeBank
    pretrain = script("pretrain")
    for name, _, flags in study.ROWS:
        cfg, _ = pretrain.parse([*flags, "--cache-dir", str(tmp_path / "c")])
        pretrain.check_config(cfg)
        puzzle = pretrain.make_puzzle(cfg)
        for volumes in pretrain.load_data(cfg, common.Dist()):
            VolumeBank(volumes).check_puzzle(puzzle)
