"""The `mpinn` command: thin click commands over the runner."""

import os
import platform
import sys

import click

from . import __version__, plugins
from .backend import get_backend
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
def train(job, overrides, quiet):
    """Train the job in JOB (a TOML file), or the default job when none is given.

    Run it under mpirun/srun for data-parallel training; without, it trains in one
    process. Bad input exits with code 2 and one line naming the key and the value.
    """
    from .runner import run_job

    sys.exit(run_job(job, overrides, quiet))


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

    from .dist.comm import world

    click.echo(f"mpinn {__version__}, Python {platform.python_version()} on "
               f"{platform.node()} ({platform.machine()})")
    click.echo(f"numpy {numpy.__version__}, mpi4py {mpi4py.__version__}")
    try:
        comm = world()
        click.echo(f"MPI: {comm.library}; rank {comm.rank} of {comm.size}")
    except MpinnError as exc:
        click.echo(f"MPI: unavailable: {exc}")
    for name in sorted(plugins.available(plugins.BACKENDS)):
        try:
            get_backend(name)
            status = "available"
        except Exception as exc:  # noqa: BLE001 - say why any backend cannot load
            status = f"unavailable: {exc}"
        click.echo(f"backend {name}: {status}")
    click.echo(f"strategies: {', '.join(sorted(plugins.available(plugins.STRATEGIES)))}")
    for line in blas_lines():
        click.echo(line)


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
