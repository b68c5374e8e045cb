"""The `mpinn` command: thin click commands over the runner."""

import os
import platform
import sys

import click

from . import __version__, plugins
from .agreement import SetupFailed, agree
from .backend import get_backend, installed_backends
from .dist.comm import LocalComm, MPIComm, launched_rank, world
from .errors import MpinnError
from .threads import THREAD_VARIABLES, fit_to_node


@click.group(name="mpinn", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpinn")
def cli():
    """Train neural networks data-parallel over MPI.

    \b
    mpinn train                       the default job (an MLP on the embedded digits)
    mpirun -n 8 mpinn train job.toml  a job file on 8 ranks
    """


@cli.command()
@click.argument("job", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a job-file value, e.g. --set training.epochs=5 (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--resume", metavar="CHECKPOINT|auto",
              help="Continue from a checkpoint file, or from the newest valid one in the "
                   "run's checkpoint directory with 'auto' (none found: start afresh).")
@click.option("--dry-run", is_flag=True,
              help="Check everything a run would (job, data, model, plugins, run directory) "
                   "and print the resolved job and the model; train nothing.")
@click.option("--start-over", is_flag=True,
              help="Move an earlier run's files (final.h5, checkpoints, metrics log) into "
                   "the run directory's earlier/<run id>/ and train afresh.")
def train(job, overrides, quiet, resume, dry_run, start_over):
    """Train the job in JOB (a TOML file), or the default job when none is given.

    Run it under mpirun/srun for data-parallel training; without, it trains in one
    process. Bad input exits with code 2 and one line naming the key and the value.
    """
    from .runner import run_job

    sys.exit(run_job(job, overrides, quiet, resume, dry_run, start_over))


@cli.command("plugins")
def list_plugins():
    """List every installed plugin: its group, name, target and package."""
    if launched_rank():
        return
    for group in plugins.GROUPS:
        click.echo(f"{group}:")
        found = plugins.available(group)
        if not found:
            click.echo("  (none)")
        for name, entry in sorted(found.items()):
            package = f"{entry.dist.name} {entry.dist.version}" if entry.dist else "?"
            click.echo(f"  {name:<12} {entry.value:<45} [{package}]")


@cli.command()
def info():
    """Versions, the MPI library and world, backends (and why one is unavailable), BLAS,
    and a table of the ranks: host, local rank, device, BLAS threads (as `mpinn train`
    sets them when the job leaves run.threads at 0). Under mpirun, rank 0 prints for all."""
    import json

    import mpi4py
    import numpy

    try:
        comm, mpi = world(), None
    except MpinnError as exc:  # launched as several processes that cannot reach each other
        comm, mpi = LocalComm(), f"unavailable: {exc}"
    threads = fit_to_node(comm.local_size)
    backends = {name: reason or backend_line(name, comm)
                for name, reason in installed_backends().items()}
    devices = [get_backend(name) for name, reason in installed_backends().items()
               if not reason]
    row = [comm.rank, platform.node(), comm.local_rank,
           ", ".join(dict.fromkeys(backend.where() for backend in devices)),
           f"{blas_threads()} ({threads.reason})"]
    rows = [json.loads(data) for data in comm.allgather_bytes(json.dumps(row).encode())]
    if comm.rank:
        return
    click.echo(f"mpinn {__version__}, Python {platform.python_version()} on "
               f"{platform.node()} ({platform.machine()})")
    click.echo(f"numpy {numpy.__version__}, mpi4py {mpi4py.__version__}")
    click.echo(f"MPI: {mpi or f'{comm.library}; {comm.size} rank(s)'}")
    for name, reason in installed_backends().items():
        click.echo(f"backend {name}: "
                   + (f"unavailable: {reason}" if reason else backends[name]))
    click.echo(f"strategies: {', '.join(sorted(plugins.available(plugins.STRATEGIES)))}")
    slurm = [f"{key}={os.environ[key]}" for key in SLURM_VARIABLES if key in os.environ]
    click.echo(f"Slurm: {' '.join(slurm) if slurm else 'not in a Slurm job'}")
    for line in blas_lines():
        click.echo(line)
    header = ["rank", "host", "local rank", "device", "BLAS threads"]
    widths = [max(len(str(cells[i])) for cells in [header, *rows]) for i in range(4)]
    for cells in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in
                             zip(cells, widths, strict=False)) + f"  {cells[4]}")


def backend_line(name: str, comm) -> str:
    """An available backend on the device this rank would train on, and whether MPI
    reaches that device's memory."""
    backend = get_backend(name)  # on the launcher's local rank; MPI's, where MPI is up
    backend.select_device(comm.local_rank)
    parts = ["available", backend.describe()]
    if backend.device and isinstance(comm, MPIComm):
        route = "directly" if comm.reaches(backend.device) else "through host buffers"
        parts.append(f"{backend.device} arrays reach MPI {route}")
    return "; ".join(part for part in parts if part)


SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                   "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_CPUS_PER_TASK",
                   "SLURM_JOB_PARTITION", "SLURM_RESTART_COUNT")


