"""Every failure before the first step is agreed on (every rank ends promptly: bad input
with exit 2 and one line, anything else with that rank's traceback and exit 1), and
ranks that were given different jobs (an MPMD launch, nodes that see different files)
are refused before they train, naming the ranks and the first key that differs."""

import numpy as np
import pytest

from mpinn.data import load_digits

from .conftest import write_job


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ranks", [2, 4])
def test_an_exception_in_setup_on_one_rank_ends_every_rank(tmp_path, launch, ranks):
    write_job(tmp_path / "job.toml", tmp_path / "run")
    job = launch(ranks, "train", "job.toml", "-q",
                 env={"MPINN_FAIL_AT": "1:setup"}).finish(timeout=30)
    assert job.returncode == 1, job.stderr
    assert job.seconds < 15
    assert f"[rank 1/{ranks} " in job.stderr and "IndexError: injected failure" in job.stderr
    assert "mpinn: setup failed on rank 1 (see above)" in job.stderr
    assert not list((tmp_path / "run").glob("*"))  # nothing was written, no lock is left


@pytest.mark.timeout(60)
def test_bad_input_on_one_rank_only_is_said_once_naming_it(tmp_path, launch):
    x, y = load_digits()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    extra = '\n[data]\ndataset = "npz"\npath = "{}"\n'
    write_job(tmp_path / "a.toml", tmp_path / "run", extra=extra.format(tmp_path / "data.npz"))
    write_job(tmp_path / "b.toml", tmp_path / "run", extra=extra.format(tmp_path / "gone.npz"))
    job = launch(None, mpmd=[(1, ["train", "a.toml", "-q"], {}),
                             (1, ["train", "b.toml", "-q"], {})]).finish(timeout=30)
    assert job.returncode == 2
    assert job.stderr.strip().splitlines() == [
        "mpinn: error: on rank 1: b.toml: [data] (dataset 'npz'): data file "
        f"'{tmp_path / 'gone.npz'}' does not exist"]


DIFFERENCES = {  # key -> (the other rank's override, how the message shows the values)
    "run.seed": ("run.seed=4", "3 on rank 0 but 4 on rank 1"),
    "optimizer.learning_rate": ("optimizer.learning_rate=0.01",
                                "0.001 on rank 0 but 0.01 on rank 1"),
    "optimizer.name": ("optimizer.name='sgd'", '"adam" on rank 0 but "sgd" on rank 1'),
    "training.epochs": ("training.epochs=7", "1000 on rank 0 but 7 on rank 1"),
    "strategy.name": ("strategy.name='ps'", '"allreduce" on rank 0 but "ps" on rank 1'),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", DIFFERENCES)
def test_ranks_with_different_jobs_are_refused_naming_the_key(tmp_path, launch, key):
    override, shown = DIFFERENCES[key]
    write_job(tmp_path / "job.toml", tmp_path / "run")
    job = launch(None, mpmd=[(1, ["train", "job.toml", "-q"], {}),
                             (1, ["train", "job.toml", "-q", "--set", override], {})]
                 ).finish(timeout=30)
    assert job.returncode == 2, job.stderr
    assert job.stderr == f"mpinn: error: the ranks were given different jobs: {key} is {shown}\n"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def stage(directory, x, y):
    """A node's own copy of the data, at the same relative path, and the job."""
    directory.mkdir()
    np.savez(directory / "data.npz", x=x, y=y)
    write_job(directory / "job.toml", directory.parent / "run",
              extra='\n[data]\ndataset = "npz"\npath = "data.npz"\nvalidation_split = 0.0\n')


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change, key", [
    (lambda x, y: (x[:-3], y[:-3]), "training data x"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 0, (y + 1) % 10, y)), "training data y"),
], ids=["3-rows-short", "one-label-differs"])
def test_a_node_whose_data_copy_differs_is_refused(tmp_path, launch, change, key):
    x, y = load_digits()
    stage(tmp_path / "a", x, y)
    stage(tmp_path / "b", *change(x, y))
    job = launch(None, mpmd=[(1, ["train", "job.toml", "-q"], {}, tmp_path / "a"),
                             (1, ["train", "job.toml", "-q"], {}, tmp_path / "b")])
    job.finish(timeout=30)
    assert job.returncode == 2, job.stderr
    assert f"the ranks were given different jobs: {key} is [" in job.stderr
    assert job.stderr.count("\n") == 1
