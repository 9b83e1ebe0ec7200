"""The head of Cuijpers, Liu & Borel Rinkes (2020), trained with Keras on pooled embeddings.

Dropout (rate from the backbone spec) → Dense 128 ReLU with L1/L2 activity
regularisation 0.001 → BatchNormalization → Dense 2 softmax with the same
regularisation; SGD with learning rate 1e-4 and momentum 0.5, batch 8, 100
epochs, categorical cross-entropy on one-hot labels. Every number is a
parameter, so each is overridable by a command-line flag.

Pooling before dropout
----------------------
The paper puts dropout on the backbone's spatial feature map (H×W×C) and then
global-average-pools it; xrayfx pools first (the extractor caches one pooled
vector per image) and puts dropout on the pooled vector. The two are close:
* Global average pooling is linear, and inverted dropout keeps each value's
  expectation (a kept value is scaled by 1/(1-p)). Dropping then pooling gives
  ``z_c = mean_ij(m_ijc * x_ijc) / (1-p)`` whose expectation over the masks is
  ``mean_ij(x_ijc)``: the pooled value our dropout sees. Both variants feed the
  Dense layer the same input on average.
* At inference dropout is off, so both compute exactly the same function of the
  same weights: ``Dense(GAP(x))``.
* They differ only in the noise's variance. The paper averages H·W independent
  masks per channel, so its per-channel noise is smaller (about 1/(H·W) of
  ours when the map's values are similar); ours drops a whole channel at a time,
  which is stronger — close to spatial dropout before pooling. Same regulariser,
  same mean, different strength: if a run needs the paper's milder noise, lower
  the ``dropout`` rate.

Pooling first is also what makes the head cheap: a cached 2048-vector instead of
a 7×7×2048 map per image (49× smaller), and training in seconds.

Inputs are not standardised, as in the paper; BatchNormalization after the
hidden layer takes care of the scale. Per-epoch training and validation loss
and accuracy are kept in ``history_`` (written to ``history.csv`` by
:func:`xrayfx.study.heads.persist.write_history_csv`; the paper's Figures 4–7 are
drawn from it). The training loss includes the activity-regularisation terms
and is averaged over the epoch's batches with dropout on, as Keras reports it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from sklearn.utils.validation import check_array, check_is_fitted

from xrayfx.exceptions import UsageError
from xrayfx.study.heads.base import Head
from xrayfx.util import import_keras_quietly
from xrayfx.study.heads import paper_fast

#: Batches run per call into the compiled training graph. It does not change the
#: result (same updates in the same order) but removes most of Keras' per-step
#: Python overhead: 1,079 rows x 1,024 features x 100 epochs at batch 8 take about
#: 12 s instead of about 25 s on two shared CPU cores.
STEPS_PER_EXECUTION = 256

#: Rows per forward pass in predict_proba.
_PREDICT_CHUNK = 4096

#: Rows per batch of the per-epoch validation pass.
_VALIDATION_BATCH = 1024

EpochData = Callable[[int], tuple[Any, Any]]

#: The trainers of the paper's head (``--trainer``); the first is the default.
TRAINERS = ("fast", "reference")


def check_trainer(trainer: str) -> None:
    """Raise UsageError unless ``trainer`` names one of :data:`TRAINERS` (``--trainer``)."""
    if trainer not in TRAINERS:
        raise UsageError(
            f"--trainer (PaperHead trainer) must be one of {', '.join(TRAINERS)}; got {trainer!r}. "
            "'fast' is the NumPy trainer, 'reference' Keras' model.fit (same math)."
        )


def _keras() -> Any:
    """Import Keras only when a paper head is built (it pulls in TensorFlow)."""
    return import_keras_quietly()


class PaperHead(Head):
    """The paper's Keras head on pooled embeddings (see the module docstring).

    Parameters
    ----------
    dropout : rate of the Dropout on the pooled embedding (the backbone spec's
        ``dropout``: 0.5 InceptionV3/DenseNet201, 0.2 ResNet101V2/InceptionResNetV2).
    units : width of the hidden Dense ReLU layer.
    activity_l1, activity_l2 : L1 and L2 activity regularisation of both Dense layers.
    learning_rate, momentum : of the SGD optimiser.
    batch_size, epochs : of training.
    seed : seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``)
        at the start of ``fit``, and the dropout layer; same seed, same data →
        same model on the same machine.
    verbose : Keras' progress output (0 silent).
    class_weight : None, "balanced" or {label: weight}; passed to Keras as loss
        weights per class (``--balance class-weight``).
    trainer : "fast" (default: the NumPy trainer,
        :mod:`xrayfx.study.heads.paper_fast`) or "reference" (Keras ``model.fit``). Same
        model, same math, same history and saved file; they differ only in the
        random streams of shuffling and dropout (see :mod:`xrayfx.study.heads.paper_fast`).
    """

    _dtype = np.float32

    def __init__(
        self,
        dropout: float = 0.5,
        units: int = 128,
        activity_l1: float = 1e-3,
        activity_l2: float = 1e-3,
        learning_rate: float = 1e-4,
        momentum: float = 0.5,
        batch_size: int = 8,
        epochs: int = 100,
        seed: int = 0,
        verbose: int = 0,
        class_weight: str | dict | None = None,
        trainer: str = "fast",
    ):
        self.dropout = dropout
        self.units = units
        self.activity_l1 = activity_l1
        self.activity_l2 = activity_l2
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.verbose = verbose
        self.class_weight = class_weight
        self.trainer = trainer

    # ------------------------------------------------------------------ build
    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UsageError(f"PaperHead {name} must be a positive integer; got {value!r}.")

        for name in ("units", "batch_size", "epochs"):
            positive_int(name)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UsageError(
                f"PaperHead dropout must be in [0, 1); got {self.dropout!r}. The paper uses 0.5 "
                "(InceptionV3, DenseNet201) or 0.2 (ResNet101V2, InceptionResNetV2)."
            )
        if float(self.learning_rate) <= 0.0:
            raise UsageError(f"PaperHead learning_rate must be > 0; got {self.learning_rate!r}.")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise UsageError(f"PaperHead momentum must be in [0, 1); got {self.momentum!r}.")
        for name in ("activity_l1", "activity_l2"):
            if float(getattr(self, name)) < 0.0:
                raise UsageError(f"PaperHead {name} must be >= 0; got {getattr(self, name)!r}.")
        check_trainer(self.trainer)

    def _build(self, n_features: int, n_classes: int) -> Any:
        """Input → Dropout → Dense(units, ReLU) → BatchNorm → Dense(n_classes, softmax), compiled."""
        keras = _keras()
        layers = keras.layers

        def reg() -> Any:
            return keras.regularizers.L1L2(l1=float(self.activity_l1), l2=float(self.activity_l2))

        inputs = keras.Input((n_features,), name="embedding")
        h = layers.Dropout(float(self.dropout), seed=int(self.seed), name="dropout")(inputs)
        h = layers.Dense(int(self.units), activation="relu", activity_regularizer=reg(), name="hidden")(h)
        h = layers.BatchNormalization(name="batchnorm")(h)
        outputs = layers.Dense(n_classes, activation="softmax", activity_regularizer=reg(), name="output")(h)
        model = keras.Model(inputs, outputs, name="paper_head")
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=float(self.learning_rate), momentum=float(self.momentum)),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=False,
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        return model

    def _one_hot(self, codes: np.ndarray) -> np.ndarray:
        return np.eye(len(self.classes_), dtype=np.float32)[codes]

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
        epoch_data: EpochData | None = None,
    ) -> "PaperHead":
        """Train the head; return self.

        Parameters
        ----------
        X, y : training embeddings (n_rows, n_features) and their labels. They fix
            ``classes_``, ``n_features_in_`` and the ``"balanced"`` class weights.
        validation_data : optional ``(X_val, y_val)``, evaluated after every epoch
            (``val_loss``, ``val_accuracy`` in ``history_``); None leaves those None.
        epoch_data : optional callable ``epoch_data(epoch) -> (X_epoch, y_epoch)``
            with ``epoch`` counted from 0; it returns the training rows of that
            epoch (for example freshly jittered, then resampled, by the caller).
            Given it, training runs one epoch at a time on those rows and X, y
            are not trained on directly.

        ``history_`` gets one dict per epoch: ``epoch`` (counted from 1, as Keras
        prints it), ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
        """
        self._check_params()
        X, codes = self._validate_fit_data(X, y)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise UsageError(
                    "validation_data must be a pair (X_val, y_val) or None; got "
                    f"{type(validation_data).__name__}."
                )
            X_val = self._validate_X(validation_data[0], reset=False)
            y_val = self._codes_of(validation_data[1], "validation labels")
            if len(y_val) != X_val.shape[0]:
                raise ValueError(
                    f"validation X has {X_val.shape[0]} rows but y has {len(y_val)} labels; "
                    "pass the labels of exactly the validation rows."
                )
            val = (X_val, self._one_hot(y_val))
        if epoch_data is not None and not callable(epoch_data):
            raise UsageError(
                f"epoch_data must be a callable epoch -> (X, y) or None; got {type(epoch_data).__name__}."
            )
        class_weight = self._class_weight_by_code(codes)

        keras = _keras()
        keras.utils.set_random_seed(int(self.seed))
        model = self._build(X.shape[1], len(self.classes_))
        if self.trainer == "fast":
            self.history_ = self._fit_fast(model, X, codes, val, epoch_data, class_weight)
            self.model_ = model
            return self
        fit_kwargs = dict(
            batch_size=int(self.batch_size),
            validation_data=val,
            # Validation loss and accuracy are means over rows: the batch size only
            # changes float rounding, and large batches make the check per epoch cheap.
            validation_batch_size=_VALIDATION_BATCH,
            class_weight=class_weight,
            shuffle=True,
            verbose=int(self.verbose),
        )
        history: list[dict[str, Any]] = []
        if epoch_data is None:
            logs = model.fit(X, self._one_hot(codes), epochs=int(self.epochs), **fit_kwargs).history
            for e in range(int(self.epochs)):
                history.append(self._epoch_row(e, {k: v[e] for k, v in logs.items()}))
        else:
            for e in range(int(self.epochs)):
                X_e, y_e = self._epoch_rows(epoch_data, e)
                logs = model.fit(X_e, y_e, epochs=e + 1, initial_epoch=e, **fit_kwargs).history
                history.append(self._epoch_row(e, {k: v[-1] for k, v in logs.items()}))
        self.model_ = model
        self.history_ = history
        return self

    def _fit_fast(
        self,
        model: Any,
        X: np.ndarray,
        codes: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        epoch_data: EpochData | None,
        class_weight: dict[int, float] | None,
    ) -> list[dict[str, Any]]:
        """Train ``model`` in place with :class:`~xrayfx.study.heads.paper_fast.FastTrainer`; return the history."""

        trainer = paper_fast.FastTrainer(
            paper_fast.settings_of(model, self, _VALIDATION_BATCH), paper_fast.keras_weights(model), int(self.seed)
        )

        def row_weights(c: np.ndarray) -> np.ndarray:
            if class_weight is None:
                return np.ones(len(c), np.float32)
            return np.array([class_weight.get(int(k), 1.0) for k in c], np.float32)

        epochs = int(self.epochs)
        Y, W = self._one_hot(codes), row_weights(codes)
        history = []
        # BLAS held to one thread for the whole fit (setting the limit takes milliseconds).
        with paper_fast.one_blas_thread():
            for e in range(epochs):
                if epoch_data is not None:
                    X, Y = self._epoch_rows(epoch_data, e)
                    W = row_weights(np.argmax(Y, axis=1))
                loss, acc, val_loss, val_acc = trainer.epoch(X, Y, W, val)
                logs: dict[str, float | None] = {"loss": loss, "accuracy": acc}
                if val is not None:
                    logs.update(val_loss=val_loss, val_accuracy=val_acc)
                history.append(self._epoch_row(e, logs))
                if int(self.verbose):
                    print(f"Epoch {e + 1}/{epochs} " + " ".join(f"{k}: {v:.4f}" for k, v in logs.items()),
                          flush=True)
        paper_fast.set_keras_weights(model, trainer.weights())
        return history

    def _epoch_rows(self, epoch_data: EpochData, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Call ``epoch_data(epoch)`` and check what it gave; return (X, one-hot y)."""
        got = epoch_data(epoch)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise UsageError(
                f"epoch_data({epoch}) must return a pair (X, y); got {type(got).__name__}."
            )
        X_e = check_array(got[0], dtype=self._dtype, ensure_2d=True, ensure_all_finite=True)
        self._check_n_features(X_e, reset=False)
        codes = self._codes_of(got[1], f"epoch_data({epoch}) labels")
        if len(codes) != X_e.shape[0]:
            raise ValueError(
                f"epoch_data({epoch}) gave {X_e.shape[0]} rows of X but {len(codes)} labels; "
                "return the labels of exactly those rows."
            )
        return X_e, self._one_hot(codes)

    @staticmethod
    def _epoch_row(epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        def num(key: str) -> float | None:
            value = logs.get(key)
            return None if value is None else float(value)

        return {
            "epoch": epoch + 1,
            "loss": num("loss"),
            "accuracy": num("accuracy"),
            "val_loss": num("val_loss"),
            "val_accuracy": num("val_accuracy"),
        }

    # --------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax probabilities with dropout off and BatchNorm in inference mode."""
        X = self._validate_X(X, reset=False)
        check_is_fitted(self, "model_")
        out = [
            np.asarray(self.model_(X[i : i + _PREDICT_CHUNK], training=False))
            for i in range(0, X.shape[0], _PREDICT_CHUNK)
        ]
        return np.concatenate(out).astype(np.float64)

    # ------------------------------------------------------------ persistence
    def _restore(self, model: Any, classes: np.ndarray, history: list[dict[str, Any]]) -> "PaperHead":
        """Set the learned state from a loaded Keras model (used by ``load_head``)."""
        n_features = int(model.inputs[0].shape[-1])
        n_out = int(model.outputs[0].shape[-1])
        if n_out != len(classes):
            raise UsageError(
                f"The saved Keras head has {n_out} outputs but {len(classes)} classes were recorded "
                f"({classes.tolist()!r}); the record and the model file do not belong together."
            )
        self.model_ = model
        self.classes_ = classes
        self.n_features_in_ = n_features
        self.history_ = list(history)
        return self

