"""The one wiring point: a validated Job -> backend, data, model, strategy -> training.

Everything that can fail on bad input (data files, layer arguments, plugin names) is done
in `prepare`, before the first collective, so that a bad job ends every rank with the
same one-line message instead of leaving some of them waiting in an Allreduce.
"""

import inspect
import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint, optim, plugins
from .backend import get_backend
from .callbacks import Callback, History, MetricsLog, ModelCheckpoint, ProgressLogger
from .config import Job, load_job
from .data import train_test_split
from .dist.comm import Comm, world
from .errors import ConfigError, MpinnError
from .layers import Activation, Dense, Dropout
from .model import Sequential
from .optim import schedules
from .stopping import StopAtStepBoundary, Stopped, StopRequests

LAYER_TYPES = {layer.kind: layer for layer in (Dense, Dropout, Activation)}
FAILURE_VARIABLE = "MPINN_FAIL_AT"  # "rank:step": raise there, to test failure handling


@dataclass
class Prepared:
    job: Job
    model: Sequential
    strategy: object
    train: tuple
    validation: "tuple | None"
    run_directory: Path
    resumed: "checkpoint.Checkpoint | None" = None

    @property
    def checkpoint_directory(self) -> Path:
        return Path(self.job["checkpoint.directory"] or self.run_directory)


def _keyword_names(target) -> list[str]:
    """Keyword arguments `target` accepts, following **kwargs up a class's bases."""
    names = []
    for owner in (target.__mro__ if inspect.isclass(target) else [target]):
        function = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        parameters = inspect.signature(function).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _call_checked(where: str, target, kwargs: dict, fixed: "dict | None" = None):
    """target(**fixed, **kwargs), with unknown keys and bad values named by `where`;
    `fixed` are arguments the job does not set."""
    fixed = fixed or {}
    allowed = [name for name in _keyword_names(target) if name not in fixed]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]}; allowed: "
                          f"{', '.join(allowed) or 'none'}")
    try:
        return target(**fixed, **kwargs)
    except MpinnError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_backend(job: Job, comm: Comm):
    """The job's backend, on the device that this rank's place on its node gives it."""
    name = job["model.backend"]
    try:
        backend = get_backend(name)
        backend.select_device(comm.local_rank)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: model.backend = {name!r}: {exc}") from exc
    return backend


def build_model(job: Job) -> Sequential:
    layers = []
    for index, spec in enumerate(job["model.layers"]):
        options = dict(spec)
        kind = options.pop("type")
        where = f"{job.source}: model.layers[{index}]"
        if kind not in LAYER_TYPES:
            raise ConfigError(f"{where}: unknown layer type {kind!r}; allowed: "
                              f"{', '.join(LAYER_TYPES)}")
        layers.append(_call_checked(where, LAYER_TYPES[kind], options))
    model = _call_checked(f"{job.source}: [model]", Sequential, {
        "layers": layers, "seed": job["run.seed"], "dtype": job["model.dtype"],
        "backend": job["model.backend"]})
    if job["training.loss"]:
        model.compile(optimizer=build_optimizer(job), loss=job["training.loss"],
                      metrics=job["training.metrics"])
    return model


def build_optimizer(job: Job) -> optim.Optimizer:
    name = job["optimizer.name"]
    if name not in optim.OPTIMIZERS:
        raise ConfigError(f"{job.source}: optimizer.name = {name!r} is not allowed; allowed: "
                          f"{', '.join(optim.OPTIMIZERS)}")
    learning_rate = job["optimizer.learning_rate"]
    schedule = dict(job["optimizer.schedule"])
    if schedule:
        where = f"{job.source}: optimizer.schedule"
        warmup = schedule.pop("warmup_steps", None)
        kind = schedule.pop("name", None)
        if kind is not None:
            if kind not in schedules.SCHEDULES:
                raise ConfigError(f"{where}.name = {kind!r} is not allowed; allowed: "
                                  f"{', '.join(schedules.SCHEDULES)}")
            learning_rate = _call_checked(where, schedules.SCHEDULES[kind],
                                          {"initial_learning_rate": learning_rate, **schedule})
        elif schedule:
            raise ConfigError(f"{where}: needs a name to go with {', '.join(schedule)}")
        if warmup is not None:
            learning_rate = _call_checked(where, schedules.LinearWarmup,
                                          {"schedule": learning_rate, "warmup_steps": warmup})
    return _call_checked(f"{job.source}: [optimizer]", optim.OPTIMIZERS[name],
                         {"learning_rate": learning_rate, **job.extras("optimizer")})


