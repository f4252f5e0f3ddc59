"""python -m rubikops.demo writes its picture where the user says, by default
under runs/ in the working folder (ignored by git), never into the package's docs."""
import os

from rubikops import demo


def test_demo_writes_under_runs_or_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--device", "cpu", "--batch", "2", "--cube", "16"]) == 0
    assert os.listdir(tmp_path) == ["runs"] and os.listdir(tmp_path / "runs") == ["rubikops_demo.png"]
    assert os.path.getsize(tmp_path / "runs" / "rubikops_demo.png") > 10_000
    assert f"picture: {tmp_path / 'runs' / 'rubikops_demo.png'}" in capsys.readouterr().out
    assert demo.main(["--device", "cpu", "--batch", "2", "--cube", "16", "--out", "pics/p.png"]) == 0
    assert os.path.exists(tmp_path / "pics" / "p.png") and not os.path.exists(tmp_path / "docs")


def test_the_default_picture_is_ignored_by_git():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rules = open(os.path.join(root, ".gitignore")).read().split()
    assert "runs/" in rules
