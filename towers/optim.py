"""Adam in one fused kernel per variable, and Adam whose sparse updates touch only the rows in
the batch ("lazy" Adam).

Keras' Adam updates each variable with about ten separate element-wise ops (each a pass over
the variable and its two moments); :class:`FusedAdam` makes the same update with TensorFlow's
fused ``ResourceApplyAdam`` kernel, one pass.

Keras' Adam also decays the moments of *every* row of an embedding table on each step, even for
a sparse gradient (an ``IndexedSlices`` from a gather), so a step costs O(rows). With a million
item vectors that dominates training and makes the step cost grow with the catalogue. Lazy Adam
(as in TF Addons' ``LazyAdam`` and PyTorch's ``SparseAdam``) updates the moments and the values of
the gathered rows only; dense gradients get the fused update.
"""

from __future__ import annotations

import numpy as np

from towers._tf import keras, tf


def distinct_rows(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
    """``gradient`` with the values of a repeated row summed into one, as Keras' optimizers sum
    them, but with no segment sum where the rows are already distinct (``tf.unique`` then keeps
    them as they are, in order). The tower's history and token tables get their gradients
    summed per distinct row already (:meth:`towers.model.CandidateTower.call`), and at a
    million items that segment sum, a pass over every gradient row into a new array, was one
    of the two largest ops of a step with popularity-drawn histories."""
    rows, position = tf.unique(gradient.indices)
    values = tf.cond(
        tf.size(rows) < tf.size(gradient.indices),
        lambda: tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0]),
        lambda: tf.convert_to_tensor(gradient.values),
    )
    return tf.IndexedSlices(values, rows, gradient.dense_shape)


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each update one ``ResourceApplyAdam`` kernel: the same arithmetic
    (``alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``m += (g - m)(1 - beta_1)``,
    ``v += (g^2 - v)(1 - beta_2)``, ``w -= alpha m / (sqrt(v) + epsilon)``) in one pass over
    the variable instead of about ten. An ``IndexedSlices`` gradient is summed into a dense one
    first, which is what Keras' sparse update computes too (every row's moments decay). Adam's
    hyperparameters but ``amsgrad`` and ``adaptive_epsilon``, which the kernel does not
    implement.

    Raises
    ------
    ValueError
        If ``amsgrad`` or ``adaptive_epsilon`` is asked for.
    """

    def __init__(
        self, *args, amsgrad: bool = False, adaptive_epsilon: bool = False, **kwargs
    ) -> None:
        if amsgrad or adaptive_epsilon:
            raise ValueError(f"{type(self).__name__} supports neither amsgrad nor adaptive_epsilon")
        super().__init__(*args, amsgrad=False, adaptive_epsilon=False, **kwargs)

    def _deduplicate_sparse_grad(self, grads):
        # Keras sums the repeated rows of every sparse gradient before its update (one
        # tf.unique, then a segment sum into a new array); see distinct_rows.
        return [distinct_rows(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        key = self._var_key(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[self._index_dict[key]].handle,
            v=self._velocities[self._index_dict[key]].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(self.learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.convert_to_tensor(gradient),
        )


class LazyAdam(FusedAdam):
    """Adam with row-sparse updates for ``IndexedSlices`` gradients (dense ones get
    :class:`FusedAdam`'s update).

    Raises
    ------
    ValueError
        If ``amsgrad`` or ``adaptive_epsilon`` is asked for.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        # Keras' apply_gradients has summed a row gathered twice in the batch into one
        # (FusedAdam._deduplicate_sparse_grad, above): each of these rows is distinct.
        rows, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(
            tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows)
        )


def optimizer_state(
    optimizer: keras.optimizers.Optimizer, variables: list[tf.Variable]
) -> dict[str, np.ndarray]:
    """Adam's first and second moments of each of ``variables`` (``m0``, ``v0``, ``m1``, ...,
    in that order) and its step count (``iterations``): what a warm start continues from.

    Raises
    ------
    ValueError
        If the optimizer has not been applied to ``variables`` (it has no moments for them).
    """
    state = {"iterations": np.asarray(int(optimizer.iterations.numpy()), np.int64)}
    index = getattr(optimizer, "_index_dict", {})
    for n, variable in enumerate(variables):
        key = optimizer._var_key(variable)
        if key not in index:
            raise ValueError(f"the optimizer has no moments for variable {variable.name!r}")
        state[f"m{n}"] = optimizer._momentums[index[key]].numpy()
        state[f"v{n}"] = optimizer._velocities[index[key]].numpy()
    return state


def training_state(model: keras.Model) -> dict[str, np.ndarray] | None:
    """:func:`optimizer_state` of ``model``'s own optimizer over its trainable variables, or
    None when it has none with moments for them (a model loaded, not trained, here)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return optimizer_state(optimizer, model.trainable_variables)
    except ValueError:
        return None


def _grown(saved: np.ndarray, shape: tuple, fill: np.ndarray | float, name: str) -> np.ndarray:
    """``saved`` with rows appended up to ``shape`` (a grown vocabulary), each set to ``fill``."""
    if saved.shape == shape:
        return saved
    if saved.shape[1:] != shape[1:] or saved.shape[0] > shape[0]:
        raise ValueError(f"optimizer state of {name!r} has shape {saved.shape}, not {shape}")
    extra = np.broadcast_to(fill, (shape[0] - saved.shape[0], *shape[1:]))
    return np.concatenate([saved, extra]).astype(saved.dtype)


def restore_optimizer_state(
    optimizer: keras.optimizers.Optimizer,
    variables: list[tf.Variable],
    state: dict[str, np.ndarray],
) -> None:
    """Continue ``optimizer`` from ``state`` (:func:`optimizer_state` of a parent model whose
    variables correspond to ``variables``, in order). A table that grew (new items appended)
    gets zero first moments and the mean of the parent rows' second moments for its new rows,
    so their first updates are of the size the old rows' are.

    Raises
    ------
    ValueError
        If ``state`` has another number of variables, lacks an entry, or has a shape that
        is neither the variable's nor a prefix of its rows.
    """
    saved = sum(1 for k in state if k.startswith("m"))
    if saved != len(variables):
        raise ValueError(
            f"optimizer state is for {saved} variables; the model has {len(variables)}"
        )
    needed = ["iterations"] + [f"{s}{n}" for n in range(saved) for s in "mv"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"optimizer state lacks {missing[:3]}: not saved by optimizer_state")
    optimizer.build(variables)
    for n, variable in enumerate(variables):
        slot = optimizer._index_dict[optimizer._var_key(variable)]
        shape = tuple(variable.shape)
        m, v = state[f"m{n}"], state[f"v{n}"]
        optimizer._momentums[slot].assign(_grown(m, shape, 0.0, variable.name))
        fill = v.mean(axis=0) if v.ndim and len(v) else 0.0
        optimizer._velocities[slot].assign(_grown(v, shape, fill, variable.name))
    optimizer.iterations.assign(int(state["iterations"]))
