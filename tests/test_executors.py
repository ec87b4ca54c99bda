"""The executors: a real Dask cluster (LocalCluster, two worker processes) and a process pool give
the bytes of a local run; progress shows on a terminal and nowhere else."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from model_folders import folder_files, make_hf_folder

import sparsify
from sparsify.errors import UsageError
from sparsify.executor import InlineExecutor, open_executor, ordered_map


def test_ordered_map_keeps_order_and_window():
    with open_executor(jobs=2) as workers:
        assert workers.count == 2 and workers.local_processes
        assert list(ordered_map(workers.executor, abs, range(-20, 0), 3)) == [abs(i) for i in range(-20, 0)]
    assert list(ordered_map(InlineExecutor(), abs, [-1, -2], 1)) == [1, 2]
    with pytest.raises(UsageError):
        with open_executor(jobs=0):
            pass


def test_a_dask_cluster_gives_the_bytes_of_a_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    model = make_hf_folder(tmp_path / "model")
    sparsify.compress(model, tmp_path / "local.sparsify", jobs=1, target_ratio=6)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
    ) as cluster:
        report = sparsify.compress(
            model, tmp_path / "dask.sparsify", scheduler=cluster.scheduler_address, target_ratio=6
        )
        with distributed.Client(cluster.scheduler_address) as client:
            ran = client.run(lambda: os.getpid())
    assert len(set(ran.values()) - {os.getpid()}) == 2  # two worker processes, not this one
    assert folder_files(tmp_path / "dask.sparsify") == folder_files(tmp_path / "local.sparsify")
    assert report["plan"]["met"]


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("SPARSIFY_SCHEDULER_TIMEOUT", "2")
    model = make_hf_folder(tmp_path / "model", shards=1)
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        sparsify.compress(model, tmp_path / "x.sparsify", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "x.sparsify").exists()


def _run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns the exit code and what the terminal got."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsify", *args], stdout=subprocess.DEVNULL, stderr=slave, env=env
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return process.wait(timeout=60), seen.decode("utf-8", "replace")


def test_progress_shows_on_a_terminal_and_not_on_a_pipe(tmp_path):
    model = make_hf_folder(tmp_path / "model")
    code, screen = _run_on_a_terminal(
        ["compress", str(model), "-o", str(tmp_path / "a.sparsify"), "--target-ratio", "6"]
    )
    assert code == 0, screen
    assert "tensors" in screen and "/55" in screen and "planning" in screen and "eta" in screen, screen
    assert "B/s" in screen, screen  # the throughput column
    piped = subprocess.run(
        [sys.executable, "-m", "sparsify", "compress", str(model), "-o", str(tmp_path / "b.sparsify")],
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0 and piped.stderr == f"wrote {tmp_path / 'b.sparsify'}\n"


def test_ctrl_c_stops_the_workers_and_leaves_nothing(tmp_path):
    """SIGINT to the process group (what a terminal's Ctrl-C sends) mid rate control with two
    workers: exit 130 at once, no process left, no temporary file or spool left."""
    import signal
    import time

    model = make_hf_folder(tmp_path / "model", hidden=256)  # rate control takes many seconds on it
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsify", "compress", str(model), "-o", str(out / "m.sparsify")]
        + ["--jobs", "2", "--target-ratio", "6", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline and len(children.read_text().split()) < 2:
        time.sleep(0.05)  # until the workers are forked
    time.sleep(0.5)  # planning under way
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.decode().strip().splitlines()[-1] in ("sparsify: aborted", "sparsify: interrupted")
    assert list(out.iterdir()) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no worker of the group is left
