"""The one wiring point: a validated Job -> backend, data, model, strategy -> training.

Everything that can fail on bad input (data files, layer arguments, plugin names) is done
in `prepare`, before the first collective, so that a bad job ends every rank with the
same one-line message instead of leaving some of them waiting in an Allreduce.
"""

import inspect
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, optim, plugins
from .agreement import SetupFailed, agree, fingerprint
from .backend import get_backend
from .callbacks import Callback, History, MetricsLog, ModelCheckpoint, ProgressLogger, json_line
from .config import Job, load_job
from .data import train_test_split
from .dist.comm import Comm, world
from .dist.watchdog import StalledStop
from .errors import ConfigError, DataError, MpinnError, StorageError
from .layers import Activation, Dense, Dropout
from .model import Sequential
from .optim import schedules
from .rundir import RunLock, probe_writable
from .stopping import Diverged, Failed, StopAtStepBoundary, Stopped, StopRequests
from .stragglers import StragglerReport

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
    locks: list[RunLock] = field(default_factory=list)  # rank 0's, on its directories
    saver: "ModelCheckpoint | None" = None  # rank 0's, once training starts

    @property
    def checkpoint_directory(self) -> Path:
        return Path(self.job["checkpoint.directory"] or self.run_directory)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


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
    arguments = job.extras("data")
    where = f"{job.source}: [data] (dataset {name!r})"
    x, y = _call_checked(where, loader, arguments)
    if len(x) != len(y):
        given = "".join(f", {key}={value!r}" for key, value in arguments.items())
        raise DataError(f"{job.source}: [data] (dataset {name!r}{given}): x has {len(x)} "
                        f"samples but y has {len(y)}")
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


def check_memory(job: Job, model: Sequential, input_dim: int, comm: Comm) -> None:
    """Refuse a model whose parameters, gradients and optimizer state cannot fit in the
    memory this rank may use (its node's share), before anything is allocated."""
    available = model.backend.memory_available()
    if available is None:
        return
    count = model.planned_parameters(input_dim)
    state = sum(len(transform.slots) for transform in model.optimizer.transforms)
    needed = count * model.dtype.itemsize * (2 + state)
    sharing = comm.local_size if model.backend.device is None else 1  # host: the node's
    share = available // sharing
    if needed > share:
        ranks = f" for each of its {sharing} ranks" if sharing > 1 else ""
        raise ConfigError(
            f"{job.source}: [model] needs {_bytes(needed)} for {count:,} parameters "
            f"({model.dtype}: values, gradients and {state} optimizer buffers), but this node "
            f"has {_bytes(share)} of memory available{ranks}")


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024


def prepare(job: Job, comm: Comm, resume: "str | None" = None, on_skip=None) -> Prepared:
    """Build everything a run needs; no collective communication happens here. `resume`:
    a checkpoint file, or "auto" for the newest valid one of the run (if any; `on_skip`
    hears of each one passed over). Rank 0 then locks the run's directories."""
    if not job["training.loss"]:
        raise ConfigError(f"{job.source}: training.loss is required")
    InjectedFailure.at_setup(comm.rank)
    load_backend(job, comm)
    train, validation = load_data(job)
    model = build_model(job)
    check_memory(job, model, np.shape(train[0])[-1], comm)
    strategy = load_strategy(job, comm)
    # checked against the model on every rank, and kept in the model's dtype and memory
    train = model._checked(*train)
    if validation is not None:
        validation = model._checked(*validation, "x_val", "y_val")
    model.optimizer.skip_nonfinite = job["training.on_nonfinite"] == "skip"
    directory = Path(job["run.directory"].format(name=job["run.name"]))
    prepared = Prepared(job, model, strategy, train, validation, directory)
    if strategy.name == "ps" and job["checkpoint.every_steps"]:
        raise ConfigError(f"{job.source}: checkpoint.every_steps needs strategy 'allreduce'; "
                          "'ps' checkpoints at epoch ends (checkpoint.every_epochs)")
    if resume == "auto":
        prepared.resumed = checkpoint.latest_valid(prepared.checkpoint_directory, on_skip)
    elif resume:
        prepared.resumed = checkpoint.read(resume)
        prepared.resumed.verify()  # checksums, and NaN or Inf, before anything trains
    if prepared.resumed is not None:
        checkpoint.restore(model, prepared.resumed)
    if comm.rank == 0:
        comm.before_abort.append(prepared.release)
        try:
            for path in dict.fromkeys([directory.resolve(),
                                       prepared.checkpoint_directory.resolve()]):
                prepared.locks.append(RunLock(path).acquire())
            log = directory / job["logging.metrics_log"]
            try:
                probe_writable(log)
            except OSError as exc:
                raise StorageError(f"{job.source}: logging.metrics_log: cannot write {log}: "
                                   f"{exc.strerror}") from exc
        except MpinnError:
            prepared.release()
            raise
    return prepared


