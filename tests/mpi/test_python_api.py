"""The Python API on real MPI: one script, run under `mpiexec -n K python script.py` and
alone, trains one model data-parallel with `fit(strategy=...)`."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import MPIEXEC

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data_parallel.py"
BROKEN_MPI = {"MPI4PY_LIBMPI": "/nonexistent/libmpi.so.12"}  # mpi4py fails to load MPI

# argv: strategy ("none", "allreduce", "ps": mpinn.strategy("ps", staleness=0), "ps-sync" or
# "ps-overlap": ps in mode "sync", or "async" without a bound, "ps-push-every-2": batches of
# 32 pushed in pairs), output
# folder; MPINN_TEST_STAGED=1 passes the model's arrays to MPI through host copies,
# MPINN_TEST_FAIL="rank:before" or "rank:fit" raises there, MPINN_TEST_OTHER_DATA
# gives one rank other data, MPINN_TEST_OTHER_BATCH another batch size, MPINN_TEST_CLAIMS
# "yes" or "no" has sync's workers claim the shared parameters or not, unmeasured
SCRIPT = """
import os, sys
import numpy as np
import mpinn
from mpinn import Dense, Sequential
from mpinn.data import load_digits

name, out = sys.argv[1], sys.argv[2]
if os.environ.get("MPINN_TEST_STAGED"):  # MPI as if it could not read the model's arrays
    from mpinn.dist import strategy as strategy_module

    class Staged(strategy_module.ArrayComm):
        def __init__(self, comm, backend):
            super().__init__(comm, backend)
            self.direct = False

    strategy_module.ArrayComm = Staged
if os.environ.get("MPINN_TEST_CLAIMS"):
    from mpinn_strategies import cache_lines

    def told(parameters, written, claimed, barrier, agree):
        return agree(os.environ["MPINN_TEST_CLAIMS"] == "yes")

    cache_lines.claiming_pays = told
world = mpinn.world()
fail = os.environ.get("MPINN_TEST_FAIL", "")


