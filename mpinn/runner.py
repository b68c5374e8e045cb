"""The one wiring point: a validated Job -> backend, data, model, strategy -> training.

Everything that can fail on bad input (data files, layer arguments, plugin names) is done
in `prepare`, before the first collective, so that a bad job ends every rank with the
same one-line message instead of leaving some of them waiting in an Allreduce.
"""

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint
from .agreement import SetupFailed, agree, fingerprint
from .building import build_model, completed, load_backend, load_data, load_strategy, stored
from .callbacks import (
    Callback,
    GatherStrategyState,
    History,
    MetricsLog,
    ModelCheckpoint,
    ProgressLogger,
)
from .config import Job, differences, load_job
from .dist.comm import Comm, world
from .dist.watchdog import StalledStop
from .errors import ConfigError, MpinnError, StorageError
from .inputs import raw_pixel_note
from .model import Sequential
from .rundir import RunLock, probe_writable
from .runs import earlier_run, move_aside, new_run_id
from .stopping import Diverged, Failed, StopAtStepBoundary, Stopped, StopRequests, place
from .stragglers import StragglerReport
from .threads import ThreadPlan, fit_to_node

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
    log: "MetricsLog | None" = None  # rank 0's, once training starts
    run_id: "str | None" = None  # rank 0's: kept across resumes
    earlier: "str | None" = None  # rank 0's: another run's files, to move aside
    changed: list[str] = field(default_factory=list)  # how the resumed job differed
    threads: "ThreadPlan | None" = None  # this rank's BLAS and OpenMP threads
    pixel_note: "str | None" = None  # inputs that look like raw 0-255 pixels

    @property
    def checkpoint_directory(self) -> Path:
        return Path(self.job["checkpoint.directory"] or self.run_directory)

    @property
    def metrics_log(self) -> Path:
        return self.run_directory / self.job["logging.metrics_log"]

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


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


# what a run trains: a checkpoint of another model, data or loss is another run's
IDENTITY = ("model.layers", "model.dtype", "data", "training.loss")
# what a resume changes as a matter of course (the rest it notes)
ROUTINE = ("training.epochs", "training.on_nonfinite", "run.name", "run.directory",
           "run.threads", "model.backend", "strategy", "checkpoint", "logging", "watchdog")


def prepare(job: Job, comm: Comm, resume: "str | None" = None, on_skip=None,
            start_over: bool = False) -> Prepared:
    """Build everything a run needs; no collective communication happens here. `resume`:
    a checkpoint file, or "auto" for the newest valid one of the same job (if any;
    `on_skip` hears of each one passed over). Rank 0 then locks the run's directories and
    refuses to start afresh over another run's files, unless `start_over` (they are moved
    aside when training starts)."""
    if not job["training.loss"]:
        raise ConfigError(f"{job.source}: training.loss is required")
    InjectedFailure.at_setup(comm.rank)
    load_backend(job, comm)
    train, validation = load_data(job)
    model = build_model(job)
    check_memory(job, model, np.shape(train[0])[-1], comm)
    strategy = load_strategy(job, comm)
    pixel_note = raw_pixel_note(train[0], model, f"{job.source}: data x")  # as loaded
    # checked against the model on every rank, and kept in the model's dtype and memory
    train = model._checked(*train)
    if validation is not None:
        validation = model._checked(*validation, "x_val", "y_val")
    model.optimizer.skip_nonfinite = job["training.on_nonfinite"] == "skip"
    directory = Path(job["run.directory"].format(name=job["run.name"]))
    prepared = Prepared(job, model, strategy, train, validation, directory,
                        pixel_note=pixel_note)
    if strategy.name == "ps" and job["checkpoint.every_steps"]:
        raise ConfigError(f"{job.source}: checkpoint.every_steps needs strategy 'allreduce'; "
                          "'ps' checkpoints at epoch ends (checkpoint.every_epochs)")
    if resume == "auto":
        prepared.resumed = checkpoint.latest_valid(prepared.checkpoint_directory, on_skip)
    elif resume:
        prepared.resumed = checkpoint.read(resume)
        prepared.resumed.verify()  # checksums, and NaN or Inf, before anything trains
    if prepared.resumed is not None:
        prepared.changed = _changes(job, prepared.resumed, resume)
        checkpoint.restore(model, prepared.resumed)
        strategy.restore_state(prepared.resumed, model)
    if comm.rank == 0:
        comm.before_abort.append(prepared.release)
        try:
            for path in dict.fromkeys([directory.resolve(),
                                       prepared.checkpoint_directory.resolve()]):
                prepared.locks.append(RunLock(path).acquire())
            _check_fresh_start(prepared, resume, start_over)
            log = prepared.metrics_log
            try:
                probe_writable(log)
            except OSError as exc:
                raise StorageError(f"{job.source}: logging.metrics_log: cannot write {log}: "
                                   f"{exc.strerror}") from exc
        except BaseException:
            prepared.release()
            raise
    return prepared


