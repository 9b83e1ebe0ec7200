"""The fast trainer of the paper's head: the same SGD, written out in NumPy.

Keras' ``model.fit`` spends most of the head's training time on per-step
overhead: about 14,000 steps of an 8-row batch through a 128-unit layer, a few
microseconds of arithmetic each. This trainer writes the forward and backward
pass out by hand (a two-layer network: the gradients take a dozen lines), draws
each epoch's permutation and dropout masks in one vectorised call, applies the
momentum update of the big kernel with one in-place BLAS call
(``V = m V - lr X^T dZ``) and keeps BLAS on one thread (8-row products only
lose time to threading). Measured and dropped: one XLA-compiled
``tf.while_loop`` over all epochs was slower than the reference here (XLA
compiled for 20-40 s on two shared cores, and its stateless dropout generator
cost about 1 ms a step).

Same math as the Keras reference (``PaperHead(trainer="reference")``):

* the weights start from the Keras model the reference builds (same seed, same
  Glorot initialisation) and are written back into it, so the saved ``.keras``
  head is the same kind of file;
* Dropout (inverted, ``1/(1-p)`` scaling) on the input in training only;
  Dense ReLU with L1/L2 activity regularisation; BatchNormalization with batch
  moments (biased variance) in training and moving averages updated with the
  layer's own momentum, moving statistics at inference; Dense softmax with the
  same activity regularisation; each activity term divided by the batch size,
  as Keras 3 does;
* categorical cross-entropy with the per-row (class) weights, summed and
  divided by the batch size; SGD with momentum, ``v = m v - lr g``,
  ``w = w + v``; batches of ``batch_size`` rows and a last, smaller batch of the
  remainder, in a fresh permutation every epoch;
* the history as Keras 3 reports it: ``loss`` is the mean over the epoch's
  batches weighted by their sizes (dropout on, regularisation included),
  ``accuracy`` the share of correct argmaxes seen while training (not weighted
  by the class weights: Keras 3 applies them to the loss only),
  ``val_loss``/``val_accuracy`` computed after the epoch in inference mode, in
  chunks of the validation batch size.

Only the random streams differ: the permutations and the dropout masks come
from ``numpy.random.default_rng(seed)`` (per epoch: the permutation, then one
``(rows, features)`` uniform draw for the masks), where Keras draws them from
its own seeded streams. Both trainers are deterministic for a seed but follow
different, equally likely sequences of batches and masks; with dropout 0 and one
batch per epoch (no randomness left) they agree to float rounding
(tests/test_paper_fast.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The head's arrays, in the order the trainer keeps them.
WEIGHT_NAMES = ("kernel1", "bias1", "gamma", "beta", "moving_mean", "moving_var", "kernel2", "bias2")
#: Which of them SGD updates (BatchNorm updates the moving statistics itself).
TRAINABLE = ("kernel1", "bias1", "gamma", "beta", "kernel2", "bias2")


@dataclass(frozen=True)
class FastSettings:
    """The hyper-parameters of the loop: the head's, and the built BatchNorm layer's constants."""

    dropout: float
    activity_l1: float
    activity_l2: float
    learning_rate: float
    momentum: float
    batch_size: int
    bn_momentum: float
    bn_epsilon: float
    validation_batch: int


def _keras_variables(model: Any) -> tuple[Any, ...]:
    hidden = model.get_layer("hidden")
    bn = model.get_layer("batchnorm")
    output = model.get_layer("output")
    return (
        hidden.kernel, hidden.bias, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
        output.kernel, output.bias,
    )


def keras_weights(model: Any) -> dict[str, np.ndarray]:
    """The head's arrays (float32 copies), read from the Keras model the reference builds."""
    return {
        name: np.array(var, dtype=np.float32) for name, var in zip(WEIGHT_NAMES, _keras_variables(model))
    }


