"""Scratch clusters live under one tracked root and a killed worker's are not left behind: a
real pytest run with two xdist workers, one of which is SIGKILLed while its cluster runs,
ends with no scratch directory and no PostgreSQL process of that root. Ports picked by
parallel workers are reserved until the server listens, so they never collide."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pytest_hokmdb.cluster.scratch import reserved_port

INNER = '''
import os
import signal


def test_a_worker_dies_with_its_cluster_running(hokmdb_cluster):
    os.kill(os.getpid(), signal.SIGKILL)


def test_another_worker_works(hokmdb_cluster):
    assert hokmdb_cluster.is_running()
'''


def _postgres_processes_under(root: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "postgres" in text and str(root) in text:
            found.append(text)
    return found


def test_a_killed_workers_cluster_is_gone_when_the_run_ends(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "scratch"
    monkeypatch.setenv("HOKMDB_SCRATCH_DIR", str(root))
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--max-worker-restart=1")
    output = result.stdout.str()
    assert "crashed" in output or "worker" in output.lower(), output
    leftovers = [p for p in root.iterdir() if p.is_dir() and p.name != "ports"] if root.exists() else []
    assert leftovers == [], f"scratch clusters left behind: {leftovers}\n{output[-3000:]}"
    assert _postgres_processes_under(root) == []


def test_parallel_reservations_never_hand_out_the_same_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOKMDB_SCRATCH_DIR", str(tmp_path / "scratch"))
    held: list[int] = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()

    def take() -> None:
        with reserved_port() as port:
            with lock:
                held.append(port)
            barrier.wait(timeout=10)  # every reservation is held at once

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(held) == 8 and len(set(held)) == 8, held
    assert list((tmp_path / "scratch" / "ports").iterdir()) == [], "reservations outlived their block"
