"""Callbacks: hooks into `fit`, Keras-style (History, EarlyStopping, progress output)."""

import sys
import time

import numpy as np

from .errors import ConfigError, choose


class Callback:
    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...


class History(Callback):
    """`history[metric]` is the list of per-epoch values; `epoch` the epochs run."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs
    (as in Keras, patience 0 and 1 both stop at the first epoch without improvement)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False):
        choose("EarlyStopping mode", mode, ("auto", "min", "max"))
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.mode = monitor, mode
        self.min_delta, self.patience = abs(min_delta), patience
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, logs=None):
        self.best = np.inf if self.mode == "min" else -np.inf
        self.wait = 0
        self.best_weights = None
        self.stopped_epoch = None

    def _improved(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ConfigError(
                f"EarlyStopping: monitor={self.monitor!r} is not among the logged values: "
                f"{', '.join(sorted(logs))}"
            )
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def format_logs(logs: dict) -> str:
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


class ProgressLogger(Callback):
    """verbose=1: a progress bar per epoch (one line at its end when not on a terminal);
    verbose=2: one line per epoch."""

    def __init__(self, verbose: int, epochs: int, steps: int, stream=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and self.stream.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        if self.verbose == 1:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")

    def on_train_batch_end(self, batch, logs=None):
        if self.live:
            done = batch + 1
            bar = ("=" * (30 * done // self.steps)).ljust(30, ".")
            self.stream.write(f"\r{done}/{self.steps} [{bar}] - {format_logs(logs or {})}")
            self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        line = f"{seconds:.1f}s - {format_logs(logs or {})}"
        if self.verbose == 1:
            prefix = "\r" if self.live else ""
            self.stream.write(f"{prefix}{self.steps}/{self.steps} - {line}\n")
        else:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs} - {line}\n")
        self.stream.flush()