def _changes(job: Job, found: "checkpoint.Checkpoint", resume: str) -> list[str]:
    """How `job` differs from the job `found` was trained with, beyond the routine. With
    --resume auto, another model, data or loss means another run's checkpoint: refused.
    A new batch size mid-epoch would replay other samples: refused."""
    if not found.attrs["config"].strip():
        return []
    trained = completed(stored(found))
    other = differences(job, trained, only=IDENTITY)
    if other and resume == "auto":
        more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
        raise ConfigError(f"--resume auto: {found.path} is another run's checkpoint: "
                          f"{other[0]}{more}; resume it with that job, {_elsewhere(job)}, or "
                          "start over with --start-over")
    changed = differences(job, trained, ROUTINE)
    step = found.data["step"]
    if step and job["training.batch_size"] != trained["training.batch_size"]:
        raise ConfigError(f"--resume {resume}: {found.path} stopped {step} steps into epoch "
                          f"{found.data['epoch'] + 1} with training.batch_size = "
                          f"{trained['training.batch_size']}: resume it with that batch size "
                          "(another would replay other samples), or from an epoch's end")
    return changed


def _check_fresh_start(prepared: Prepared, resume: "str | None", start_over: bool) -> None:
    """Rank 0: the run's id, kept when it resumes its own checkpoint; anything else is a
    new run, refused over another run's files unless it starts over."""
    found = prepared.resumed
    own = {prepared.run_directory.resolve(), prepared.checkpoint_directory.resolve()}
    if found is not None and found.path.resolve().parent in own:
        prepared.run_id = found.attrs["run_id"] or new_run_id()
        return
    prepared.run_id = new_run_id()
    prepared.earlier = earlier_run(prepared.run_directory, prepared.checkpoint_directory,
                                   prepared.metrics_log)
    if not prepared.earlier or start_over:
        return
    elsewhere = _elsewhere(prepared.job)
    if resume == "auto":
        raise ConfigError(
            f"--resume auto: {prepared.run_directory} holds an earlier run "
            f"({prepared.earlier}) but no checkpoint of it to resume; {elsewhere}, or move it "
            "into earlier/ and start afresh with --start-over")
    raise ConfigError(
        f"{prepared.run_directory} holds an earlier run ({prepared.earlier}); continue it "
        f"with --resume auto, {elsewhere}, or move it into earlier/ and start afresh with "
        "--start-over")


def _elsewhere(job: Job) -> str:
    """How to train into a new directory, in words."""
    if "{name}" in job["run.directory"]:
        return "train into a new directory with --set run.name=NEW"
    return "train into a new directory with --set run.directory=NEW"


def train(prepared: Prepared, progress: str = "auto", requests: "StopRequests | None" = None):
    """Train the prepared run; only rank 0 prints and writes files. Returns the History.
    Stopped, Diverged or Failed rises on every rank when the ranks agree to stop
    (`requests`); on a signal rank 0 has checkpointed first."""
    job, model, strategy = prepared.job, prepared.model, prepared.strategy
    requests = requests or StopRequests()
    history = History()
    epoch = step = 0
    if prepared.resumed is not None:
        # in training's order: loss, metrics, then their validation figures
        history.history = {key: list(values) for key, values in sorted(
            prepared.resumed.history.items(),
            key=lambda item: (item[0].startswith("val_"), item[0].removeprefix("val_") != "loss"))}
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
    if job["checkpoint.every_steps"]:  # before rank 0's ModelCheckpoint
        hooks.append(GatherStrategyState(strategy, job["checkpoint.every_steps"], steps))
    if strategy.rank == 0:
        prepared.log = MetricsLog(prepared.metrics_log, samples, extras,
                                  run_id=prepared.run_id, world_size=strategy.size)
        hooks.append(prepared.log)
        ticks = strategy.progress_steps(steps)
        if progress != "none":
            hooks.append(ProgressLogger(progress, epochs, samples, batch_size, steps=ticks))
        prepared.saver = ModelCheckpoint(
            prepared.checkpoint_directory, job["checkpoint.every_epochs"],
            job["checkpoint.every_steps"], job["checkpoint.keep"], steps_per_epoch=ticks,
            on_error=requests.fail, last=prepared.resumed and prepared.resumed.path,
            config=job.text, world_size=strategy.size, strategy=strategy.name,
            run_id=prepared.run_id, strategy_state=strategy.checkpoint_state)
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
        strategy.gather_state(model)  # on every rank, for rank 0's checkpoint
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


