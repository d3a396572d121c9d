"""A real, throwaway PostgreSQL server for the event-store tests.

``postgres_url`` (session) is ``$NEXTWATCH_TEST_POSTGRES`` when set, else a server this module
starts with the local ``initdb``/``pg_ctl`` (unix socket only, trust auth, stopped at session
end). Without PostgreSQL binaries the tests that need it skip, unless
``NEXTWATCH_REQUIRE_POSTGRES=1`` (as in CI), when they fail. ``fresh_postgres_url`` gives each
test an empty database of its own; ``private_postgres`` gives a test a server it may crash and
restart (:class:`PostgresServer`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

_DB = itertools.count()


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    return None


def _free_port() -> int:
    # The server listens on a unix socket only, but the port names that socket's file.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scratch_dir() -> str | None:
    # tmpfs when it has room: initdb there takes ~1 s instead of ~8 s on a slow disk. Data on tmpfs
    # still survives a server crash or kill, which is all a throwaway server has to survive.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30:
        return str(shm)
    return None


@dataclass
class PostgresServer:
    """A throwaway server made by :func:`start_postgres`; its data survives ``stop``/``start``."""

    root: Path
    bindir: Path
    port: int
    prefix: list[str]  # runs commands as the postgres user when we are root

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database (unix socket, no password)."""
        return f"postgresql://postgres@/postgres?host={self.root / 'sock'}&port={self.port}"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.prefix, *args], cwd=self.root, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        options = f"-k {self.root / 'sock'} -p {self.port} -c listen_addresses=''"
        log = str(self.root / "server.log")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-l", log,
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash (the restart replays the WAL)."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop"
        )

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        try:
            self.stop()
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(bindir: Path | None = None) -> PostgresServer:
    """Initialise and start a throwaway server; call ``remove()`` when done.

    The data directory and socket live in a fresh directory under ``/dev/shm`` (if it has room)
    or the system temp dir, not pytest's, whose 0700 parents the ``postgres`` user cannot enter.
    PostgreSQL refuses to run as root, so as root the server runs as ``postgres`` via ``runuser``.

    Raises
    ------
    FileNotFoundError
        No PostgreSQL binaries were found.
    RuntimeError
        ``initdb`` or ``pg_ctl`` failed (the message has their output).
    """
    bindir = bindir or find_postgres_bin()
    if bindir is None:
        raise FileNotFoundError("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="nextwatch-pg-", dir=_scratch_dir()))
    (root / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(root, bindir, _free_port(), prefix)
    try:
        server._run(str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust",
                    "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


def _require_binaries() -> None:
    if find_postgres_bin() is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found"
        if os.environ.get("NEXTWATCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message}, and NEXTWATCH_REQUIRE_POSTGRES=1")
        pytest.skip(message)


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a live PostgreSQL server's maintenance database (see the module docstring)."""
    given = os.environ.get("NEXTWATCH_TEST_POSTGRES")
    if given:
        yield given
        return
    _require_binaries()
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture()
def private_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, which it may stop, crash and restart; removed afterwards."""
    _require_binaries()
    server = start_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture()
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database on ``postgres_url``'s server; dropped afterwards."""
    import psycopg

    name = f"nextwatch_test_{os.getpid()}_{next(_DB)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    yield with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def planted_store(tmp_path):
    """An SQLite store in ``tmp_path`` seeded with :func:`tests.conftest.planted_dataset`."""
    from serving.store import open_store
    from tests.conftest import planted_dataset

    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    data = planted_dataset()
    store.import_users(data.users)
    store.import_events(data.interactions)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """An empty store's URL: SQLite in ``tmp_path``, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"  # an absolute path: sqlite:////tmp/...
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture()
def store(store_url):
    """An open, empty store on each backend."""
    from serving.store import open_store

    with open_store(store_url) as opened:
        yield opened