def load_data(job: Job):
    """(x, y) for training and validation: a hold-out drawn with the run's seed."""
    name = job["data.dataset"]
    try:
        loader = plugins.load(plugins.DATASETS, name)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: data.dataset: {exc}") from exc
    x, y = _call_checked(f"{job.source}: [data] (dataset {name!r})", loader,
                         job.extras("data"))
    split = job["data.validation_split"]
    if not split:
        return (x, y), None
    x_train, x_val, y_train, y_val = train_test_split(x, y, split, seed=job["run.seed"])
    return (x_train, y_train), (x_val, y_val)


def load_strategy(job: Job, comm: Comm):
    name = job["strategy.name"]
    try:
        strategy_class = plugins.load(plugins.STRATEGIES, name)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: strategy.name: {exc}") from exc
    return _call_checked(f"{job.source}: [strategy] ({name!r})", strategy_class,
                         job.extras("strategy"), fixed={"comm": comm})


def prepare(job: Job, comm: Comm, resume: "str | None" = None) -> Prepared:
    """Build everything a run needs; no collective communication happens here.
    `resume`: a checkpoint file, or "auto" for the newest valid one of the run (if any)."""
    if not job["training.loss"]:
        raise ConfigError(f"{job.source}: training.loss is required")
    load_backend(job, comm)
    train, validation = load_data(job)
    model = build_model(job)
    strategy = load_strategy(job, comm)
    # checked against the model on every rank, and kept in the model's dtype and memory
    train = model._checked(*train)
    if validation is not None:
        validation = model._checked(*validation, "x_val", "y_val")
    directory = Path(job["run.directory"].format(name=job["run.name"]))
    prepared = Prepared(job, model, strategy, train, validation, directory)
    if strategy.name == "ps" and job["checkpoint.every_steps"]:
        raise ConfigError(f"{job.source}: checkpoint.every_steps needs strategy 'allreduce'; "
                          "'ps' checkpoints at epoch ends (checkpoint.every_epochs)")
    if resume == "auto":
        prepared.resumed = checkpoint.latest_valid(prepared.checkpoint_directory)
    elif resume:
        prepared.resumed = checkpoint.read(resume)
    if prepared.resumed is not None:
        checkpoint.restore(model, prepared.resumed)
    return prepared