def run_job(path, overrides=(), quiet: bool = False, resume: "str | None" = None,
            dry_run: bool = False, start_over: bool = False) -> int:
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
        return _tell(f"mpinn: error: {exc}", exc.exit_code)
    tag = comm.tag
    prepared, error, found, skipped = None, None, None, []
    try:
        if start_over and resume:
            raise ConfigError("--start-over trains afresh: it cannot go with --resume")
        job = completed(load_job(path, overrides))
        threads = fit_to_node(comm.local_size, job["run.threads"])  # before any BLAS call
        comm.watch(job["watchdog.warn_seconds"], job["watchdog.abort_seconds"],
                   requests.pending)
        prepared = prepare(job, comm, resume,
                           on_skip=lambda where, why: skipped.append(f"{where}: {why}"),
                           start_over=start_over)
        if prepared.strategy.blas_threads is not None:  # applied by its setup
            threads = ThreadPlan(*prepared.strategy.blas_threads)
        prepared.threads = threads
        found = fingerprint(prepared, comm)
    except Exception as exc:  # noqa: BLE001 - every setup failure is agreed on
        error = exc
    try:
        agree(comm, error, found, tag)
    except SetupFailed as failed:
        if prepared is not None:
            prepared.release()
        if failed.message:
            _tell(failed.message, 0)
        return failed.exit_code
    except StalledStop as stop:  # on rank 0: a signal while another rank still sets up
        _tell(f"mpinn: {stop}; nothing was trained", 0)
        comm.abort(stop.exit_code)
    try:
        if dry_run:
            return _dry_run(prepared, comm, skipped)
        return _run(prepared, comm, quiet, resume, requests, tag, skipped)
    finally:
        prepared.release()


