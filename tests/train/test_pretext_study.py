"""train/pretext_study.py end to end with tiny settings: each row is a pretraining run with the
row's flags, finished rows are read back instead of rerun, every run's result goes to a result
file, and the table, rebuilt from that file alone by --report-only, lands between the docs'
markers without touching the rest of the file."""
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
    out = tmp_path / "study"
    argv = ["--out", str(out), "--rows", "rotation_only,ordering_only", "--seeds", "0,1", "--steps", "4",
            "--pretrain-args", f"--preset tiny --data {data} --cache-dir {tmp_path / 'cache'} --spacing 1",
            "--docs", str(docs)]
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
    # every run in the result file, with the command, revision and machine that make it traceable
    [committed] = (docs / "results").glob("pretext-study-*.json")
    result = json.load(open(committed))
    assert result == json.load(open(out / "results.json"))
    assert result["command"].startswith("python train/pretext_study.py --out") and result["git_revision"]
    assert result["machine"]["cores"] >= 1 and result["seeds"] == [0, 1] and result["steps"] == 4
    by_run = {(r["row"], r["seed"]): r for r in result["runs"]}
    for (row, seed), r in by_run.items():
        summary = json.load(open(out / f"{row}_seed{seed}" / "summary.json"))
        assert r["orient_acc"] == summary["orient_acc"] and r["order_acc"] == summary["order_acc"]
    # the table's cell is the mean +- sd of the two runs, recomputed here from the summaries
    accs = [100 * by_run[("rotation_only", s)]["orient_acc"] for s in (0, 1)]
    mean, sd = sum(accs) / 2, abs(accs[0] - accs[1]) / 2 ** 0.5
    assert f"{mean:.1f} ± {sd:.1f}" in table_rows["rotation_only"].split("|")[4]
    # a second call reads the finished rows back: nothing is rerun
    stamp = os.path.getmtime(out / "ordering_only_seed0" / "summary.json")
    capsys.readouterr()
    assert common.run_main(study.main, argv) == 0
    assert "== ordering_only" not in capsys.readouterr().out
    assert os.path.getmtime(out / "ordering_only_seed0" / "summary.json") == stamp
    # --report-only rebuilds the same block from the result file alone (the run folders removed)
    def block(md):
        return md.split("<!-- pretext-study:start -->")[1].split("<!-- pretext-study:end -->")[0]
    table_text = block(text)
    import shutil
    shutil.rmtree(out)
    (docs / "experiment.md").write_text("<!-- pretext-study:start -->\nedited\n<!-- pretext-study:end -->\n")
    assert common.run_main(study.main, ["--report-only", "--results", str(committed), "--docs", str(docs)]) == 0
    assert block((docs / "experiment.md").read_text()) == table_text


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
