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

__all__ = ["keras", "tf"]
