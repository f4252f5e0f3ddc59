"""benchmarks/augment_share.py's arithmetic, on made-up run summaries: each
augmentation's median over the interleaved rounds, its throughput against the
same round's --augment none, the lowest and highest, and the result file."""
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def augment_share(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("augment_share", os.path.join(ROOT, "benchmarks", "augment_share.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (puzzles/s, batch share) per round, per augmentation: the machine slows down in round 1
RUNS = {"none": [(100.0, 0.01), (50.0, 0.01), (110.0, 0.008)],
        "geometry": [(95.0, 0.02), (48.0, 0.03), (99.0, 0.021)],
        "all": [(90.0, 0.03), (46.0, 0.027), (101.2, 0.025)]}


def test_medians_are_taken_over_rounds_paired_with_none(augment_share, monkeypatch, tmp_path, capsys):
    calls = []
    real_run = augment_share.subprocess.run

    def fake_run(command, **kwargs):
        if "--augment" not in command:  # git, for the revision
            return real_run(command, **kwargs)
        augment, out = command[command.index("--augment") + 1], command[command.index("--out") + 1]
        round_ = sum(1 for c in calls if c == augment)
        calls.append(augment)
        rate, share = RUNS[augment][round_]
        os.makedirs(out)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump({"puzzles_per_s": rate, "batch_gen_fraction": share}, f)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(augment_share.subprocess, "run", fake_run)
    out = str(tmp_path / "share.json")
    assert augment_share.main(["--out", out]) == 0
    assert calls == ["none", "geometry", "all"] * 3  # interleaved rounds
    rows = {r["augment"]: r for r in json.load(open(out))["rows"]}
    assert rows["all"]["puzzles_per_s"] == 90.0 and rows["all"]["batch_gen_fraction"] == 0.027
    # per round 0.90, 0.92, 0.92: the median pairs each run with its own round's none (the medians'
    # ratio, 90 / 100, would be 0.90)
    assert rows["all"]["throughput_vs_none"] == pytest.approx(0.92)
    assert rows["all"]["throughput_vs_none_range"] == pytest.approx([0.9, 0.92])
    assert rows["geometry"]["batch_gen_fraction_range"] == [0.02, 0.03]
    assert rows["none"]["throughput_vs_none"] == 1.0 and rows["none"]["rounds"] == 3
    assert json.load(open(out))["command"] == "python benchmarks/augment_share.py"
    assert "0.92x none, 0.90-0.92" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # never overwrites
        augment_share.main(["--out", out])
    with pytest.raises(SystemExit):
        augment_share.main(["--rounds", "0"])