def train(prepared: Prepared, progress: str = "auto", requests: "StopRequests | None" = None):
    """Train the prepared run; only rank 0 prints and writes files. Returns the History.
    When the ranks stop on a signal (`requests`), rank 0 checkpoints, then Stopped rises."""
    job, model, strategy = prepared.job, prepared.model, prepared.strategy
    history = History()
    epoch = step = 0
    if prepared.resumed is not None:
        history.history = {k: list(v) for k, v in prepared.resumed.history.items()}
        history.epoch = list(range(len(next(iter(history.history.values()), []))))
        epoch, step = prepared.resumed.data["epoch"], prepared.resumed.data["step"]
    hooks = [history]
    failure = os.environ.get(FAILURE_VARIABLE)
    if failure:
        hooks.append(InjectedFailure(strategy.rank, failure))
    batch_size, epochs = job["training.batch_size"], job["training.epochs"]
    saver = None
    if strategy.rank == 0:
        prepared.run_directory.mkdir(parents=True, exist_ok=True)
        samples = len(prepared.train[0])
        hooks.append(MetricsLog(prepared.run_directory / job["logging.metrics_log"], samples,
                                world_size=strategy.size))
        steps = strategy.progress_steps(-(-samples // batch_size))
        if progress != "none":
            hooks.append(ProgressLogger(progress, epochs, samples, batch_size, steps=steps))
        saver = ModelCheckpoint(
            prepared.checkpoint_directory, job["checkpoint.every_epochs"],
            job["checkpoint.every_steps"], job["checkpoint.keep"], steps_per_epoch=steps,
            config=job.text, world_size=strategy.size, strategy=strategy.name)
        hooks.append(saver)
    if requests is not None:  # last: an epoch's records are written before a stop
        hooks.append(StopAtStepBoundary(requests, strategy.comm, strategy.lockstep))
    try:
        return model.fit(*prepared.train, batch_size=batch_size, epochs=epochs, verbose=0,
                         callbacks=hooks, validation_data=prepared.validation,
                         shuffle=job["training.shuffle"], initial_epoch=epoch,
                         initial_step=step, strategy=strategy)
    except Stopped as stop:
        if saver is not None and saver.written != model.optimizer.iterations:
            saver.write(stop.epoch, stop.step)
        raise


class InjectedFailure(Callback):
    """Raises on one rank at one step, for the tests of failure handling."""

    def __init__(self, rank: int, spec: str):
        fail_rank, _, fail_step = spec.partition(":")
        self.armed = int(fail_rank) == rank
        self.step = int(fail_step or 0)
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.armed and self.seen == self.step:
            raise RuntimeError(f"injected failure ({FAILURE_VARIABLE}) at step {self.step}")
        self.seen += 1


def describe(model: Sequential) -> str:
    """One line: layer widths and parameter count."""
    widths = [str(layer.output_dim) for layer in model.layers if layer.values]
    return (f"a {'-'.join(widths)} MLP on {model.input_dim} inputs, "
            f"{model.count_params():,} parameters ({np.dtype(model.dtype)})")


def run_job(path, overrides=(), quiet: bool = False, resume: "str | None" = None) -> int:
    """The whole of `mpinn train`, on every rank; returns the exit code.

    Bad input: every rank exits 2 with one line, decided before any training collective.
    Any other exception: that rank prints its traceback and aborts the whole job, since
    mpirun would otherwise leave the other ranks waiting forever in a collective.
    """
    comm, prepared, error = None, None, None
    try:
        comm = world()
        job = load_job(path, overrides)
        prepared = prepare(job, comm, resume)
    except MpinnError as exc:
        error = exc
    if comm is None:
        return _fail(f"mpinn: error: {error}", code=2)
    tag = f"[rank {comm.rank}/{comm.size} {socket.gethostname()}] " if comm.size > 1 else ""
    if comm.any(error is not None):
        reason = error or "another rank could not set up the job (see its message)"
        return _fail(f"{tag}mpinn: error: {reason}", code=2)
    progress = "none" if quiet else prepared.job["logging.progress"]
    if comm.rank == 0 and not quiet and resume:
        found = prepared.resumed
        print(f"resuming {found.path} (epoch {found.data['epoch']}, step {found.data['step']})"
              if found else "no checkpoint to resume: starting afresh")
    requests = StopRequests()
    requests.install()
    try:
        history = train(prepared, progress, requests)
    except Stopped as stop:
        if comm.rank == 0:
            print(f"mpinn: {stop}; checkpoint written in {prepared.checkpoint_directory}, "
                  "continue with --resume auto", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{tag}mpinn: interrupted\n")
        if comm.size > 1:
            comm.abort(130)
        return 130
    except Exception:  # noqa: BLE001 - any failure must end every rank, not hang them
        lines = traceback.format_exc().rstrip().splitlines()
        sys.stderr.write("".join(f"{tag}{line}\n" for line in lines))
        sys.stderr.flush()
        if comm.size > 1:
            comm.abort(1)
        return 1
    if comm.rank == 0:
        checkpoint.save(prepared.run_directory / "final.h5", prepared.model,
                        epoch=len(history.epoch), history=history.history,
                        config=prepared.job.text, world_size=comm.size,
                        strategy=prepared.strategy.name)
        report = prepared.strategy.report()
        if report:
            log = prepared.run_directory / prepared.job["logging.metrics_log"]
            with log.open("a") as file:
                file.write(json.dumps({"strategy": prepared.strategy.name, **report}) + "\n")
            if not quiet:
                print(f"{prepared.strategy.name}: " + ", ".join(f"{k}={v}" for k, v in
                                                               report.items()))
    if comm.rank == 0 and not quiet:
        final = history.history
        figures = " - ".join(f"{key}: {values[-1]:.4f}" for key, values in final.items())
        print(f"trained {describe(prepared.model)} on {comm.size} rank(s): {figures}")
        print(f"model: {prepared.run_directory / 'final.h5'}, metrics log: "
              f"{prepared.run_directory / prepared.job['logging.metrics_log']}")
    return 0


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code
