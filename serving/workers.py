"""Several server processes on one port, each with its own ``SO_REUSEPORT`` socket.

uvicorn's own ``--workers`` shares one listening socket, and whichever process is idle first
accepts the next connection: with keep-alive clients, one process ended up with about twice
the other's connections (and CPU) in the load benchmark, and its queue set the tail latency.
With a socket per process and ``SO_REUSEPORT``, the kernel spreads connections evenly by a hash
of their addresses. The parent restarts a worker that dies, and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import time

log = logging.getLogger(__name__)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other processes may also bind."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, environment: dict[str, str]) -> None:
    import uvicorn

    os.environ.update(environment)
    from serving.serve import worker_app

    app = worker_app()  # load first: a bound socket would queue connections meanwhile
    sock = reuseport_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(host: str, port: int, workers: int, environment: dict[str, str]) -> None:
    """Run ``workers`` server processes until SIGINT/SIGTERM; restart any that exits."""
    context = mp.get_context("spawn")  # a fresh interpreter: no TensorFlow state is forked
    stopping = False

    def start() -> mp.Process:
        process = context.Process(
            target=_worker, args=(host, port, environment), name="nextwatch-worker"
        )
        process.start()
        return process

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    # SO_REUSEPORT would let this bind beside another server on the port and silently split
    # its traffic: refuse if anything answers there, then bind once to fail early if taken.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) == 0:
            raise OSError(f"port {port} on {host} is already in use by another server")
    reuseport_socket(host, port).close()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    restarts: list[float] = []
    try:
        while not stopping:
            time.sleep(0.5)
            for n, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    # Back off when workers keep dying (e.g. the store is down): at most one
                    # restart per 10 s after 3 within a minute.
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60]
                    if len(restarts) >= 3 and now - restarts[-1] < 10:
                        continue
                    restarts.append(now)
                    log.warning("worker %d exited with %s; restarting", process.pid,
                                process.exitcode)  # fmt: skip
                    processes[n] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
