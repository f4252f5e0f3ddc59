"""train/pretrain.py on two "nodes": two torchrun agents on this machine, one
process each, that find each other through the c10d rendezvous a multi-node
job uses (--nnodes=2 --rdzv_backend=c10d, node ranks assigned by the
rendezvous), train one DDP run of world size 2 with gloo, and share one --out
folder that rank 0 alone writes."""
import os
import re
import signal
import socket
import subprocess
import time

import torch

from .helpers import start_subprocess, tiny_args

TIMEOUT = 180  # seconds for both nodes together (about 15 s on 2 CPU cores): a hang fails, it does not block


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(args: list, logs: list, env: dict) -> list:
    """Start one ``python ARGS`` per log file at once; return their exit codes.
    When one fails or TIMEOUT passes, every node still running is killed with
    the processes it started (a node left alone would wait for its peer)."""
    procs = []
    try:
        for log in logs:
            with open(log, "w") as fh:
                procs.append(start_subprocess(args, env, stdout=fh, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
        return [p.poll() for p in procs]  # None: still running at the deadline or after a peer failed
    finally:
        for p in procs:
            if p.poll() != 0:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def test_two_nodes_through_c10d_rendezvous(data, tmp_path):
    out = tmp_path / "run"
    node = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{free_port()}", f"--rdzv_id=rubikops-test-{os.getpid()}",
            "train/pretrain.py", *tiny_args(data, out, tmp_path / "cache"), "--device", "cpu"]
    logs = [tmp_path / "node_a.log", tmp_path / "node_b.log"]
    # LOGLEVEL=INFO: each agent logs the rendezvous' result (group_rank, group_world_size, master_port)
    codes = run_nodes(node, logs, {"OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"})
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], (codes, *[t[-3000:] for t in text])

    found = [{k: re.findall(rf"\b{k}=(\d+)", t) for k in ("group_rank", "group_world_size", "master_port")}
             for t in text]
    assert sorted(f["group_rank"][0] for f in found) == ["0", "1"], found  # the rendezvous numbered the nodes
    assert all(f["group_world_size"] == ["2"] for f in found), found
    assert found[0]["master_port"] == found[1]["master_port"], found  # one process group across both
    first = text[[f["group_rank"][0] for f in found].index("0")]
    second = text[[f["group_rank"][0] for f in found].index("1")]
    assert "rank 0 of 2" in first and "done: 6 steps" in first
    assert "rubikops pretraining" not in second and "done:" not in second  # rank 1 reports nothing

    # rank 0 alone wrote the shared folder: each file once, no temporary left behind
    assert sorted(os.listdir(out)) == ["checkpoints", "config.yaml", "encoder.json", "encoder.pt", "metrics.csv",
                                       "puzzles.png", "summary.json"]
    assert sorted(os.listdir(out / "checkpoints")) == ["best.pt", "step_0000003.pt", "step_0000006.pt"]
    assert len(open(out / "metrics.csv").read().splitlines()) == 7  # header and one row per step
    state = torch.load(out / "checkpoints" / "step_0000006.pt", weights_only=False)
    assert len(state["rng"]) == 2 and len(state["task_state"]) == 2  # both nodes' streams saved
    assert state["rng"][0]["generators"]["puzzle"].tolist() != state["rng"][1]["generators"]["puzzle"].tolist()