def on_every_rank(setup, *args):
    """(world, setup(*args)) on every rank, once all ranks agree that it worked; else one
    line, printed once (exit 2 for bad input, 1 after a traceback), and no rank waits."""
    try:
        comm = world()
    except MpinnError as exc:
        click.echo(f"mpinn: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    result = error = None
    try:
        result = setup(*args)
    except Exception as exc:  # noqa: BLE001 - every rank hears of any rank's failure
        error = exc
    try:
        agree(comm, error, {}, comm.tag)
    except SetupFailed as failed:
        if failed.message:
            click.echo(failed.message, err=True)
        sys.exit(failed.exit_code)
    return comm, result


@cli.command()
@click.argument("checkpoint_file", metavar="CHECKPOINT")
def inspect(checkpoint_file):
    """Show a checkpoint: format, position, parameters, metrics and the stored job, after
    reading every tensor once (checksums verified, NaN and Inf refused)."""
    from . import checkpoint

    def verified():
        found = checkpoint.read(checkpoint_file)
        return found, found.verify()

    comm, (found, count) = on_every_rank(verified)
    if comm.rank == 0:
        describe_checkpoint(found, count)


def describe_checkpoint(found, verified: int) -> None:
    import numpy as np

    from .stopping import place

    attrs = found.attrs
    click.echo(f"{found.path}: {attrs['format']} v{attrs['format_version']} "
               f"(mpinn {attrs.get('mpinn_version', '?')})")
    click.echo(f"position: after {place(found.data['epoch'], found.data['step'])}, "
               f"{attrs['iterations']} optimizer steps")
    click.echo(f"written by: {attrs.get('world_size')} rank(s), strategy "
               f"{attrs.get('strategy')}, backend {attrs.get('backend')}, {attrs['dtype']}")
    shapes = found.shapes["params"]
    total = sum(int(np.prod(shape)) for shape in shapes.values())
    click.echo(f"parameters ({total:,}):")
    for name, shape in sorted(shapes.items()):
        click.echo(f"  {name:<28} {tuple(shape)}")
    click.echo(f"optimizer state: {', '.join(found.slots) or 'none'}")
    click.echo(f"checksums: verified ({verified} tensors, all finite)")
    for metric, values in found.history.items():
        last = f", last {values[-1]:.4f}" if values else ""
        click.echo(f"history {metric}: {len(values)} epochs{last}")
    if attrs.get("config"):
        click.echo("job:")
        for line in attrs["config"].rstrip().splitlines():
            click.echo(f"  {line}")


@cli.command()
@click.argument("checkpoint_file", metavar="CHECKPOINT")
@click.option("--data", "data_file", metavar="FILE",
              help="Score every sample of this .npz or HDF5 file (read with the job's array "
                   "names) instead of the run's validation set.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override the stored job's data settings, e.g. --set data.x=images "
                   "(repeatable); data from elsewhere is scored whole.")
def evaluate(checkpoint_file, data_file, overrides):
    """Score a checkpoint as it was trained: its stored job rebuilds the model and draws the
    same validation set; with the same world size the figures equal training's last ones."""
    from .inference import prepare_evaluation

    comm, evaluation = on_every_rank(prepare_evaluation, checkpoint_file, data_file, overrides)
    logs = evaluation.run(comm)
    if comm.rank == 0:
        click.echo(f"{evaluation.what}: " + " - ".join(
            f"{key}: {value:.4f}" for key, value in logs.items()))


@cli.command()
@click.argument("checkpoint_file", metavar="CHECKPOINT")
@click.argument("inputs", metavar="INPUT.npy")
@click.option("-o", "--output", required=True, metavar="OUT.npy", help="Where to write.")
def predict(checkpoint_file, inputs, output):
    """Write a checkpoint's outputs for the samples in INPUT.npy to OUT.npy (rank 0 writes;
    the file is replaced whole or not at all)."""
    import numpy as np

    from .inference import prepare_prediction, save_array

    comm, (model, x) = on_every_rank(prepare_prediction, checkpoint_file, inputs)
    code = np.zeros(1, np.int64)
    if comm.rank == 0:
        try:
            predictions = model.predict(x, batch_size=1024)
            written = save_array(output, predictions)
            click.echo(f"wrote {written}: {predictions.shape} {predictions.dtype}")
        except MpinnError as exc:
            click.echo(f"mpinn: error: {exc}", err=True)
            code[0] = exc.exit_code
    comm.allreduce_max(code)
    sys.exit(int(code[0]))


@cli.command()
@click.argument("run", metavar="RUN")
@click.option("-o", "--output", metavar="OUT.png",
              help="Where to write (default: curves.png in the run directory).")
def plot(run, output):
    """Draw a run's learning curves into a PNG: the loss and each metric (training and
    validation) and samples/s, per epoch. RUN is a run directory or its metrics log.
    Needs matplotlib: pip install "mpinn[plot]"."""
    from .plot import plot_run

    comm, written = on_every_rank(lambda: plot_run(run, output) if world().rank == 0 else None)
    if comm.rank == 0:
        click.echo(f"wrote {written}")


def blas_lines() -> list[str]:
    """The BLAS libraries NumPy uses and any thread settings in the environment."""
    from threadpoolctl import threadpool_info

    lines = [f"BLAS: {pool['internal_api']} {pool.get('version')} "
             f"({pool.get('architecture', '?')})"
             for pool in threadpool_info() if pool["user_api"] == "blas"]
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items())
                if k.startswith("OPENBLAS_") or k in THREAD_VARIABLES]
    lines.append(f"BLAS settings: {' '.join(settings) or 'none'}")
    return lines


def blas_threads() -> str:
    """The thread counts of this process's BLAS pools ("?" where none is loaded)."""
    from threadpoolctl import threadpool_info

    counts = [str(pool["num_threads"]) for pool in threadpool_info()
              if pool["user_api"] == "blas"]
    return "/".join(counts) or "?"


def main(prog_name: "str | None" = None):
    """The `mpinn` command; a usage error is printed by the first rank alone."""
    try:
        sys.exit(cli(prog_name=prog_name, standalone_mode=False))
    except click.ClickException as error:
        if not launched_rank():
            error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        sys.exit(130)
