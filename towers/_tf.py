"""The one place that imports TensorFlow and Keras 2 for the project."""

import tensorflow as tf
import tf_keras as keras

import towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

if not tf.keras.__name__.startswith("tf_keras"):  # pragma: no cover - depends on import order
    raise RuntimeError(
        "TensorFlow was imported with Keras 3 before nextwatch could set TF_USE_LEGACY_KERAS=1; "
        "import nextwatch packages (towers, serving, ...) before tensorflow, or export "
        "TF_USE_LEGACY_KERAS=1"
    )


class UntrackedList(list):
    """A list that a Keras layer keeps as it is. Keras wraps a plain ``list`` attribute in a
    tracked list and walks every element of it each time it collects the layer's variables,
    which with a million item IDs took seconds each time (docs/scale.md, "Start-up"). It wraps
    only objects whose type is exactly ``list``."""


__all__ = ["UntrackedList", "keras", "tf"]
