"""Losses: the batch mean of a per-sample loss, and its gradient.

The cross-entropies also work from logits. When a model ends in the activation a
cross-entropy pairs with (softmax, or sigmoid for the binary one), the model hands them
the logits and they return the gradient with respect to the logits, `(p - y) / n`: exact,
cheaper than going through the activation's Jacobian, and free of log(0).
"""

import numpy as np

from . import inputs
from .errors import choose

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON], as in Keras


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_sigmoid(z):
    """log(sigmoid(z)), stable for large |z|."""
    return np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))


class Loss:
    name: str
    # the output activation this loss fuses with, when given probabilities
    fused_activation: "str | None" = None
    sparse = False  # labels are class indices, not arrays shaped like the output

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def value_and_grad(self, y_true, y_pred, grad_out):
        """Mean loss over the batch; writes dL/d(y_pred) into `grad_out`."""
        raise NotImplementedError

    def logits_value_and_grad(self, y_true, logits, probs, grad_out):
        """Mean loss of `logits`; writes dL/d(logits) into `grad_out`.
        `probs` is the fused activation of `logits`, already computed."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred) -> float:
        """The mean loss of a batch (Keras-style `loss(y_true, y_pred)`)."""
        y_pred = inputs.features(y_pred, None, "y_pred").astype(np.float64, order="C")
        y_true = inputs.targets(y_true, self, y_pred.shape[1], "(y_pred's width)",
                                len(y_pred), "y_true", "y_pred")
        if not self.sparse:
            y_true = y_true.astype(np.float64)
        return self.value_and_grad(y_true, y_pred, np.empty_like(y_pred))

    def __repr__(self) -> str:
        return self.name


class MeanSquaredError(Loss):
    name = "mse"

    def value_and_grad(self, y_true, y_pred, grad_out):
        np.subtract(y_pred, y_true, out=grad_out)
        value = float(np.vdot(grad_out, grad_out)) / grad_out.size
        grad_out *= 2 / grad_out.size
        return value


class MeanAbsoluteError(Loss):
    name = "mae"

    def value_and_grad(self, y_true, y_pred, grad_out):
        np.subtract(y_pred, y_true, out=grad_out)
        value = float(np.abs(grad_out).sum()) / grad_out.size
        np.sign(grad_out, out=grad_out)
        grad_out /= grad_out.size
        return value


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    fused_activation = "sigmoid"

    def value_and_grad(self, y_true, y_pred, grad_out):
        if self.from_logits:
            probs = np.exp(_log_sigmoid(y_pred))
            return self.logits_value_and_grad(y_true, y_pred, probs, grad_out)
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        value = -float((y_true * np.log(p) + (1 - y_true) * np.log(1 - p)).sum()) / p.size
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        np.multiply((p - y_true) / (p * (1 - p) * p.size), inside, out=grad_out)
        return value

    def logits_value_and_grad(self, y_true, logits, probs, grad_out):
        per_item = y_true * _log_sigmoid(logits) + (1 - y_true) * _log_sigmoid(-logits)
        value = -float(per_item.sum()) / logits.size
        np.subtract(probs, y_true, out=grad_out)
        grad_out /= logits.size
        return value


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    fused_activation = "softmax"

    def value_and_grad(self, y_true, y_pred, grad_out):
        n = len(y_pred)
        if self.from_logits:
            log_probs = _log_softmax(y_pred)
            return self._from_log_probs(y_true, log_probs, np.exp(log_probs), grad_out)
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        value = -float((self._dense(y_true, p) * np.log(p)).sum()) / n
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        np.multiply(-self._dense(y_true, p) / (p * n), inside, out=grad_out)
        return value

    def logits_value_and_grad(self, y_true, logits, probs, grad_out):
        return self._from_log_probs(y_true, _log_softmax(logits), probs, grad_out)

    def _from_log_probs(self, y_true, log_probs, probs, grad_out):
        n = len(log_probs)
        value = -float((y_true * log_probs).sum()) / n
        # d/dz of -sum(y * log_softmax(z)) is p * sum(y) - y; sum(y) is 1 for one-hot rows
        np.multiply(probs, y_true.sum(axis=-1, keepdims=True), out=grad_out)
        grad_out -= y_true
        grad_out /= n
        return value

    def _dense(self, y_true, like):
        return y_true


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class labels of shape (n,)."""

    name = "sparse_categorical_crossentropy"
    sparse = True

    # the training step's hot path: a few calls on (batch, classes) arrays, so it works
    # on the flat positions of the labels instead of (row, label) pairs
    def logits_value_and_grad(self, y_true, logits, probs, grad_out):
        at_labels = _label_positions(y_true, probs.shape)
        picked = probs.reshape(-1).take(at_labels)  # reshape copies if not contiguous
        with np.errstate(divide="ignore"):
            value = _labels_loss_and_grad(np.log(picked), at_labels, probs, grad_out)
        if value == np.inf:  # a label's probability underflowed to 0: its log from the logits
            value = -float(_log_softmax(logits).reshape(-1).take(at_labels).sum()) / len(probs)
        return value

    def _from_log_probs(self, y_true, log_probs, probs, grad_out):
        at_labels = _label_positions(y_true, probs.shape)
        picked = log_probs.reshape(-1).take(at_labels)
        return _labels_loss_and_grad(picked, at_labels, probs, grad_out)

    def _dense(self, y_true, like):
        one_hot = np.zeros_like(like)
        one_hot[np.arange(len(like), like=like), y_true.reshape(-1)] = 1
        return one_hot


def _label_positions(labels, shape):
    """Where each row's label sits in the flattened (rows, classes) array."""
    rows, classes = shape
    return np.arange(0, rows * classes, classes, like=labels) + labels.reshape(-1)


def _labels_loss_and_grad(log_picked, at_labels, probs, grad_out):
    """The mean of -log p(label); writes (p - onehot) / n into the contiguous `grad_out`."""
    n = len(probs)
    np.multiply(probs, 1 / n, out=grad_out)
    grad_out.reshape(-1)[at_labels] -= 1 / n
    return -float(log_picked.sum()) / n


LOSSES = {
    cls.name: cls
    for cls in (
        MeanSquaredError,
        MeanAbsoluteError,
        BinaryCrossentropy,
        CategoricalCrossentropy,
        SparseCategoricalCrossentropy,
    )
}
ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}


def get(loss) -> Loss:
    """A Loss from a name or an instance."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a Loss, got {loss!r}")
    loss = ALIASES.get(loss, loss)
    choose("loss", loss, LOSSES)
    return LOSSES[loss]()
