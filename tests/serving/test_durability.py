"""kill -9 the real server (``nextwatch serve``) during a stream of acknowledged writes, restart
it, and find every acknowledged event: on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.store import open_store

KEY = "durability-key"
WRITERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(artefact: Path, home: Path, store: str, port: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "NEXTWATCH_API_KEY": KEY, "NEXTWATCH_ADMIN_KEY": KEY}
    cmd = [
        sys.executable, "-m", "serving.cli", "serve", "--artefact", str(artefact),
        "--home", str(home), "--store", store, "--port", str(port), "--no-seed",
        "--workers", str(workers),
    ]  # fmt: skip
    log = open(home / f"server-{port}.log", "ab")  # noqa: SIM115  (kept open by the child)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 120 s")


def _crash_during_writes(artefact: Path, home: Path, store: str) -> dict[int, tuple]:
    """Start, stream writes from several clients, SIGKILL mid-stream; return acked events."""
    port = _free_port()
    proc = _start(artefact, home, store, port)
    acked: dict[int, tuple] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            n = 0
            while not stop.is_set():
                event = (f"w{w}", "ABCDEFGH"[n % 8], float(1 + n % 5), 1000.0 + n)
                n += 1
                try:
                    r = client.post(
                        "/v1/events",
                        json=dict(
                            zip(("user_id", "item_id", "rating", "timestamp"), event, strict=True)
                        ),
                        headers={"X-API-Key": KEY},
                    )
                except httpx.HTTPError:
                    return  # the server is gone: this write was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acked[r.json()["sequence_numbers"][0]] = event

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    while len(acked) < 200:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of the stream: no shutdown, no flush
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    return acked


def _check_restart(artefact: Path, home: Path, store: str, acked: dict[int, tuple]) -> None:
    port = _free_port()
    proc = _start(artefact, home, store, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for w in range(WRITERS):
                mine = [e for e in acked.values() if e[0] == f"w{w}"]
                if mine:
                    assert client.get(f"/v1/users/w{w}").json()["events"] >= len(mine)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with open_store(store) as reopened:
        stored = {
            seq: (e.user_id, e.item_id, e.rating, e.timestamp)
            for seq, e in reopened.events_since(0)
        }
    missing = {s: e for s, e in acked.items() if stored.get(s) != e}
    assert missing == {}, f"{len(missing)} acknowledged events lost: {list(missing.items())[:5]}"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_acknowledged_events_survive_kill_9(backend, planted_artefact, tmp_path, request):
    if backend == "sqlite":
        store = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        store = request.getfixturevalue("fresh_postgres_url")
    acked = _crash_during_writes(planted_artefact, tmp_path, store)
    assert len(acked) >= 200
    _check_restart(planted_artefact, tmp_path, store, acked)
