"""Adam whose sparse updates touch only the rows in the batch ("lazy" Adam).

Keras' Adam decays the moments of *every* row of an embedding table on each step, even for a
sparse gradient (an ``IndexedSlices`` from a gather), so a step costs O(rows). With a million
item vectors that dominates training and makes the step cost grow with the catalogue. Lazy Adam
(as in TF Addons' ``LazyAdam`` and PyTorch's ``SparseAdam``) updates the moments and the values of
the gathered rows only; dense gradients get the ordinary Adam update.
"""

from __future__ import annotations

from towers._tf import keras, tf


class LazyAdam(keras.optimizers.Adam):
    """Adam with row-sparse updates for ``IndexedSlices`` gradients (Adam's hyperparameters
    but ``amsgrad``, which the sparse update does not implement).

    Raises
    ------
    ValueError
        If ``amsgrad`` is asked for.
    """

    def __init__(self, *args, amsgrad: bool = False, **kwargs) -> None:
        if amsgrad:
            raise ValueError("amsgrad is not supported by LazyAdam's sparse update")
        super().__init__(*args, amsgrad=False, **kwargs)

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
        # A row gathered twice in the batch gets the sum of its gradients, once.
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(
            tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows)
        )
