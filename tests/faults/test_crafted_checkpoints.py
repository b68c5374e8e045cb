"""A crafted checkpoint is read only from itself: one whose tensor keeps its bytes in a
host file (HDF5 external storage), one whose shapes ask for terabytes, one whose stored
job asks for billions of parameters. `mpinn inspect`, `evaluate`, `predict` and
`train --resume`, on one rank or two, exit 2 with one line naming the file, quickly,
without a traceback, without the host file's bytes and without writing anything."""

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from mpinn.data import load_digits

from .conftest import MPIEXEC, MPINN, write_job

SECRET = b"TOP-SECRET-HOST-FILE!..."  # 24 bytes, recognisable in any output
KERNEL = "params/dense_0/kernel"  # (64, 32) float32 in the conftest's job


def external(file, secret):
    del file[KERNEL]
    file.create_dataset(KERNEL, shape=(64, 32), dtype="f4",
                        external=[(str(secret), 0, 64 * 32 * 4)])


def huge(file, secret):
    del file[KERNEL]  # unwritten chunks: a few bytes on disk, 4 TB when read
    file.create_dataset(KERNEL, shape=(10**6, 10**6), dtype="f4", chunks=(64, 32),
                        fletcher32=True)


def huge_job(file, secret):  # tensors as trained, a job 3 million times wider
    file.attrs["config"] = file.attrs["config"].replace("units = 32", "units = 100000000")


CRAFTED = {"external": external, "huge": huge, "huge-job": huge_job}
MESSAGES = {
    "external": "refused: params/dense_0/kernel stores its bytes in another file "
                "(external storage)",
    "huge": "refused: params/dense_0/kernel asks for 4,000,000,000,000 bytes",
    "huge-job": "the stored job's model has 7,500,000,010 parameters, the stored tensors "
                "2,410",
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Checkpoint paths by kind, each a copy of a real one (`mpinn train`, 1 epoch)."""
    directory = tmp_path_factory.mktemp("crafted")
    write_job(directory / "job.toml", directory / "run", epochs=1)
    trained = subprocess.run([MPINN, "train", "job.toml", "-q"], cwd=directory,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert trained.returncode == 0, trained.stderr
    secret = directory / "secret.bin"
    secret.write_bytes(SECRET * 400)
    paths = {}
    for kind, edit in CRAFTED.items():
        paths[kind] = directory / f"{kind}.h5"
        shutil.copyfile(directory / "run" / "final.h5", paths[kind])
        with h5py.File(paths[kind], "a") as file:
            edit(file, secret)
    return paths


def arguments(command: str, path) -> list[str]:
    return {"inspect": ["inspect", str(path)],
            "evaluate": ["evaluate", str(path)],
            "predict": ["predict", str(path), "x.npy", "-o", "out.npy"],
            "train": ["train", "job.toml", "-q", "--resume", str(path)]}[command]


CASES = [(command, kind) for kind in ("external", "huge")
         for command in ("inspect", "evaluate", "predict", "train")]
CASES += [("evaluate", "huge-job"), ("predict", "huge-job")]  # the only users of the job


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command, kind", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_a_crafted_checkpoint_exits_2_with_one_line(tmp_path, launch, crafted, command, kind):
    write_job(tmp_path / "job.toml", tmp_path / "run", epochs=1)
    np.save(tmp_path / "x.npy", load_digits().x[:5])
    run = launch(None, *arguments(command, crafted[kind])).finish(timeout=60)
    assert run.returncode == 2, run.stderr
    line, = run.stderr.splitlines()
    assert line.startswith(f"mpinn: error: {crafted[kind]}: {MESSAGES[kind]}")
    assert run.stdout == ""
    assert "Traceback" not in run.stderr and SECRET[:10].decode() not in run.stderr
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "run").exists()
    assert run.seconds < 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["external", "huge"])
def test_every_rank_refuses_a_crafted_checkpoint(tmp_path, crafted, kind):
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or the mpinn command is not installed (pip install -e '.[dev]')")
    write_job(tmp_path / "job.toml", tmp_path / "run", epochs=1)
    each_rank = 'mpinn="$1"; shift; "$mpinn" "$@"; code=$?; echo "exit $code" >&2; exit $code'
    run = subprocess.run([MPIEXEC, "-n", "2", "sh", "-c", each_rank, "sh", MPINN,
                          *arguments("train", crafted[kind])],
                         cwd=tmp_path, capture_output=True, text=True, timeout=90,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert sorted(lines)[:2] == ["exit 2", "exit 2"]  # both ranks, each its own exit code
    errors = [line for line in lines if not line.startswith("exit ")]
    assert len(errors) == 1 and f"mpinn: error: {crafted[kind]}: {MESSAGES[kind]}" in errors[0]
    assert "Traceback" not in run.stderr and SECRET[:10].decode() not in run.stderr
    assert not (tmp_path / "run").exists()
