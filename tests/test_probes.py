"""The adversarial probes of tests/probes.py (issue 28): zero silently wrong results, zero raw tracebacks,
zero user files lost, and no misleading message either."""
from .probes import OUTCOMES, run_probes, table


def test_probes_find_no_wrong_result_no_traceback_and_no_lost_file(tmp_path):
    results = run_probes(str(tmp_path))
    bad = [f"{o}: {p.surface}: {p.name}: {d}" for p, o, d in results if o != "clear"]
    assert len(results) >= 100 and {p.surface for p, _, _ in results} >= {
        "prepare / info", "load_prepared / banks", "pretext tasks", "train/pretrain.py", "train/finetune.py"}
    assert not bad, table(results) + "\n" + "\n".join(bad)
    assert set(OUTCOMES) >= {o for _, o, _ in results}
