"""Every generated block in README.md and docs/*.md is what the report code makes of the
committed result files in docs/results/, byte for byte (train/docs_report.py holds the
registry: block name -> files -> builder).  A number edited by hand fails here."""
import glob
import json
import os
import re
import shutil

import pytest

from tests.train.helpers import script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
docs_report = script("docs_report")
reporting = script("reporting")

MARKER = re.compile(r"<!-- ([\w-]+):start -->")


def doc_files():
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


@pytest.mark.parametrize("block", docs_report.active_blocks(), ids=lambda b: b.name)
def test_block_equals_what_its_result_files_make(block):
    assert docs_report.differences([block]) == []


def test_every_generated_block_in_the_docs_is_registered():
    registered = {(b.name, f) for b in docs_report.BLOCKS for f in b.files}
    active = {(b.name, f) for b in docs_report.active_blocks() for f in b.files}
    for f in doc_files():
        for name in MARKER.findall(open(os.path.join(ROOT, f)).read()):
            assert (name, f) in registered, f"{f}: block {name} has no builder in train/docs_report.py"
            # only the protocol's table may wait for its result file (docs/results/experiment-*.json): it
            # predates result files; once that file is committed, the block is checked like every other
            assert (name, f) in active or name == "protocol", f"{f}: block {name} has no committed result file"


def test_a_hand_edited_number_is_caught(tmp_path):
    for f in doc_files():
        os.makedirs(tmp_path / os.path.dirname(f), exist_ok=True)
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    block = next(b for b in docs_report.BLOCKS if b.name == "default-pretraining")
    path = tmp_path / block.files[0]
    text = path.read_text()
    section = reporting.read_doc_section(text, block.name)
    edited = re.sub(r"\| (\d+)\.(\d) \|", lambda m: f"| {m.group(1)}.{(int(m.group(2)) + 1) % 10} |", section, count=1)
    assert edited != section
    path.write_text(text.replace(section, edited))
    assert [d[:2] for d in docs_report.differences([block], root=str(tmp_path))] == [(block.name, block.files[0])]


def test_a_second_copy_of_a_block_is_refused_in_one_line():
    """Only the first pair of markers is rebuilt and checked: a stale second copy is refused, not ignored."""
    block = "<!-- verdict:start -->\n| a |\n<!-- verdict:end -->\n"
    assert reporting.read_doc_section("x\n" + block, "verdict") == "| a |"
    with pytest.raises(reporting.UserError, match="'verdict' appears 2 times"):
        reporting.read_doc_section(block + "text\n" + block, "verdict")


def test_pretraining_block_rows_and_range_from_the_files(tmp_path):
    """Two synthetic result files: each row shows its own numbers, the range spans both."""
    def write(name, order, orient, cpu):
        (tmp_path / name).write_text(json.dumps({
            "command": "python train/pretrain.py", "git_revision": "x", "machine": {"cpu": cpu, "cores": 2},
            "wall_s": 120.0, "seeds": [0], "summary": {
                "steps": 1500, "order_acc": order, "orient_acc": orient, "chance_order_acc": 1 / 24,
                "chance_orient_acc": 1 / 3, "puzzles_per_s": 100.0, "batch_gen_fraction": 0.25,
                "held_out": ["head.nii.gz"], "eval_puzzles": 512}}))
    write("pretrain-20260101T000000Z.json", 0.6049, 0.7251, "CPU A")
    write("pretrain-20260102T000000Z.json", 0.6651, 0.7049, "CPU B")
    text = docs_report.default_pretraining_block(str(tmp_path))
    rows = [line for line in text.splitlines() if line.startswith("| 2-core")]
    assert rows[0].startswith("| 2-core CPU A | 60.5 | 72.5 |") and rows[1].startswith("| 2-core CPU B | 66.5 | 70.5 |")
    assert "ordering 60.5 to 66.5%, orientation 70.5 to 72.5%" in text and "(head.nii.gz)" in text


