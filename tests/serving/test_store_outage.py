"""PostgreSQL through an outage: the store's calls run on the service's event loop, so they
must not each wait out the pool's full timeout while the server is down."""

from __future__ import annotations

import pytest
from psycopg_pool import PoolTimeout

from serving.store import StoreUnavailable
from serving.store_postgres import OUTAGE_WAIT_S, PostgresStore


class _Pool:
    """A pool with no free connection; ``lose`` connections go missing during each wait."""

    def __init__(self, lose: int = 0) -> None:
        self.lose, self.lost, self.waits = lose, 0, []

    def getconn(self, timeout: float):
        self.waits.append(timeout)
        self.lost += self.lose
        raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")

    def get_stats(self) -> dict:
        return {"connections_lost": self.lost, "connections_errors": 0}


def _store(pool: _Pool) -> PostgresStore:
    store = PostgresStore.__new__(PostgresStore)  # no server: only the pool is asked
    store._url, store._timeout, store._reachable, store._pool = (
        "postgresql://h/db",
        10.0,
        True,
        pool,
    )
    return store


def _fail(store: PostgresStore) -> None:
    with pytest.raises(StoreUnavailable, match="couldn't get a connection"):
        with store._connection():
            pass


def test_a_busy_pool_is_waited_for_and_a_failing_one_is_not():
    busy = _Pool(lose=0)  # no connection lost: the pool is only busy
    store = _store(busy)
    _fail(store)
    # The fake pool returns at once, so the rest of the timeout is all of it.
    assert busy.waits[0] == OUTAGE_WAIT_S and busy.waits[1] == pytest.approx(10.0, abs=0.05)

    down = _Pool(lose=1)  # the pool lost a connection while the call waited: the server is down
    store = _store(down)
    _fail(store)
    assert down.waits == [OUTAGE_WAIT_S]
    _fail(store)  # and from then on, until a call gets through, every wait is short
    assert down.waits == [OUTAGE_WAIT_S, OUTAGE_WAIT_S] and not store._reachable
