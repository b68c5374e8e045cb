"""Callbacks: hooks into `fit`, Keras-style (History, EarlyStopping, progress output)."""

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint
from .errors import ConfigError, MpinnError, StorageError, choose
from .saving import model_job_text


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
    """`history[metric]` is the list of per-epoch values; `epoch` the epochs run. A metric
    that first appears in a later epoch (e.g. added when a run resumed) starts with NaN for
    the epochs before, so that every list lines up with `epoch`."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, [math.nan] * (len(self.epoch) - 1)).append(value)


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


class _EpochClock(Callback):
    """Times each epoch's training steps (validation excluded) for throughput figures."""

    def __init__(self, samples: int):
        self.samples = samples

    def on_epoch_begin(self, epoch, logs=None):
        self.started = self.trained = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.trained = time.perf_counter()

    def training_seconds(self) -> float:
        return max(self.trained - self.started, 1e-9)

    def samples_per_second(self) -> float:
        return self.samples / self.training_seconds()


class ProgressLogger(_EpochClock):
    """Progress of each epoch. mode "bar": a live bar (steps, loss, metrics, samples/s,
    ETA); "lines": one line per epoch; "auto": the bar on a terminal, lines otherwise."""

    def __init__(self, mode: str, epochs: int, samples: int, batch_size: int, stream=None,
                 steps: "int | None" = None):
        choose("progress mode", mode, ("auto", "bar", "lines"))
        super().__init__(samples)
        self.epochs, self.batch_size = epochs, batch_size
        self.steps = steps or -(-samples // batch_size)
        self.stream = stream or sys.stdout
        # Open MPI hands every rank a terminal, whatever mpirun's own output is
        forwarded = "OMPI_COMM_WORLD_SIZE" in os.environ
        self.live = mode == "bar" or (mode == "auto" and self.stream.isatty() and not forwarded)

    redraw_seconds = 0.1  # a fast model must not flood the terminal

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch)
        self.epoch, self.drawn = epoch, 0.0

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch)
        if not self.live or self.trained - self.drawn < self.redraw_seconds:
            return
        self.drawn = self.trained
        done = batch + 1
        elapsed = self.training_seconds()
        rate = self.samples * done / self.steps / elapsed
        eta = elapsed * (self.steps - done) / done
        bar = ("=" * (24 * done // self.steps)).ljust(24, ".")
        self.stream.write(f"\rEpoch {self.epoch + 1}/{self.epochs} {done}/{self.steps} [{bar}] "
                          f"{format_logs(logs or {})} - {rate:,.0f} samples/s - ETA {eta:.0f}s")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        line = (f"Epoch {epoch + 1}/{self.epochs} - {self.training_seconds():.2f}s - "
                f"{format_logs(logs or {})} - {self.samples_per_second():,.0f} samples/s")
        self.stream.write(("\r\033[K" if self.live else "") + line + "\n")
        self.stream.flush()


class MetricsLog(_EpochClock):
    """Appends one JSON line per epoch (the logs, time and throughput, `fields`, what
    each of `extras()` returns, then the UTC time and, when given, the run's id) to
    `path`. NaN and Inf are written as null: every line is valid JSON."""

    def __init__(self, path, samples: int, extras=(), run_id: "str | None" = None,
                 **fields):
        super().__init__(samples)
        self.path, self.fields, self.extras = Path(path), fields, list(extras)
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **(logs or {}),
                  "seconds": round(self.training_seconds(), 4),
                  "samples_per_second": round(self.samples_per_second(), 1), **self.fields}
        for extra in self.extras:
            record.update(extra())
        self.append(record)

    def append(self, record: dict) -> None:
        """One line: `record`, then the UTC time and the run's id."""
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if self.run_id is not None:
            record["run"] = self.run_id
        try:
            with self.path.open("a") as file:
                file.write(json_line(record))
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc


def json_line(record: dict) -> str:
    """`record` as one line of strict JSON, with null for NaN and Inf."""
    finite = {key: None if isinstance(value, float) and not math.isfinite(value) else value
              for key, value in record.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


def due_mid_epoch(model, batch: int, every_steps: int, steps_per_epoch: int) -> bool:
    """Whether a checkpoint is due after `batch` of an epoch (not its last batch: the
    epoch's end has its own) with one every `every_steps` optimizer steps."""
    return bool(every_steps and model.optimizer.iterations % every_steps == 0
                and batch + 1 < steps_per_epoch)


class GatherStrategyState(Callback):
    """On every rank, before rank 0's ModelCheckpoint writes mid-epoch: the strategy
    gathers every rank's own state for that checkpoint (Strategy.gather_state)."""

    def __init__(self, strategy, every_steps: int, steps_per_epoch: int):
        self.strategy, self.every_steps = strategy, every_steps
        self.steps_per_epoch = steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        if due_mid_epoch(self.model, batch, self.every_steps, self.steps_per_epoch):
            self.strategy.gather_state(self.model)


class ModelCheckpoint(Callback):
    """Writes a checkpoint every `every_epochs` epochs and/or `every_steps` optimizer
    steps, and at the end of training; keeps the newest `keep` (rank 0 only).

    A write that fails (a full disk, non-finite parameters) raises, or, with `on_error`,
    is handed to it (so that every rank can stop together); the previous checkpoint
    stays. No checkpoint is written after a step or epoch whose loss is NaN or Inf.
    `last` is the newest checkpoint written, at first the one the run resumed from.
    `attrs` (config, world_size, strategy, run_id) go to `checkpoint.save`, with the
    strategy's own tensors from `strategy_state(model)` (Strategy.checkpoint_state)."""

    def __init__(self, directory, every_epochs: int = 1, every_steps: int = 0,
                 keep: int = 3, steps_per_epoch: int = 0, on_error=None, last=None,
                 strategy_state=None, **attrs):
        self.directory = Path(directory)
        self.every_epochs, self.every_steps, self.keep = every_epochs, every_steps, keep
        self.steps_per_epoch, self.attrs = steps_per_epoch, attrs
        self.on_error = on_error
        self.strategy_state = strategy_state or (lambda model: {})
        self.written = None  # optimizer step of the last checkpoint
        self.epoch = 0
        self.last: Path | None = last

    def on_train_begin(self, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_strays(self.directory)  # temporary files of a crash
        self.written = self.model.optimizer.iterations  # nothing new to save yet

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (due_mid_epoch(self.model, batch, self.every_steps, self.steps_per_epoch)
                and math.isfinite(logs["loss"] if logs is not None else 0.0)):
            self.write(self.epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        diverged = any(key.endswith("loss") and not math.isfinite(value)
                       for key, value in (logs or {}).items())
        if self.every_epochs and (epoch + 1) % self.every_epochs == 0 and not diverged:
            self.write(epoch + 1, 0)

    def on_train_end(self, logs=None):
        if self.written != self.model.optimizer.iterations:
            self.write(self.epoch + 1, 0)

    def write(self, epoch: int, step: int) -> None:
        """A checkpoint at `step` steps into `epoch` (with the history of the epochs
        before it)."""
        iterations = self.model.optimizer.iterations
        history = {key: values[:epoch] for key, values in self.model.history.history.items()}
        path = checkpoint.checkpoint_path(self.directory, iterations)
        attrs = self.attrs if "config" in self.attrs else {
            **self.attrs, "config": model_job_text(self.model)}  # so load_model can rebuild it
        try:
            checkpoint.save(path, self.model, epoch=epoch, step=step, history=history,
                            strategy_state=self.strategy_state(self.model), **attrs)
            self.written, self.last = iterations, path
            try:
                checkpoint.prune(self.directory, self.keep, written=path)
            except OSError as exc:
                raise StorageError(f"cannot remove old checkpoints in {self.directory}: "
                                   f"{exc.strerror}") from exc
        except MpinnError as error:
            if self.on_error is None:
                raise
            self.on_error(error)