def test_protocol_verdict_names_arms_beating_scratch_by_one_sd(tmp_path):
    """Per task, arm and fraction the LR with the best mean validation score; an arm is ahead when its
    mean test score is above scratch's mean + sd.  Built so that the better-validating LR is the worse
    on test (0.1), and so that a pretrained arm behind scratch (0.25) and one ahead (1) appear."""
    runs = []
    for seed, (a, b) in enumerate([(0.50, 0.70), (0.52, 0.74)]):
        runs += [dict(task="seg", arm="scratch", fraction=0.1, seed=seed, lr=1e-3, val=0.5, test=a),
                 dict(task="seg", arm="rubik", fraction=0.1, seed=seed, lr=1e-3, val=0.9, test=b),
                 dict(task="seg", arm="rubik", fraction=0.1, seed=seed, lr=3e-3, val=0.1, test=0.0),
                 dict(task="seg", arm="scratch", fraction=0.25, seed=seed, lr=1e-3, val=0.5, test=b),
                 dict(task="seg", arm="rubik", fraction=0.25, seed=seed, lr=1e-3, val=0.5, test=a),
                 dict(task="seg", arm="scratch", fraction=1.0, seed=seed, lr=1e-3, val=0.5, test=0.0),
                 dict(task="seg", arm="rubik", fraction=1.0, seed=seed, lr=1e-3, val=0.5, test=1.0)]
    (tmp_path / "experiment-20260101.json").write_text(json.dumps({"runs": runs}))
    text = docs_report.protocol_verdict(str(tmp_path))
    assert text == ("yes, in part: seg at label fractions 0.1 / 0.25 / 1: scratch 0.510 ± 0.014 / 0.720 ± 0.028 / "
                    "0.000 ± 0.000, rubik 0.720 ± 0.028 / 0.510 ± 0.014 / 1.000 ± 0.000; ahead by more than one sd of "
                    "scratch: rubik at 0.1, 1 (`" + os.path.relpath(tmp_path / "experiment-20260101.json",
                                                                     docs_report.ROOT) + "`); 2 seeds, test scores"), text
    # a second task and an arm missing at one fraction: one sentence per task, n/a where no run finished
    runs += [dict(task="cls", arm=a, fraction=f, seed=seed, lr=1e-3, val=0.5, test=0.6 + 0.1 * seed)
             for a in ("scratch", "masked") for f in (0.05, 1.0) for seed in (0, 1) if (a, f) != ("masked", 1.0)]
    (tmp_path / "experiment-20260101.json").write_text(json.dumps({"runs": runs}))
    text = docs_report.protocol_verdict(str(tmp_path))
    assert text.startswith("yes, in part: cls at label fractions 0.05 / 1: scratch 0.650 ± 0.071 / 0.650 ± 0.071, "
                           "masked 0.650 ± 0.071 / n/a; no pretrained arm ahead by more than one sd of scratch; seg "
                           "at label fractions 0.1 / 0.25 / 1: scratch"), text


def test_protocol_verdict_reads_the_newest_file_of_each_pretraining_scale(tmp_path):
    """A default-scale and a matched-scale protocol each give their own segment, named by scale, from the
    newest file of that scale; an older file of a scale is ignored, and one arm ahead anywhere says so."""
    def write(name, scale, arm, score):
        runs = [dict(task="seg", arm=a, fraction=0.05, seed=seed, lr=1e-3, val=0.5, test=t)
                for seed, jitter in enumerate((0.0, 0.02)) for a, t in (("scratch", 0.3 + jitter),
                                                                        (arm, score + jitter))]
        (tmp_path / name).write_text(json.dumps({"pretrain_scale": scale, "rows": runs}))
    write("experiment-20260101.json", "default", "rubik", 0.9)      # older: replaced by the next
    write("experiment-20260102.json", "default", "rubik", 0.1)
    write("experiment-20260103.json", "matched", "masked", 0.5)
    text = docs_report.protocol_verdict(str(tmp_path))
    default, matched = text.split("; pretrained at the segmentation scale")
    matched = "pretrained at the segmentation scale" + matched
    assert default == ("yes, in part: pretrained at train/pretrain.py's scale: seg at label fractions 0.05: scratch "
                       "0.310 ± 0.014, rubik 0.110 ± 0.014; no pretrained arm ahead by more than one sd of "
                       "scratch (`" + os.path.relpath(tmp_path / "experiment-20260102.json", docs_report.ROOT) + "`)")
    assert matched.startswith("pretrained at the segmentation scale (--pretrain-scale matched): seg at label "
                              "fractions 0.05: scratch 0.310 ± 0.014, masked 0.510 ± 0.014; ahead by more than one sd "
                              "of scratch: masked at 0.05 (`"), matched
    assert text.endswith("; 2 seeds, test scores")
    # an unfinished grid: masked with one finished seed, far ahead, is not called ahead (one seed has no spread)
    write("experiment-20260104.json", "matched", "masked", 0.9)
    one_seed = [r for r in json.loads((tmp_path / "experiment-20260104.json").read_text())["rows"]
                if r["arm"] == "scratch" or r["seed"] == 0]
    (tmp_path / "experiment-20260104.json").write_text(json.dumps({"pretrain_scale": "matched", "rows": one_seed}))
    text = docs_report.protocol_verdict(str(tmp_path))
    assert text.startswith("not shown: ") and "masked 0.900 ± 0.000" in text and "scratch: masked" not in text, text


def test_readme_is_a_short_manual_that_starts_with_its_set_up():
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    assert len(lines) <= 200
    assert next(i for i, line in enumerate(lines) if line.startswith("```")) < 40
    for page in ("data", "tasks", "op", "performance", "experiment"):
        assert f"(docs/{page}.md)" in "\n".join(lines), page


def test_no_git_revision_in_the_prose():
    """The result files carry revisions; the pages' prose names none (table cells listing files may)."""
    revision = re.compile(r"\bgit [0-9a-f]{7,40}\b|\b[0-9a-f]{7}-dirty\b")
    for f in doc_files():
        for n, line in enumerate(open(os.path.join(ROOT, f)).read().splitlines(), 1):
            assert line.startswith("|") or not revision.search(line), f"{f}:{n}: {line}"
