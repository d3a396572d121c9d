"""tf.distribute for the tower: one process, or one worker of many from ``TF_CONFIG``.

A ``TF_CONFIG`` environment variable (the standard of TensorFlow, Kubernetes' TFJob and Vertex AI)
with more than one worker selects ``MultiWorkerMirroredStrategy``: every worker holds a copy of the
model, reads its own part of the input, and the gradients are all-reduced each step. Without it,
training runs in this process on TensorFlow's default strategy. The same command works both ways.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from towers._tf import tf


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in a ``TF_CONFIG`` cluster (one worker of one when there is none)."""

    task_type: str = "worker"
    task_index: int = 0
    num_workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes the artefact: the ``chief`` task if the cluster has one (as Vertex AI
        sets up), else worker 0."""
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def cluster_role(environ: dict[str, str] | None = None) -> ClusterRole:
    """Parse ``TF_CONFIG`` from ``environ`` (default ``os.environ``).

    Raises
    ------
    ValueError
        If ``TF_CONFIG`` is not valid JSON, its cluster is not an object of host lists, or its
        task's type or index is not in the cluster.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterRole()

    def invalid(reason: str) -> ValueError:
        return ValueError(f"TF_CONFIG is not a valid cluster spec ({reason}): {raw[:200]}")

    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"not JSON: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise invalid("'cluster' must be an object of task type -> list of host:port")
    cluster, task = config["cluster"], config.get("task")
    for kind, hosts in cluster.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise invalid(f"cluster[{kind!r}] must be a list of 'host:port' strings")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise invalid("'task' must be an object with 'type' and 'index'")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise invalid(f"task type {kind!r} is not in the cluster ({sorted(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise invalid(f"task index {index!r} is not in [0, {len(cluster[kind])})")
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return ClusterRole(str(kind), index, max(workers, 1), bool(cluster.get("chief")))


def strategy_for(role: ClusterRole) -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` for a cluster of several workers, else the default.

    Create it before any other TensorFlow op runs (TensorFlow's own requirement).
    """
    if role.num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