def train(prepared: Prepared, progress: str = "auto", requests: "StopRequests | None" = None):
    """Train the prepared run; only rank 0 prints and writes files. Returns the History.
    Stopped, Diverged or Failed rises on every rank when the ranks agree to stop
    (`requests`); on a signal rank 0 has checkpointed first."""
    job, model, strategy = prepared.job, prepared.model, prepared.strategy
    requests = requests or StopRequests()
    history = History()
    epoch = step = 0
    if prepared.resumed is not None:
        history.history = {k: list(v) for k, v in prepared.resumed.history.items()}
        history.epoch = list(range(max(map(len, history.history.values()), default=0)))
        epoch, step = prepared.resumed.data["epoch"], prepared.resumed.data["step"]
    hooks = [history]
    failure = os.environ.get(FAILURE_VARIABLE)
    if failure:
        hooks.append(InjectedFailure(strategy.rank, failure))
    extras = []
    if strategy.size > 1 and strategy.comm.watched:
        stragglers = StragglerReport(strategy.comm)
        hooks.append(stragglers)
        extras.append(stragglers.figures)
    if model.optimizer.skip_nonfinite:
        extras.append(lambda: {"nonfinite_steps_skipped": model.optimizer.skipped})
    batch_size, epochs = job["training.batch_size"], job["training.epochs"]
    samples = len(prepared.train[0])
    steps = -(-samples // batch_size)
    if strategy.rank == 0:
        hooks.append(MetricsLog(prepared.run_directory / job["logging.metrics_log"], samples,
                                extras, world_size=strategy.size))
        ticks = strategy.progress_steps(steps)
        if progress != "none":
            hooks.append(ProgressLogger(progress, epochs, samples, batch_size, steps=ticks))
        prepared.saver = ModelCheckpoint(
            prepared.checkpoint_directory, job["checkpoint.every_epochs"],
            job["checkpoint.every_steps"], job["checkpoint.keep"], steps_per_epoch=ticks,
            on_error=requests.fail, last=prepared.resumed and prepared.resumed.path,
            config=job.text, world_size=strategy.size, strategy=strategy.name)
        hooks.append(prepared.saver)
    # last: an epoch's records are written before a stop
    hooks.append(StopAtStepBoundary(requests, strategy.comm, strategy.lockstep, steps,
                                    check_loss=not model.optimizer.skip_nonfinite))
    try:
        with np.errstate(all="ignore"):  # non-finite values are the stop agreement's
            return model.fit(*prepared.train, batch_size=batch_size, epochs=epochs,
                             verbose=0, callbacks=hooks, validation_data=prepared.validation,
                             shuffle=job["training.shuffle"], initial_epoch=epoch,
                             initial_step=step, strategy=strategy)
    except Stopped as stop:
        saver = prepared.saver
        if saver is not None and saver.written != model.optimizer.iterations:
            saver.write(stop.epoch, stop.step)
        raise


class InjectedFailure(Callback):
    """Raises on one rank at one step ("rank:step") or in setup ("rank:setup"), for the
    tests of failure handling."""

    def __init__(self, rank: int, spec: str):
        fail_rank, _, fail_step = spec.partition(":")
        self.armed = int(fail_rank) == rank and fail_step != "setup"
        self.step = int(fail_step or 0) if self.armed else 0
        self.seen = 0

    @staticmethod
    def at_setup(rank: int) -> None:
        if os.environ.get(FAILURE_VARIABLE, "") == f"{rank}:setup":
            raise IndexError(f"injected failure ({FAILURE_VARIABLE}) in setup")

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

    Setup (job, data, model, checkpoint, run directory) ends in one agreement: a failure
    on any rank, or ranks given different jobs, end every rank (exit 2 for bad input, with
    one line; 1 for anything else, with that rank's traceback). In training the ranks stop
    together at step boundaries (signals, divergence, a failed write; see stopping.py);
    the watchdog ends a job whose ranks stall; any other exception prints that rank's
    traceback and aborts the whole job, since mpirun would otherwise leave the other ranks
    waiting forever in a collective. docs/reliability.md lists every exit code.
    """
    requests = StopRequests()
    requests.install()  # a signal during setup is noted, and acted on at the first step
    try:
        comm = world()
    except MpinnError as exc:
        return _fail(f"mpinn: error: {exc}", exc.exit_code)
    tag = f"[rank {comm.rank}/{comm.size} {socket.gethostname()}] " if comm.size > 1 else ""
    prepared, error, found, skipped = None, None, None, []
    try:
        job = load_job(path, overrides)
        comm.watch(job["watchdog.warn_seconds"], job["watchdog.abort_seconds"],
                   requests.pending)
        prepared = prepare(job, comm, resume,
                           on_skip=lambda where, why: skipped.append(f"{where}: {why}"))
        found = fingerprint(prepared, comm)
    except Exception as exc:  # noqa: BLE001 - every setup failure is agreed on
        error = exc
    try:
        agree(comm, error, found, tag)
    except SetupFailed as failed:
        if prepared is not None:
            prepared.release()
        if failed.message:
            _fail(failed.message, 0)
        return failed.exit_code
    except StalledStop as stop:  # on rank 0: a signal while another rank still sets up
        _fail(f"mpinn: {stop}; nothing was trained", 0)
        comm.abort(stop.exit_code)
    try:
        return _run(prepared, comm, quiet, resume, requests, tag, skipped)
    finally:
        prepared.release()


def _run(prepared: Prepared, comm: Comm, quiet, resume, requests, tag, skipped) -> int:
    job, model = prepared.job, prepared.model
    writer = comm.rank == 0
    if writer:
        for line in skipped:
            _fail(f"mpinn: --resume auto skipped {line}", 0)
        for lock in prepared.locks:
            if lock.note:
                _fail(f"mpinn: {lock.note}", 0)
        samples, batch_size = len(prepared.train[0]), job["training.batch_size"]
        if batch_size > samples:
            _fail(f"mpinn: note: training.batch_size = {batch_size} exceeds the {samples} "
                  "training samples: each epoch is one step on all of them", 0)
    found = prepared.resumed
    if writer and not quiet and resume:
        print(f"resuming {found.path} (epoch {found.data['epoch']}, step {found.data['step']})"
              if found else "no checkpoint to resume: starting afresh")
    if found is not None and found.data["epoch"] >= job["training.epochs"]:
        if writer:
            checkpoint.remove_strays(prepared.checkpoint_directory)
            print(f"nothing to train: {found.path} is at epoch {found.data['epoch']} and the "
                  f"job trains {job['training.epochs']} epochs (raise training.epochs to go on)")
        return _finish_trained(prepared, comm, found, quiet)
    progress = "none" if quiet else job["logging.progress"]
    try:
        history = train(prepared, progress, requests)
    except Stopped as stop:
        if requests.error is not None:  # the stop's own checkpoint could not be written
            _fail(f"mpinn: {stop}; {requests.error}; {_last_good(prepared)}", 0)
            comm.abort(requests.error.exit_code)  # the others are leaving with 128 + N
        if writer:
            _fail(f"mpinn: {stop}; checkpoint {prepared.saver.last} written, {_RESUME_HINT}",
                  0)
        return stop.exit_code
    except Diverged as stop:
        if writer:
            _fail(f"mpinn: {stop}; nothing was saved after it; {_last_good(prepared)}; "
                  "lower optimizer.learning_rate, add optimizer.global_clipnorm, or set "
                  'training.on_nonfinite = "skip"', 0)
        return stop.exit_code
    except Failed as stop:
        if stop.error is not None:
            _fail(f"mpinn: {stop}; {_last_good(prepared)}", 0)
        return stop.exit_code
    except StalledStop as stop:  # on rank 0 only: the others wait for it to end the job
        _fail(f"mpinn: {stop}; {_checkpoint_on_stall(prepared, requests)}", 0)
        comm.abort(stop.exit_code)
        return stop.exit_code
    except MpinnError as error:  # on one rank, e.g. a metrics log on a full disk
        _fail(f"{tag}mpinn: {error}", 0)
        comm.abort(error.exit_code)
        return error.exit_code
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
    if writer:
        _save_final(prepared, history.history, len(history.epoch), requests)
        _report_strategy(prepared, requests, quiet)
    code = _end_together(comm, prepared, requests)
    if code:
        return code
    if writer and not quiet:
        final = history.history
        figures = " - ".join(f"{key}: {values[-1]:.4f}" for key, values in final.items())
        print(f"trained {describe(model)} on {comm.size} rank(s): {figures}")
        print(f"model: {prepared.run_directory / 'final.h5'}, metrics log: "
              f"{prepared.run_directory / job['logging.metrics_log']}")
    return 0


_RESUME_HINT = "continue with --resume auto"


def _checkpoint_on_stall(prepared: Prepared, requests: StopRequests) -> str:
    """Rank 0 stopped in a stall: a checkpoint of the last step boundary its parameters
    hold, where there is one (an allreduce run between steps); what happened, in words."""
    saver, model = prepared.saver, prepared.model
    if saver is None or model.position is None:
        return f"no consistent state to checkpoint; {_last_good(prepared)}"
    if saver.written != model.optimizer.iterations:
        saver.write(*model.position)
    if requests.error is not None:
        return f"{requests.error}; {_last_good(prepared)}"
    return f"checkpoint {saver.last} written, {_RESUME_HINT}"


def _failure_code(requests: StopRequests) -> int:
    return requests.error.exit_code if requests.error is not None else 0


def _last_good(prepared: Prepared) -> str:
    saver = prepared.saver
    last = saver.last if saver is not None else None
    return f"the last good checkpoint is {last}" if last else "no checkpoint was written"


def _finish_trained(prepared: Prepared, comm: Comm, found, quiet: bool) -> int:
    """A run resumed at its last epoch: it has nothing to train, but a stop at that very
    boundary may have left no final.h5."""
    requests = StopRequests()
    if comm.rank == 0 and not (prepared.run_directory / "final.h5").exists():
        _save_final(prepared, found.history, found.data["epoch"], requests)
        if requests.error is None and not quiet:
            print(f"model: {prepared.run_directory / 'final.h5'} (from {found.path})")
    return _end_together(comm, prepared, requests)


def _end_together(comm: Comm, prepared: Prepared, requests: StopRequests) -> int:
    """Every rank's exit code: the worst of the ranks' final writes (0 if all went well)."""
    code = np.array([_failure_code(requests)], np.int64)
    try:
        comm.allreduce_max(code)
    except StalledStop as stop:
        _fail(f"mpinn: {stop}; training was complete", 0)
        comm.abort(stop.exit_code)
    if requests.error is not None:
        _fail(f"mpinn: {requests.error}; {_last_good(prepared)}", 0)
    return int(code[0])


def _save_final(prepared: Prepared, history: dict, epochs: int,
                requests: StopRequests) -> None:
    """final.h5 (rank 0), at the end of epoch `epochs`; a failure is noted in `requests`."""
    strategy = prepared.strategy
    try:
        checkpoint.save(prepared.run_directory / "final.h5", prepared.model, epoch=epochs,
                        history=history, config=prepared.job.text, world_size=strategy.size,
                        strategy=strategy.name)
    except MpinnError as error:
        requests.fail(error)


def _report_strategy(prepared: Prepared, requests: StopRequests, quiet: bool) -> None:
    """The strategy's figures for the whole run, in the metrics log (rank 0)."""
    strategy, log = prepared.strategy, prepared.run_directory / prepared.job[
        "logging.metrics_log"]
    report = strategy.report()
    if not report:
        return
    try:
        with log.open("a") as file:
            file.write(json_line({"strategy": strategy.name, **report}))
    except OSError as exc:
        requests.fail(StorageError(f"cannot write {log}: {exc.strerror}"))
    if not quiet:
        print(f"{strategy.name}: " + ", ".join(f"{k}={v}" for k, v in report.items()))


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr, flush=True)
    return code