class FailAtStep(mpinn.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 5:
            raise RuntimeError("injected failure in fit")


if fail == f"{world.rank}:before":
    raise RuntimeError("injected failure before fit")
x, y = load_digits()
if os.environ.get("MPINN_TEST_OTHER_DATA") == str(world.rank):
    x = x[::-1]
# rank 0's seed holds for all: the others draw their own, and take rank 0's in fit
model = Sequential([Dense(32, activation="relu", input_shape=(64,)),
                    Dense(10, activation="softmax")], seed=7 if world.rank == 0 else None)
model.compile(optimizer=mpinn.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
strategy = {"none": None, "ps": mpinn.strategy("ps", staleness=0),
            "ps-sync": mpinn.strategy("ps", mode="sync"),
            "ps-overlap": mpinn.strategy("ps"),
            "ps-push-every-2": mpinn.strategy("ps", staleness=0, push_every=2)}.get(name, name)
batch_size = 32 if (os.environ.get("MPINN_TEST_OTHER_BATCH") == str(world.rank)
                    or name == "ps-push-every-2") else 64
history = model.fit(x, y, batch_size=batch_size, epochs=1000 if fail else 3, validation_split=0.1,
                    strategy=strategy,
                    callbacks=[FailAtStep()] if fail == f"{world.rank}:fit" else [])
np.savez(f"{out}/weights-{world.rank}.npz", *model.get_weights())
if world.rank == 0:
    print(f"trained on {world.size} rank(s): loss {history.history['loss'][-1]:.6f}")
    report = getattr(strategy, "report", dict)()
    if report:
        print(f"report: {report}")
"""


def run(tmp_path, ranks, *args, env=None, timeout=60):
    """`python args...` under mpiexec -n `ranks`, or alone with ranks=None, in tmp_path
    (where the script lies, as train.py)."""
    if ranks and MPIEXEC is None:
        pytest.skip("mpiexec is not installed (pip install -e '.[dev]')")
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [sys.executable, *args]
    if ranks:
        command = [MPIEXEC, "-n", str(ranks), *command]
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    started = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=timeout)
    result.seconds = time.monotonic() - started
    return result


def train(tmp_path, ranks, strategy, env=None):
    """(every rank's trained weights, rank 0's output) of the script."""
    out = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    out.mkdir()
    result = run(tmp_path, ranks, "train.py", strategy, str(out), env=env)
    assert result.returncode == 0, result.stderr
    weights = [list(np.load(path).values()) for path in sorted(out.glob("weights-*.npz"))]
    return weights, result.stdout


def final_loss(stdout: str) -> float:
    return float(re.search(r"trained on .*: loss (\S+)", stdout).group(1))


@pytest.fixture
def alone(tmp_path):
    """One process, no strategy: the reference weights and output."""
    (weights,), stdout = train(tmp_path, None, "none")
    return weights, stdout


@pytest.mark.timeout(120)
def test_allreduce_trains_the_single_process_model(tmp_path, alone):
    reference, expected = alone
    weights, stdout = train(tmp_path, 2, "allreduce")
    assert len(weights) == 2
    for mine, rank0 in zip(weights[1], weights[0], strict=True):
        np.testing.assert_array_equal(mine, rank0)  # every rank applies the same step
    # the ranks add two half-batch gradients where one process sums the whole batch: the
    # same float32 numbers in another order. After 78 SGD steps the weights (of order 1)
    # differ by a float32 rounding or two (1.5e-7 measured); 1e-6 leaves room for BLAS's
    # own summation order on other machines
    largest = max(float(np.abs(mine - theirs).max())
                  for mine, theirs in zip(weights[0], reference, strict=True))
    assert largest < 1e-6, largest
    assert final_loss(stdout) == pytest.approx(final_loss(expected), rel=1e-5)
    # rank 0 alone prints: fit's progress, and the script's own line
    assert stdout.count("Epoch 1/3") == 1 and stdout.count("trained on 2 rank(s)") == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy, records", [
    ("ps", ["'lead_bound': 0", "'version_lag_histogram': {'0': 78}"]),
    ("ps-sync", ["'mode': 'sync'", "'updates_applied': 78"])])
def test_ps_with_one_worker_trains_the_single_process_model(tmp_path, alone, strategy,
                                                            records):
    """One worker pushes whole global batches, which the server applies in order: in lock
    step (async, staleness 0), or read in shared memory (sync). Either way the
    single-process computation, number for number; every epoch ends with the server's
    parameters on every rank."""
    reference, _ = alone
    weights, stdout = train(tmp_path, 2, strategy)
    for rank_weights in weights:
        for mine, theirs in zip(rank_weights, reference, strict=True):
            np.testing.assert_array_equal(mine, theirs)
    assert all(record in stdout for record in records), stdout
    assert stdout.count("Epoch 3/3") == 1


@pytest.mark.timeout(120)
def test_sync_workers_claiming_the_shared_parameters_changes_no_bit(tmp_path):
    """In sync on one node the workers may claim the parameters' cache lines each step
    (cache_lines; whether they do is measured at setup): claims rewrite bits unchanged,
    so two workers train the same model, bit for bit, with claims and without."""
    trained = {}
    for claims in ("yes", "no"):
        trained[claims], stdout = train(tmp_path, 3, "ps-sync", env={"MPINN_TEST_CLAIMS": claims})
        assert f"'workers_claim_lines': {claims == 'yes'}" in stdout, stdout
    for rank_weights in [*trained["yes"], *trained["no"]]:
        for mine, theirs in zip(rank_weights, trained["yes"][0], strict=True):
            np.testing.assert_array_equal(mine, theirs)
    measured, stdout = train(tmp_path, 3, "ps-sync")
    assert re.search(r"'workers_claim_lines': (True|False)", stdout), stdout
    np.testing.assert_array_equal(measured[2][0], trained["yes"][2][0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["ps", "ps-overlap", "ps-push-every-2"])
def test_a_worker_sends_and_receives_the_models_own_buffers_as_copies_would(tmp_path,
                                                                          strategy):
    """Where MPI reads the model's arrays a worker copies nothing: in lock step it sends
    its gradient and receives the parameters where the model keeps them, overlapped it
    swaps spare buffers in. With one worker training is deterministic, and must give the
    bits it gives when every message passes through host copies."""
    direct, _ = train(tmp_path, 2, strategy)
    staged, _ = train(tmp_path, 2, strategy, env={"MPINN_TEST_STAGED": "1"})
    for mine, theirs in zip(direct[1], staged[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.timeout(120)
def test_a_push_every_two_steps_is_one_step_on_both_batches(tmp_path, alone):
    """One worker in lock step pushing the mean gradient of two batches of 32 takes the
    steps one process takes with batches of 64 (the same samples in the same order),
    up to float32 rounding: the sums are added in another order."""
    reference, _ = alone
    weights, stdout = train(tmp_path, 2, "ps-push-every-2")
    assert "'updates_applied': 78" in stdout  # 3 epochs of 26 pushes, as 26 steps of 64
    largest = max(float(np.abs(mine - theirs).max())
                  for mine, theirs in zip(weights[1], reference, strict=True))
    assert largest < 1e-6, largest


@pytest.mark.timeout(120)
def test_an_async_worker_computes_its_next_batch_while_its_push_travels(tmp_path, alone):
    """Without a staleness bound a worker pushes and computes on: each gradient but an
    epoch's first (after the epoch-end broadcast) is computed on parameters one update
    older than the server's, as the server's own record of version lags says."""
    reference, _ = alone
    weights, stdout = train(tmp_path, 2, "ps-overlap")
    assert "'version_lag_histogram': {'0': 3, '1': 75}" in stdout  # 3 epochs of 26 pushes
    for mine, theirs in zip(weights[0], weights[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)  # the epoch ends on one model
    assert not all(np.array_equal(mine, theirs) for mine, theirs
                   in zip(weights[0], reference, strict=True))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy, env", [("allreduce", None), ("ps", None),
                                           ("allreduce", BROKEN_MPI)],
                         ids=["allreduce", "ps", "allreduce-without-mpi"])
def test_the_script_alone_trains_as_without_a_strategy(tmp_path, alone, strategy, env):
    reference, expected = alone
    (weights,), stdout = train(tmp_path, None, strategy, env)
    for mine, theirs in zip(weights, reference, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert stdout.splitlines()[-1] == expected.splitlines()[-1]  # "trained on 1 rank(s)..."


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["1:before", "1:fit", "0:fit"])
def test_an_exception_on_one_rank_ends_the_job(tmp_path, where):
    result = run(tmp_path, 2, "train.py", "allreduce", str(tmp_path),
                 env={"MPINN_TEST_FAIL": where}, timeout=45)
    assert result.returncode != 0
    assert result.seconds < 15  # not 1000 epochs, not the watchdog's 600 s
    rank = where.split(":")[0]
    assert f"[rank {rank}/2 " in result.stderr
    assert "RuntimeError: injected failure" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable, message", [
    ("MPINN_TEST_OTHER_DATA", "rank 1 has other data than rank 0: x is [1617, 64] float32 "),
    ("MPINN_TEST_OTHER_BATCH", "rank 1 has other arguments than rank 0: batch_size is 32 on "
                               "rank 1 but 64 on rank 0 (every rank must call fit alike, with "
                               "the same arrays and the same model)")])
def test_ranks_calling_fit_otherwise_refuse_in_one_line(tmp_path, variable, message):
    result = run(tmp_path, 2, "train.py", "allreduce", str(tmp_path), env={variable: "1"},
                 timeout=45)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "mpinn: error: fit:" in line]
    assert len(lines) == 1, result.stderr  # rank 0 alone says it
    assert f"mpinn: error: fit: {message}" in lines[0]


@pytest.mark.timeout(120)
def test_the_example_trains_on_two_ranks_and_prints_once(tmp_path):
    result = run(tmp_path, 2, str(EXAMPLE), "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Epoch 2/2") == 1
    assert result.stdout.count("2 rank(s): test loss") == 1
