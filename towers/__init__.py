"""Candidate generation: data, examples, the next-watch softmax tower, training and metrics.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, so that
``tf.keras`` is Keras 2 (tf-keras), which TensorFlow Recommenders needs. Users never set it by hand.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA stubs, oneDNN notices) hides real log lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__: list[str] = []
