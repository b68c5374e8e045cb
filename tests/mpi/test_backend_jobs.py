"""Backends on real MPI: device arrays staged through host buffers, and the cupy backend's
jobs, allreduce and ps, and runs resumed on the other backend (trained on a GPU machine;
a one-line exit 2 on every rank elsewhere)."""

import json
import os
import subprocess
import sys

import pytest

from mpinn import checkpoint
from mpinn.backend import installed_backends

from .conftest import MPIEXEC
from .test_checkpoint_jobs import losses, write_job

STAGING_SCRIPT = """
import sys
import numpy as np
from mpinn.dist import ArrayComm, world
from mpinn_numpy import NumpyBackend

class CountingBackend(NumpyBackend):
    # NumPy arrays standing in for device memory that MPI may not reach
    device = "test-device"
    host_buffers = copies = 0

    def host_empty(self, shape, dtype):
        self.host_buffers += 1
        return super().host_empty(shape, dtype)

    def to_host(self, array, out):
        self.copies += 1
        super().to_host(array, out)

    def from_host(self, host, out):
        self.copies += 1
        super().from_host(host, out)

comm = world()
backend = CountingBackend()
arrays = ArrayComm(comm, backend)
assert arrays.direct == (sys.argv[1] == "direct"), arrays.direct
rank = comm.rank
grad = np.full(1000, rank + 1.0, dtype=np.float32)
for _ in range(3):
    arrays.allreduce_sum(grad)
assert (grad == 3 * 2 ** 2).all(), grad[:3]  # (1 + 2), doubled by two more rounds
data = np.arange(1000, dtype=np.float32) if rank == 0 else np.zeros(1000, np.float32)
arrays.broadcast(data, root=0)
assert (data == np.arange(1000)).all()
message = arrays.buffer_like(data)  # a buffer of its own, for nonblocking messages
if rank == 1:
    arrays.to_buffer(data * 2, message)
    comm.wait_all([comm.isend(message, dest=0, tag=5)], "send")
else:
    comm.wait_all([comm.irecv(message, source=1, tag=5)], "receive")
    incoming = np.zeros(1000, np.float32)
    arrays.from_buffer(message, incoming)
    assert (incoming == 2 * np.arange(1000)).all()
if rank == 1:
    data[600:] = -1  # its part, which rank 0 gathers
arrays.gather_parts(data, [(0, 600), (600, 1000)], tag=6)
if rank == 0:
    assert (data[:600] == np.arange(600)).all() and (data[600:] == -1).all()
staged = sys.argv[1] == "staged"
# the collectives' one, reused, the message's and the gathered part's
assert backend.host_buffers == 3 * staged, backend.host_buffers
assert (backend.copies > 0) == staged, backend.copies
open(sys.argv[2] + f"/ok-{rank}", "w").close()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode, gpu_aware", [("staged", None), ("direct", "1")])
def test_device_arrays_cross_mpi_through_host_buffers(tmp_path, mode, gpu_aware):
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed (pip install -e '.[dev]')")
    script = tmp_path / "staging.py"
    script.write_text(STAGING_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "MPINN_GPU_AWARE_MPI"}
    if gpu_aware:
        env["MPINN_GPU_AWARE_MPI"] = gpu_aware
    run = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), mode, str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr
    assert sorted(path.name for path in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"]


@pytest.mark.timeout(120)
def test_the_launchers_local_rank_is_mpis(tmp_path):
    """What a backend picks its device by when loaded (the launcher's word) agrees with
    what `mpinn train` picks it by (MPI's)."""
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed (pip install -e '.[dev]')")
    script = ("import sys\n"
              "from mpinn.dist.comm import launched_local_rank, world\n"
              "comm = world()\n"
              "with open(f'{sys.argv[1]}/{comm.rank}', 'w') as out:\n"
              "    out.write(f'{comm.local_rank} {launched_local_rank()}')\n")
    run = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-c", script, str(tmp_path)],
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr
    seen = [(tmp_path / str(rank)).read_text() for rank in range(3)]
    assert sorted(seen) == ["0 0", "1 1", "2 2"]


@pytest.mark.timeout(120)
def test_a_bad_gpu_aware_setting_exits_2_on_every_rank(launch):
    run = launch(2, "train", "--quiet", env={"MPINN_GPU_AWARE_MPI": "yes"})
    assert run.returncode == 2
    assert run.stderr.count("environment variable MPINN_GPU_AWARE_MPI='yes' must be 1 or 0") == 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy, ranks", [("allreduce", 2), ("ps", 3)])
def test_the_default_job_with_the_cupy_backend(tmp_path, launch, strategy, ranks):
    reason = installed_backends()["cupy"]
    run = launch(ranks, "train", "--quiet", "--set", "model.backend=cupy",
                 "--set", f"strategy.name={strategy}",
                 "--set", f"run.directory={tmp_path / 'run'}")
    if reason:  # no CuPy or no GPU here: every rank exits 2, with one line saying which
        assert run.returncode == 2
        assert run.stderr.count(f"model.backend = 'cupy': {reason}") == 1, run.stderr
        assert 'pip install "mpinn[cupy]"' in reason or "GPU" in reason
        return
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    epochs = [record for record in map(json.loads, log) if "val_accuracy" in record]
    assert epochs[-1]["val_accuracy"] > 0.95


@pytest.mark.timeout(300)
@pytest.mark.parametrize("first, then", [("cupy", "numpy"), ("numpy", "cupy")])
def test_a_run_resumes_on_the_other_backend(tmp_path, launch, first, then):
    reason = installed_backends()["cupy"]
    if reason:
        pytest.skip(f"backend 'cupy' cannot run here: {reason}")
    directory = write_job(tmp_path, "run", 6)
    started = launch(2, "train", "run.toml", "-q", "--set", "training.epochs=3",
                     "--set", f"model.backend={first}")
    assert started.returncode == 0, started.stderr
    before = losses(directory)
    resumed = launch(2, "train", "run.toml", "-q", "--resume", "auto",
                     "--set", f"model.backend={then}")
    assert resumed.returncode == 0, resumed.stderr
    after = losses(directory)[len(before):]
    assert len(before) == 3 and len(after) == 3
    assert after[0] < before[-1] * 1.1 and after[-1] < before[-1]
    assert checkpoint.read(directory / "final.h5").attrs["backend"] == then
