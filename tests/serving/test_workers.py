"""``nextwatch serve --workers 2``: two processes on one port, a hot swap sent to one of them
reaches both, and /metrics sums both."""

from __future__ import annotations

import time

import httpx

from tests.serving.test_durability import KEY, _free_port, _start


def test_a_hot_swap_reaches_every_worker(planted_artefact, planted_ranked_artefact, tmp_path):
    port = _free_port()
    proc = _start(planted_artefact, tmp_path, f"sqlite:///{tmp_path / 'e.db'}", port, workers=2)
    url = f"http://127.0.0.1:{port}"
    try:
        seen = {httpx.get(f"{url}/v1/model").json()["ranker"] for _ in range(10)}
        assert seen == {False}
        r = httpx.post(
            f"{url}/v1/admin/reload",
            json={"artefact": str(planted_ranked_artefact)},
            headers={"X-API-Key": KEY},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        deadline, streak = time.monotonic() + 60, 0
        while streak < 20 and time.monotonic() < deadline:
            # A new connection each time, so that both workers answer over the loop.
            streak = streak + 1 if httpx.get(f"{url}/v1/model").json()["ranker"] else 0
        assert streak == 20, "a worker did not follow the swap within 60 s"
        for _ in range(10):
            assert httpx.get(f"{url}/v1/users/u0/recommendations").status_code == 200
        text = httpx.get(f"{url}/metrics").text
        line = next(
            x for x in text.splitlines()
            if x.startswith('nextwatch_http_requests_total{method="GET",route="/v1/model"')
        )  # fmt: skip
        assert float(line.rsplit(" ", 1)[1]) >= 30  # both workers' counts, summed
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode is not None
