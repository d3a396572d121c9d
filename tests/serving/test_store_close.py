"""Closing the SQLite store while other threads use it: an error for them, never a crash.

Closing a ``sqlite3`` connection while another thread executes on it is a use-after-free inside
the module: before the fix, the script below died with SIGSEGV (exit 139) on three runs in three,
as CI once did. It runs in a child process, so that a crash fails this test rather than the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from serving.store import Event, StoreUnavailable
    from serving.store_sqlite import SqliteStore

    failures = []
    for trial in range(30):
        # A checkpoint every 0.5 ms, so that the checkpoint thread is often mid-call at close().
        store = SqliteStore(f"{sys.argv[1]}/s{trial}.db", checkpoint_interval_s=0.0005)

        def work():
            i = 0
            while True:
                try:
                    store.append([Event(f"u{i % 5}", f"i{i}", "rating", 4.0, float(i))])
                    store.histories(["u1", "u2"])
                except StoreUnavailable:
                    return  # the expected outcome once the store is closed
                except Exception as exc:  # anything else is a bug
                    failures.append(repr(exc))
                    return
                i += 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.02)
        store.close()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a worker thread hung after close()"
    assert not failures, failures
    print("closed cleanly")
    """
)


def test_close_while_other_threads_read_and_write(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert "closed cleanly" in done.stdout
