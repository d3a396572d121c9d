"""tf.distribute: TF_CONFIG parsing, and 2 worker processes on loopback training as well as one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from towers.artefact import load_artefact
from towers.distribute import ClusterRole, cluster_role
from towers.pipeline import evaluate_tower
from towers.splits import make_split
from towers.stream import shards_dataset
from towers.synthetic import SyntheticConfig, generate, shard_paths


def _tf_config(ports: list[int], index: int, kind: str = "worker") -> str:
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_cluster_role_from_tf_config():
    assert cluster_role({}) == ClusterRole("worker", 0, 1, False)
    assert cluster_role({}).is_chief
    role = cluster_role({"TF_CONFIG": _tf_config([1, 2, 3], 2)})
    assert role == ClusterRole("worker", 2, 3, False) and not role.is_chief
    assert cluster_role({"TF_CONFIG": _tf_config([1, 2], 0)}).is_chief
    # Vertex AI: a chief plus workers; the chief writes, worker 0 does not.
    spec = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    chief = cluster_role(
        {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "chief", "index": 0}})}
    )
    worker = cluster_role(
        {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}})}
    )
    assert chief.num_workers == 3 and chief.is_chief and not worker.is_chief
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": "{not json"})
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": json.dumps({"cluster": {}})})
    bad = [
        ({"cluster": ["w:1"], "task": {"type": "worker", "index": 0}}, "'cluster' must be"),
        ({"cluster": {"worker": "w:1"}, "task": {"type": "worker", "index": 0}}, "list of"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 3}}, "index 3"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": -1}}, "index -1"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "wroker", "index": 0}}, "'wroker'"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "chief", "index": 0}}, "'chief'"),
    ]  # fmt: skip
    for spec, message in bad:
        with pytest.raises(ValueError, match=message):
            cluster_role({"TF_CONFIG": json.dumps(spec)})


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_as_well_as_one(tmp_path):
    world = tmp_path / "world"
    generate(SyntheticConfig(num_users=1500, num_items=200, events_per_user=25, seed=4), world)
    data = shards_dataset(shard_paths(world))
    split = make_split(data.interactions, "temporal-user-20")
    train = data.with_interactions(split.train)
    # The training log as two shards of whole users.
    shards = tmp_path / "train"
    shards.mkdir()
    users = sorted(split.train["user_id"].unique())
    for i, part in enumerate(np.array_split(np.array(users), 2)):
        split.train[split.train["user_id"].isin(part)].to_parquet(shards / f"part-{i}.parquet")
    command = [
        sys.executable, "-m", "serving.cli", "train-candidates", "--shards", str(shards),
        "--epochs", "4", "--batch-size", "128", "--learning-rate", "0.005",
        "--embedding-dim", "16", "--output-dim", "16", "--max-history", "20", "--verbose", "0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    single = subprocess.run(
        [*command, "--output", str(tmp_path / "single")], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ports = _free_ports(2)
    workers = [
        subprocess.Popen(
            [*command, "--output", str(tmp_path / f"multi{i}")],
            env={**env, "TF_CONFIG": _tf_config(ports, i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
    # Worker 0 is the chief and writes the artefact; worker 1 writes none.
    assert not (tmp_path / "multi1").exists()
    summary = json.loads(outputs[0][0][outputs[0][0].index("{") :])
    assert summary["workers"] == 2
    recall = {
        name: evaluate_tower(load_artefact(tmp_path / name), train, split)["recall@50"]
        for name in ("single", "multi0")
    }
    popular = split.train["item_id"].value_counts().index[:50]
    test_users = split.test.groupby("user_id")["item_id"].agg(set)
    baseline = np.mean([len(s & set(popular)) / len(s) for s in test_users])
    print(f"Recall@50: {recall}, most-popular {baseline:.4f}")  # shown by pytest -s
    # Both learn the tastes (well above most-popular), and two workers match one within 10 %.
    assert recall["single"] > 1.3 * baseline, (recall, baseline)
    assert abs(recall["multi0"] - recall["single"]) <= 0.1 * recall["single"], recall
