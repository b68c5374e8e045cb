"""The allreduce strategy's exchange node by node (`by_node`, shared memory inside a node)
under real `mpiexec` on one node; tests/multinode runs it across emulated nodes."""

import subprocess
import sys

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC
from .test_allreduce_jobs import SMALL_JOB

# every rank checks that its exchange went node by node, where the setting says so, and
# returns its parameters; argv: the by_node setting
STRATEGY = """
import sys
import numpy as np
import mpinn
from mpinn.data import load_digits

setting = {"true": True, "false": False, "auto": "auto"}[sys.argv[1]]
x, y = load_digits()
model = mpinn.Sequential([mpinn.Dense(48, activation="tanh", input_shape=(64,)),
                          mpinn.Dense(10, activation="softmax")], seed=5)
model.compile("adam", "sparse_categorical_crossentropy")
strategy = mpinn.strategy("allreduce", by_node=setting)
model.fit(x[:900], y[:900], batch_size=50, epochs=2, verbose=0, strategy=strategy)
assert strategy.by_node == (setting is True), strategy.by_node  # auto: not on one node
assert model.params.grad.flags.owndata  # out of shared memory once trained
np.save(f"params-{sys.argv[1]}-{strategy.rank}.npy", model.params.data)
"""


def final(directory):
    return checkpoint.read(directory / "final.h5").params


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [2, 3])
def test_by_node_trains_allreduces_model(tmp_path, launch, ranks):
    """On 2 ranks both ways add the same two numbers: the same bits; on 3 the order of
    the sums may differ."""
    for name, setting in (("flat", "false"), ("by-node", "true")):
        (tmp_path / f"{name}.toml").write_text(SMALL_JOB.format(directory=tmp_path / name))
        run = launch(ranks, "train", f"{name}.toml", "-q", "--set", f"strategy.by_node={setting}")
        assert run.returncode == 0, run.stderr
    flat, by_node = final(tmp_path / "flat"), final(tmp_path / "by-node")
    for key, value in flat.items():
        if ranks == 2:
            np.testing.assert_array_equal(by_node[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(by_node[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.timeout(200)
def test_every_setting_from_python_keeps_the_ranks_equal(tmp_path):
    """On one node auto is the flat call, as false is (the same bits), and true goes node
    by node; any rank's failed check ends the job."""
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed")
    (tmp_path / "fit.py").write_text(STRATEGY)
    for setting in ("auto", "true", "false"):
        run = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "fit.py", setting],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        rows = [np.load(tmp_path / f"params-{setting}-{rank}.npy") for rank in range(3)]
        for row in rows[1:]:
            np.testing.assert_array_equal(row, rows[0])
    np.testing.assert_array_equal(np.load(tmp_path / "params-auto-0.npy"),
                                  np.load(tmp_path / "params-false-0.npy"))


# rank 0 holds a pending sum for the whole buffer (as after an epoch's end), the others
# none; every gradient is zero: the step's sum is the pending one, and nothing is left
PENDING = """
import numpy as np
import mpinn

model = mpinn.Sequential([mpinn.Dense(4, input_shape=(3,))], seed=1)
model.compile("sgd", "mse")
model.build()
strategy = mpinn.strategy("allreduce", compression="bfloat16", by_node=True)
strategy.setup(model)
assert strategy.by_node
pending = np.arange(1, model.params.size + 1, dtype=np.float32) / 8  # exact in bfloat16
strategy.compressor.residual[...] = pending if strategy.rank == 0 else 0
model.params.grad[...] = 0
strategy.exchange(model)
np.testing.assert_array_equal(model.params.grad, pending)
assert not strategy.compressor.residual.any()
strategy.finish(model)
"""


@pytest.mark.timeout(60)
def test_compressed_by_node_a_pending_sum_outside_a_ranks_slice_joins_the_next_step(tmp_path):
    """Rank 0's residual spans the 3 ranks' slices; the parts outside its own join its
    gradient before the node's sum, its own part the sum of its slice."""
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed")
    (tmp_path / "pending.py").write_text(PENDING)
    run = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "pending.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings, message", [
    (["strategy.by_node='yes'"], "allreduce: by_node must be true, false or 'auto'; "
                                 "received: by_node='yes'"),
    (["strategy.by_node=true", "strategy.overlap=true"],
     "allreduce: by_node goes with overlap = false and compression 'none', 'float16' or "
     "'bfloat16'; received: overlap=True, compression='none'"),
    (["strategy.by_node=true", "strategy.compression='powersgd'"],
     "allreduce: by_node goes with overlap = false and compression 'none', 'float16' or "
     "'bfloat16'; received: overlap=False, compression='powersgd'"),
], ids=["not-a-setting", "with-overlap", "with-powersgd"])
def test_bad_by_node_settings_are_one_line_and_exit_2_on_every_rank(launch, settings, message):
    run = launch(2, "train", "-q", *[arg for setting in settings for arg in ("--set", setting)])
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
