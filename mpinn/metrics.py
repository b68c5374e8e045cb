"""Metrics as per-batch sums, so that epoch means are exact whatever the batch sizes
(and can be summed across processes before dividing)."""

import numpy as np

from . import inputs
from .errors import choose


class Metric:
    name: str

    def batch_sum(self, y_true, y_pred):
        """Sum of the per-sample metric over the batch, as a 0-d array of the batch's
        backend: `fit` adds these up on the device and reads the total once."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred) -> float:
        """The batch mean (Keras-style `metric(y_true, y_pred)`)."""
        y_pred = inputs.array(y_pred)
        return float(self.batch_sum(inputs.array(y_true), y_pred)) / len(y_pred)

    def __repr__(self) -> str:
        return self.name


class BinaryAccuracy(Metric):
    name = "accuracy"

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def batch_sum(self, y_true, y_pred):
        hits = (y_pred > self.threshold) == (y_true > 0.5)
        return hits.mean(axis=-1).sum()


class CategoricalAccuracy(Metric):
    name = "accuracy"

    def batch_sum(self, y_true, y_pred):
        return (y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)).sum()


class SparseCategoricalAccuracy(Metric):
    name = "accuracy"

    def batch_sum(self, y_true, y_pred):
        return (y_pred.argmax(axis=-1) == y_true.reshape(-1)).sum()


class MeanSquaredError(Metric):
    name = "mse"

    def batch_sum(self, y_true, y_pred):
        return ((y_pred - y_true) ** 2).mean(axis=-1).sum()


class MeanAbsoluteError(Metric):
    name = "mae"

    def batch_sum(self, y_true, y_pred):
        return np.abs(y_pred - y_true).mean(axis=-1).sum()


METRICS = ("accuracy", "acc", "mse", "mae")


def get(metric, loss, output_activation: str, output_units: int) -> Metric:
    """A Metric from a name or an instance. "accuracy" becomes binary, categorical or
    sparse categorical accuracy by the loss, as in Keras."""
    if isinstance(metric, Metric):
        return metric
    choose("metric", metric, METRICS)
    if metric == "mse":
        return MeanSquaredError()
    if metric == "mae":
        return MeanAbsoluteError()
    if loss.sparse:
        return SparseCategoricalAccuracy()
    if loss.name == "binary_crossentropy" or (
        loss.name != "categorical_crossentropy" and output_units == 1
    ):
        logits = loss.from_logits and output_activation == "linear"
        return BinaryAccuracy(threshold=0.0 if logits else 0.5)
    return CategoricalAccuracy()