def _run(prepared: Prepared, comm: Comm, quiet, resume, requests, tag, skipped) -> int:
    job, model = prepared.job, prepared.model
    writer = comm.rank == 0
    if writer:
        for line in _notes(prepared, skipped):
            _tell(line, 0)
        if prepared.earlier:
            _move_earlier_run(prepared, comm)
    if writer and not quiet:
        print(_header(prepared, comm))
    found = prepared.resumed
    if writer and not quiet and resume:
        print(f"resuming {found.path} (after {place(found.data['epoch'], found.data['step'])})"
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
            _tell(f"mpinn: {stop}; {requests.error}; {_last_good(prepared)}", 0)
            comm.abort(requests.error.exit_code)  # the others are leaving with 128 + N
        if writer:
            _tell(f"mpinn: {stop}; checkpoint {prepared.saver.last} written, {_RESUME_HINT}",
                  0)
        return stop.exit_code
    except Diverged as stop:
        if writer:
            _tell(f"mpinn: {stop}; nothing was saved after it; {_last_good(prepared)}; "
                  "lower optimizer.learning_rate, add optimizer.global_clipnorm, or set "
                  'training.on_nonfinite = "skip"', 0)
        return stop.exit_code
    except Failed as stop:
        if stop.error is not None:
            _tell(f"mpinn: {stop}; {_last_good(prepared)}", 0)
        return stop.exit_code
    except StalledStop as stop:  # on rank 0 only: the others wait for it to end the job
        _tell(f"mpinn: {stop}; {_checkpoint_on_stall(prepared, requests)}", 0)
        comm.abort(stop.exit_code)
        return stop.exit_code
    except MpinnError as error:
        if getattr(error, "every_rank", False):  # e.g. a layout a strategy cannot serve
            return _tell(f"mpinn: error: {error}", error.exit_code) if comm.rank == 0 else (
                error.exit_code)
        # on one rank, e.g. a metrics log on a full disk
        _tell(f"{tag}mpinn: {error}", 0)
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
        _save_final(prepared, history.history, len(history.epoch), requests,
                    prepared.strategy.checkpoint_state(prepared.model))
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


def _header(prepared: Prepared, comm: Comm) -> str:
    """The run in one line: model, ranks, strategy, device, threads and why."""
    model, plan = prepared.model, prepared.threads
    threads = (f"{plan.threads} BLAS thread{'s' * (plan.threads != 1)} per rank"
               if plan.threads is not None else "BLAS threads as set")
    return (f"mpinn: {describe(model)}; {comm.size} rank(s), {prepared.strategy.name}, "
            f"{model.backend.name} backend ({model.backend.where()}); {threads} ({plan.reason})")


def _notes(prepared: Prepared, skipped: list[str]) -> list[str]:
    """What rank 0 tells before training: checkpoints passed over, locks taken over, data
    that looks wrong for the model."""
    job = prepared.job
    lines = [f"mpinn: --resume auto skipped {line}" for line in skipped]
    lines += [f"mpinn: {lock.note}" for lock in prepared.locks if lock.note]
    if prepared.changed:
        lines.append(f"mpinn: note: resuming {prepared.resumed.path} with other settings: "
                     f"{'; '.join(prepared.changed)}")
    samples, batch_size = len(prepared.train[0]), job["training.batch_size"]
    if batch_size > samples:
        lines.append(f"mpinn: note: training.batch_size = {batch_size} exceeds the {samples} "
                     "training samples: each epoch is one step on all of them")
    if prepared.pixel_note:
        lines.append(f"mpinn: note: {prepared.pixel_note}")
    lines += [f"mpinn: note: {note}" for note in prepared.strategy.notes(batch_size)]
    return lines


def _move_earlier_run(prepared: Prepared, comm: Comm) -> None:
    """Rank 0, starting over: the earlier run's files into earlier/ (or the job ends)."""
    try:
        moved = move_aside(prepared.run_directory, prepared.checkpoint_directory,
                           prepared.metrics_log)
    except MpinnError as error:
        _tell(f"mpinn: --start-over: {error}; nothing was trained", 0)
        comm.abort(error.exit_code)
    _tell(f"mpinn: moved the earlier run ({prepared.earlier}) to "
          f"{' and '.join(map(str, moved))}", 0)


def _dry_run(prepared: Prepared, comm: Comm, skipped: list[str]) -> int:
    """Everything a run would set up and check, shown; nothing trained or written."""
    if comm.rank:
        return 0
    job, model = prepared.job, prepared.model
    for line in _notes(prepared, skipped):
        _tell(line, 0)
    print(job.text)
    print(_header(prepared, comm))
    model.summary()
    validation = prepared.validation
    steps = -(-len(prepared.train[0]) // job["training.batch_size"])
    print(f"data: {len(prepared.train[0])} training samples ({steps} steps of "
          f"{job['training.batch_size']} per epoch on {comm.size} rank(s)), "
          f"{len(validation[0]) if validation is not None else 0} validation samples")
    found = prepared.resumed
    print(f"would resume {found.path} (after {place(found.data['epoch'], found.data['step'])})"
          if found else "would start afresh" + (
              f", moving the earlier run ({prepared.earlier}) into earlier/"
              if prepared.earlier else ""))
    print(f"run directory: {prepared.run_directory}; checkpoints: "
          f"{prepared.checkpoint_directory}")
    print("dry run: the job is valid; nothing was trained or saved")
    return 0


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
        same = found.attrs["strategy"] == prepared.strategy.name  # its state, as written
        state = {name: found.strategy_tensor(name)
                 for name in (found.shapes.get("strategy", {}) if same else {})}
        _save_final(prepared, found.history, found.data["epoch"], requests, state)
        if requests.error is None and not quiet:
            print(f"model: {prepared.run_directory / 'final.h5'} (from {found.path})")
    return _end_together(comm, prepared, requests)


def _end_together(comm: Comm, prepared: Prepared, requests: StopRequests) -> int:
    """Every rank's exit code: the worst of the ranks' final writes (0 if all went well)."""
    code = np.array([_failure_code(requests)], np.int64)
    try:
        comm.allreduce_max(code)
    except StalledStop as stop:
        _tell(f"mpinn: {stop}; training was complete", 0)
        comm.abort(stop.exit_code)
    if requests.error is not None:
        _tell(f"mpinn: {requests.error}; {_last_good(prepared)}", 0)
    return int(code[0])


def _save_final(prepared: Prepared, history: dict, epochs: int, requests: StopRequests,
                strategy_state: dict) -> None:
    """final.h5 (rank 0), at the end of epoch `epochs`; a failure is noted in `requests`."""
    strategy = prepared.strategy
    try:
        checkpoint.save(prepared.run_directory / "final.h5", prepared.model, epoch=epochs,
                        history=history, config=prepared.job.text, world_size=strategy.size,
                        strategy=strategy.name, run_id=prepared.run_id,
                        strategy_state=strategy_state)
    except MpinnError as error:
        requests.fail(error)


def _report_strategy(prepared: Prepared, requests: StopRequests, quiet: bool) -> None:
    """The strategy's figures for the whole run, in the metrics log (rank 0)."""
    strategy = prepared.strategy
    report = strategy.report()
    if not report:
        return
    try:
        prepared.log.append({"strategy": strategy.name, **report})
    except StorageError as error:
        requests.fail(error)
    if not quiet:
        print(f"{strategy.name}: " + ", ".join(f"{k}={v}" for k, v in report.items()))


def _tell(message: str, code: int) -> int:
    """`message` on stderr; returns `code`."""
    print(message, file=sys.stderr, flush=True)
    return code
