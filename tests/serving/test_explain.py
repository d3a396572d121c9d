"""Explanations: the vectorised leave-one-out equals the obvious one, item by item."""

from __future__ import annotations

import numpy as np
import pytest

from serving.api import Recommender
from serving.explain import because


def slow_because(rec: Recommender, history, features, item_ids):
    """Leave each bag item out of the string history and re-encode: the definition."""
    known = rec.retriever.encoder.known_only(list(history))
    window = rec.max_history
    bag = known[-window:]
    start = len(known) - len(bag)
    full = rec.encode([bag], [features])[0]
    out = []
    for item in item_ids:
        w = rec.retriever.index.vector(item)
        drops = []
        for j in range(len(bag)):
            variant = (known[: start + j] + known[start + j + 1 :])[-window:]
            drops.append(float((full - rec.encode([variant], [features])[0]) @ w))
        best = int(np.argmax(drops)) if drops else 0
        out.append(bag[best] if drops and drops[best] > 0 else None)
    return out


@pytest.mark.parametrize(
    "history",
    [[], ["A"], ["A", "C"], ["A", "nope", "C", "B", "D", "E"], ["E", "A", "A", "C"]],
)
def test_because_equals_the_definition(planted_artefact, history):
    rec = Recommender.load(planted_artefact)
    features = {"gender": "F", "age": 30.0}
    items = ["B", "D", "F", "H"]
    assert because(rec, history, features, items) == slow_because(rec, history, features, items)


def test_a_single_watch_explains_its_follow_up(planted_artefact):
    rec = Recommender.load(planted_artefact)
    assert because(rec, ["C"], {}, ["D"]) == ["C"]
