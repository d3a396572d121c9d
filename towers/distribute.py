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
        If ``TF_CONFIG`` is not valid JSON or lacks ``cluster`` / ``task``.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterRole()
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return ClusterRole(
            str(task["type"]), int(task["index"]), max(workers, 1), bool(cluster.get("chief"))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG is not a valid cluster spec ({exc}): {raw[:200]}") from exc


def strategy_for(role: ClusterRole) -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` for a cluster of several workers, else the default.

    Create it before any other TensorFlow op runs (TensorFlow's own requirement).
    """
    if role.num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
