"""python -m rubikops.demo writes its picture where the user says, by default
into the working folder, never into the package's docs."""
import os

from rubikops import demo


def test_demo_writes_to_the_working_folder_or_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--device", "cpu", "--batch", "2", "--cube", "16"]) == 0
    assert os.listdir(tmp_path) == ["rubikops_demo.png"] and os.path.getsize("rubikops_demo.png") > 10_000
    assert f"picture: {tmp_path / 'rubikops_demo.png'}" in capsys.readouterr().out
    assert demo.main(["--device", "cpu", "--batch", "2", "--cube", "16", "--out", "pics/p.png"]) == 0
    assert os.path.exists(tmp_path / "pics" / "p.png") and not os.path.exists(tmp_path / "docs")
