"""`python benchmarks/run.py --scale --quick` end to end at tiny size: the
corpus with its bad files, preparing with 1 and 2 workers, the puzzle rows,
a 2-rank gloo run's peak RSS, the table and the results JSON.  No timed
assertions: the benchmark itself checks its floors (not in --quick)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--scale", "--quick",
                           "--scale-dir", str(tmp_path / "scale"), "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def test_the_quick_scale_section_reports_every_bad_file_and_its_floors(tmp_path):
    done = _run(tmp_path)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (name,) = os.listdir(tmp_path / "results")
    assert name.endswith("-quick-scale.json")
    doc = json.loads((tmp_path / "results" / name).read_text())
    section = doc["scale"]
    corpus = section["corpus"]
    assert corpus["good"] == 40 and corpus["corpus_bytes"] > 0
    assert set(corpus["bad"].values()) == {"unreadable", "empty", "not 3-D", "NaN or Inf voxels", "duplicate",
                                           "changed during the job"}
    for workers in ("1", "2"):  # each run's report.json names every bad file, for its reason
        report = json.loads((tmp_path / "scale" / f"prepared-w{workers}" / "report.json").read_text())
        assert {os.path.basename(s["file"]): s["reason"] for s in report["skipped"]} == corpus["bad"]
        assert report["volumes"] == 40
        assert section["checks"][workers]["problems"] == []
        assert section["prepare"][workers]["files_per_s"] > 0
    (memory,) = section["memory"]  # --quick: the default float32 bank only
    assert len(memory["rss_bytes"]) == 2 and all(r > 0 for r in memory["rss_bytes"])
    assert memory["overhead_bytes"] == max(memory["overhead_rss_bytes"])
    assert memory["limit_bytes"] == 0.6 * corpus["corpus_bytes"] + memory["overhead_bytes"]
    assert section["enforced"] is False
    floors = {f["floor"]: f["status"] for f in section["floors"]}
    assert all(status in ("PASS", "FAIL", "NOT MEASURED") for status in floors.values())
    assert any(f.startswith("StreamingBank puzzles/s") for f in floors)
    rows = [r["name"] for r in doc["rows"]]
    assert "scale: prepare, 1 worker" in rows and "scale: prepare, 2 workers" in rows
    assert "scale: 2-rank pretrain, float32 resident" in rows
    if section["streaming"]["status"] != "NOT MEASURED":
        assert any(r.startswith("scale: puzzles, StreamingBank") for r in rows)
    for text in ("changed during the job", "memory: peak RSS per rank", "prepare --workers 2"):
        assert text in done.stdout, text

    scale = _import_scale()  # a second run reuses the corpus instead of generating it again
    before = (tmp_path / "scale" / "corpus.json").stat().st_mtime_ns
    assert scale.make_corpus(str(tmp_path / "scale"), 40)["bad"] == corpus["bad"]
    assert (tmp_path / "scale" / "corpus.json").stat().st_mtime_ns == before


def _import_scale():
    """benchmarks/scale.py, which imports its sibling utils.py by bare name."""
    folder = os.path.join(ROOT, "benchmarks")
    sys.path.insert(0, folder)
    try:
        import scale
        return scale
    finally:
        sys.path.remove(folder)
        sys.modules.pop("scale", None)
        sys.modules.pop("utils", None)


def test_a_folder_the_benchmark_did_not_make_is_refused(tmp_path):
    scale = _import_scale()
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not made by this benchmark"):
        scale.own_folder(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert scale.own_folder(str(tmp_path / "new")) == str(tmp_path / "new")
    assert scale.own_folder(str(tmp_path / "new")) == str(tmp_path / "new")  # its own: reused
