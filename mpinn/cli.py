"""The `mpinn` command: thin click commands over the runner."""

import functools
import os
import platform
import sys

import click

from . import __version__, plugins
from .backend import get_backend, installed_backends
from .dist.comm import MPIComm, world
from .errors import MpinnError


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
def train(job, overrides, quiet, resume):
    """Train the job in JOB (a TOML file), or the default job when none is given.

    Run it under mpirun/srun for data-parallel training; without, it trains in one
    process. Bad input exits with code 2 and one line naming the key and the value.
    """
    from .runner import run_job

    sys.exit(run_job(job, overrides, quiet, resume))


@cli.command("plugins")
def list_plugins():
    """List every installed plugin: its group, name, target and package."""
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
    """Versions, the MPI library and world, backends (and why one is unavailable), BLAS."""
    import mpi4py
    import numpy

    click.echo(f"mpinn {__version__}, Python {platform.python_version()} on "
               f"{platform.node()} ({platform.machine()})")
    click.echo(f"numpy {numpy.__version__}, mpi4py {mpi4py.__version__}")
    try:
        comm = world()
        click.echo(f"MPI: {comm.library}; rank {comm.rank} of {comm.size}")
    except MpinnError as exc:
        comm = None
        click.echo(f"MPI: unavailable: {exc}")
    for name, reason in installed_backends().items():
        click.echo(f"backend {name}: "
                   + (f"unavailable: {reason}" if reason else backend_line(name, comm)))
    click.echo(f"strategies: {', '.join(sorted(plugins.available(plugins.STRATEGIES)))}")
    slurm = [f"{key}={os.environ[key]}" for key in SLURM_VARIABLES if key in os.environ]
    click.echo(f"Slurm: {' '.join(slurm) if slurm else 'not in a Slurm job'}")
    for line in blas_lines():
        click.echo(line)


def backend_line(name: str, comm) -> str:
    """An available backend on the device this rank would train on, and whether MPI
    reaches that device's memory."""
    backend = get_backend(name)  # on the launcher's local rank; MPI's, where MPI is up
    if comm:
        backend.select_device(comm.local_rank)
    parts = ["available", backend.describe()]
    if backend.device and isinstance(comm, MPIComm):
        route = "directly" if comm.reaches(backend.device) else "through host buffers"
        parts.append(f"{backend.device} arrays reach MPI {route}")
    return "; ".join(part for part in parts if part)


SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                   "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_CPUS_PER_TASK",
                   "SLURM_JOB_PARTITION", "SLURM_RESTART_COUNT")


def bad_input_exits_2(command):
    """Run `command`; an MpinnError becomes one line on stderr and exit code 2."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MpinnError as exc:
            click.echo(f"mpinn: error: {exc}", err=True)
            sys.exit(2)

    return guarded


@cli.command()
@click.argument("checkpoint_file", metavar="CHECKPOINT")
@bad_input_exits_2
def inspect(checkpoint_file):
    """Show a checkpoint: format, position, parameters, metrics and the stored job, after
    reading every tensor once (checksums verified, NaN and Inf refused)."""
    import numpy as np

    from . import checkpoint

    found = checkpoint.read(checkpoint_file)
    verified = found.verify()
    attrs = found.attrs
    click.echo(f"{found.path}: {attrs['format']} v{attrs['format_version']} "
               f"(mpinn {attrs.get('mpinn_version', '?')})")
    click.echo(f"position: epoch {found.data.get('epoch')}, step {found.data.get('step')} of "
               f"that epoch, {attrs['iterations']} optimizer steps")
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
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override the stored job's data settings, e.g. --set data.path=x.npz")
@bad_input_exits_2
def evaluate(checkpoint_file, overrides):
    """Evaluate a checkpoint on its job's validation hold-out (or all of its data)."""
    from . import checkpoint
    from .config import parse_job
    from .runner import load_data
    from .saving import load_model

    model = load_model(checkpoint_file)
    job = parse_job(checkpoint.read(checkpoint_file).attrs["config"],
                    f"{checkpoint_file} (stored job)", overrides)
    if model.loss is None:
        raise MpinnError(f"{checkpoint_file}: the stored model has no loss to evaluate")
    train, validation = load_data(job)
    x, y = validation if validation is not None else train
    which = "validation hold-out" if validation is not None else "whole data set"
    logs = model.evaluate(x, y, batch_size=256, return_dict=True)
    click.echo(f"{which} ({len(x)} samples): " + " - ".join(
        f"{key}: {value:.4f}" for key, value in logs.items()))


@cli.command()
@click.argument("checkpoint_file", metavar="CHECKPOINT")
@click.argument("inputs", metavar="INPUT.npy")
@click.option("-o", "--output", required=True, metavar="OUT.npy", help="Where to write.")
@bad_input_exits_2
def predict(checkpoint_file, inputs, output):
    """Write a checkpoint's outputs for the samples in INPUT.npy to OUT.npy."""
    import numpy as np

    from .saving import load_model

    model = load_model(checkpoint_file)
    try:
        x = np.load(inputs, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MpinnError(f"{inputs}: not a readable .npy array ({exc})") from exc
    predictions = model.predict(x, batch_size=1024)
    np.save(output, predictions)
    click.echo(f"wrote {output}: {predictions.shape} {predictions.dtype}")


def blas_lines() -> list[str]:
    """The BLAS libraries NumPy uses, their thread counts and any OPENBLAS_* settings."""
    from threadpoolctl import threadpool_info

    lines = [f"BLAS: {pool['internal_api']} {pool.get('version')} "
             f"({pool.get('architecture', '?')}), {pool['num_threads']} threads"
             for pool in threadpool_info() if pool["user_api"] == "blas"]
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items())
                if k.startswith(("OPENBLAS_", "OMP_NUM_THREADS", "MKL_NUM_THREADS"))]
    lines.append(f"BLAS settings: {' '.join(settings) or 'none'}")
    return lines


def main():
    cli()