def set_keras_weights(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Write the trained arrays back into the Keras model (in place)."""
    for name, var in zip(WEIGHT_NAMES, _keras_variables(model)):
        var.assign(np.asarray(weights[name], dtype=np.float32))


def settings_of(model: Any, head: Any, validation_batch: int) -> FastSettings:
    """The loop's settings from a :class:`~xrayfx.study.heads.paper.PaperHead` and its built model."""
    bn = model.get_layer("batchnorm")
    return FastSettings(
        dropout=float(head.dropout),
        activity_l1=float(head.activity_l1),
        activity_l2=float(head.activity_l2),
        learning_rate=float(head.learning_rate),
        momentum=float(head.momentum),
        batch_size=int(head.batch_size),
        bn_momentum=float(bn.momentum),
        bn_epsilon=float(bn.epsilon),
        validation_batch=int(validation_batch),
    )


def one_blas_thread() -> Any:
    """Context manager holding BLAS to one thread (8-row products only lose time to threading)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class FastTrainer:
    """SGD with momentum on the paper's head, one epoch per :meth:`epoch` call.

    The state (weights and velocities) lives in the trainer between calls, so
    the caller may hand each epoch other rows (fresh jitters). The small arrays
    (``bias1``, ``gamma``, ``beta``, ``kernel2``, ``bias2``) are views into one
    flat buffer, as are their gradients and velocities: their update is three
    NumPy calls instead of fifteen (each step is dominated by call overhead).
    """

    _SMALL = ("bias1", "gamma", "beta", "kernel2", "bias2")

    def __init__(self, settings: FastSettings, weights: dict[str, np.ndarray], seed: int):
        self.s = settings
        self.w = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        # The big kernel and its velocity are Fortran-ordered: BLAS updates them in place.
        self.w["kernel1"] = np.asfortranarray(self.w["kernel1"])
        self.v1 = np.zeros_like(self.w["kernel1"])
        sizes = [self.w[k].size for k in self._SMALL]
        self.flat_w = np.concatenate([self.w[k].ravel() for k in self._SMALL]).astype(np.float32)
        self.flat_v = np.zeros_like(self.flat_w)
        self.flat_g = np.zeros_like(self.flat_w)
        self.g: dict[str, np.ndarray] = {}
        start = 0
        for k, size in zip(self._SMALL, sizes):
            shape = self.w[k].shape
            self.w[k] = self.flat_w[start:start + size].reshape(shape)
            self.g[k] = self.flat_g[start:start + size].reshape(shape)
            start += size
        self.rng = np.random.default_rng(int(seed))

    # -------------------------------------------------------------- epochs
    def epoch(
        self, X: np.ndarray, Y: np.ndarray, row_weight: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[float, float, float | None, float | None]:
        """Train one epoch on (X, one-hot Y); return loss, accuracy, val_loss, val_accuracy.

        Call it inside :func:`one_blas_thread` (entering that costs milliseconds: once per fit).
        """
        s = self.s
        n = X.shape[0]
        perm = self.rng.permutation(n)
        Xe = X[perm]
        if s.dropout > 0.0:
            keep = self.rng.random(Xe.shape, dtype=np.float32) >= s.dropout
            Xe = np.where(keep, Xe * np.float32(1.0 / (1.0 - s.dropout)), np.float32(0.0))
        Ye = np.ascontiguousarray(Y[perm], dtype=np.float32)
        We = row_weight[perm].astype(np.float32)
        codes = np.argmax(Ye, axis=1)
        loss_sum = 0.0
        hits = 0
        for start in range(0, n, s.batch_size):
            stop = min(start + s.batch_size, n)
            loss, correct = self._step(Xe[start:stop], Ye[start:stop], We[start:stop], codes[start:stop])
            loss_sum += loss * (stop - start)
            hits += correct
        val = self.evaluate(*validation) if validation is not None else (None, None)
        return loss_sum / n, hits / n, val[0], val[1]

    def evaluate(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
        """Loss (with the activity terms) and accuracy in inference mode, in validation-sized chunks."""
        total, hits = 0.0, 0
        for start in range(0, X.shape[0], self.s.validation_batch):
            x, y = X[start:start + self.s.validation_batch], Y[start:start + self.s.validation_batch]
            h, _, z2 = self._forward(x, training=False)
            p = _softmax(z2)
            ce = _cross_entropy(z2, y)
            loss = (float(ce.sum()) + self._activity(h, p)) / x.shape[0]
            total += loss * x.shape[0]
            hits += int(np.sum(np.argmax(p, axis=1) == np.argmax(y, axis=1)))
        return total / X.shape[0], hits / X.shape[0]

    def weights(self) -> dict[str, np.ndarray]:
        """The current arrays, C-ordered float32."""
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.w.items()}

    # ---------------------------------------------------------- one step
    def _forward(self, x: np.ndarray, training: bool):
        """Hidden ReLU output, BatchNorm's (mean, var, 1/std, normalised, output) and the logits."""
        w, s = self.w, self.s
        h = x @ w["kernel1"]
        h += w["bias1"]
        np.maximum(h, 0.0, out=h)
        inv_n = np.float32(1.0 / x.shape[0])
        if training:
            mean = np.add.reduce(h, axis=0) * inv_n
            d = h - mean
            var = np.add.reduce(d * d, axis=0) * inv_n
        else:
            mean, var = w["moving_mean"], w["moving_var"]
            d = h - mean
        inv = 1.0 / np.sqrt(var + np.float32(s.bn_epsilon))
        hn = d * inv
        o = hn * w["gamma"]
        o += w["beta"]
        z2 = o @ w["kernel2"]
        z2 += w["bias2"]
        return h, (mean, var, inv, hn, o), z2

    def _activity(self, h: np.ndarray, p: np.ndarray) -> float:
        """Sum of the activity terms; h (ReLU output) and p (softmax) are >= 0, so |a| = a."""
        s = self.s
        return float(s.activity_l1 * (h.sum() + p.sum()) + s.activity_l2 * (np.vdot(h, h) + np.vdot(p, p)))

    def _step(self, x: np.ndarray, y: np.ndarray, sw: np.ndarray, codes: np.ndarray) -> tuple[float, int]:
        """Forward, backward and SGD update on one batch; return its loss and correct count."""
        s, w, g = self.s, self.w, self.g
        n = x.shape[0]
        inv_n = np.float32(1.0 / n)
        h, (mean, var, inv, hn, o), z2 = self._forward(x, training=True)
        zmax = z2.max(axis=1, keepdims=True)
        e = np.exp(z2 - zmax)
        se = np.add.reduce(e, axis=1, keepdims=True)
        p = e / se
        ce = np.log(se[:, 0]) + zmax[:, 0] - np.add.reduce(y * z2, axis=1)
        loss = (float(np.dot(ce, sw)) + self._activity(h, p)) * float(inv_n)
        correct = int(np.count_nonzero(np.argmax(p, axis=1) == codes))

        # Output layer: cross-entropy, then the activity terms of the softmax output (p > 0).
        dz2 = (p - y) * (sw * inv_n)[:, None]
        dp = (s.activity_l1 + 2.0 * s.activity_l2 * p) * inv_n
        dz2 += p * (dp - np.add.reduce(dp * p, axis=1, keepdims=True))
        np.matmul(o.T, dz2, out=g["kernel2"])
        np.add.reduce(dz2, axis=0, out=g["bias2"])
        do = dz2 @ w["kernel2"].T
        np.add.reduce(do * hn, axis=0, out=g["gamma"])
        np.add.reduce(do, axis=0, out=g["beta"])
        # BatchNorm backward with batch moments, then the hidden activity terms and the ReLU.
        dh = do - g["beta"] * inv_n
        dh -= hn * (g["gamma"] * inv_n)
        dh *= inv * w["gamma"]
        dh += (s.activity_l1 + 2.0 * s.activity_l2 * h) * inv_n
        dz1 = np.where(h > 0.0, dh, np.float32(0.0))
        np.add.reduce(dz1, axis=0, out=g["bias1"])

        m, lr = np.float32(s.momentum), np.float32(s.learning_rate)
        # kernel1: V = m V - lr x^T dz1 in one BLAS call, then W += V.
        self.v1 = _sgemm()(-lr, x, dz1, beta=m, c=self.v1, trans_a=1, overwrite_c=1)
        w["kernel1"] += self.v1
        self.flat_v *= m
        self.flat_v -= lr * self.flat_g
        self.flat_w += self.flat_v
        one_minus = np.float32(1.0 - s.bn_momentum)
        w["moving_mean"] += (mean - w["moving_mean"]) * one_minus
        w["moving_var"] += (var - w["moving_var"]) * one_minus
        return loss, correct


def _sgemm() -> Any:
    """scipy's single-precision BLAS matrix product (C = alpha op(A) op(B) + beta C, in place)."""
    from scipy.linalg.blas import sgemm

    return sgemm


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row categorical cross-entropy from the logits (as Keras computes it after a softmax layer)."""
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return lse - np.sum(y * z, axis=1)
