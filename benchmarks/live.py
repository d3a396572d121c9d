"""Start and stop a real ``nextwatch serve`` process for the HTTP benchmarks.

The server runs as its own process (uvicorn, one worker), exactly as a user starts it, on
loopback, with an event store seeded from ml-latest-small. Benchmarks talk to it over HTTP.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = "benchmark-key"
logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    """A running ``nextwatch serve``."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(
    artefact: Path | None,
    home: Path,
    store: str | None = None,
    data_dir: str | None = None,
    port: int | None = None,
    timeout_s: float = 300,
    workers: int = 1,
    extra: Sequence[str] = (),
) -> LiveServer:
    """Run ``nextwatch serve --artefact ARTEFACT --home HOME`` and wait until it is ready
    (``artefact`` None: serve HOME's registry, whose current version must exist).

    An empty store is seeded with ml-latest-small (from ``data_dir`` or ``$NEXTWATCH_DATA``).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "serving.cli", "serve",
        "--home", str(home), "--port", str(port), "--dataset", "ml-latest-small",
        "--workers", str(workers),
    ]  # fmt: skip
    cmd += list(extra)  # more `nextwatch serve` flags
    if artefact is not None:
        cmd += ["--artefact", str(artefact)]
    if store:
        cmd += ["--store", store]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    log = home / f"server-{port}.log"
    env = {**os.environ, "NEXTWATCH_API_KEY": API_KEY, "NEXTWATCH_ADMIN_KEY": API_KEY}
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return LiveServer(process, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"server not ready after {timeout_s} s; log: {log}")
