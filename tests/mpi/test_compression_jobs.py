"""`allreduce` with `compression` (float16, bfloat16, powersgd; error feedback) on real
MPI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC, MPINN
from .test_stopping import JOB as STOP_JOB
from .test_stopping import stopped_and_resumed

HALF = ["float16", "bfloat16"]
KINDS = [*HALF, "powersgd"]

# each rank's gradient: small multiples of 2^-6, exact in both wire formats, as are their
# sums; argv: the wire format, the hidden layer's width
EXACT = """
import sys
import numpy as np
import mpinn

kind, width = sys.argv[1], int(sys.argv[2])
model = mpinn.Sequential([mpinn.Dense(width, input_shape=(11,)), mpinn.Dense(width)], seed=1)
model.compile("sgd", "mse")
model.build()
plain, compressed = mpinn.strategy("allreduce"), mpinn.strategy("allreduce", compression=kind)
rank = plain.rank
index = np.arange(model.params.grad.size)
values = ((index * 7 + rank * 3) % 41 - 20) * 2.0**-6
for strategy in (plain, compressed):
    strategy.setup(model)
model.params.grad[...] = values
plain.exchange(model)
expected = model.params.grad.copy()
model.params.grad[...] = values
compressed.exchange(model)
assert np.array_equal(model.params.grad, expected), np.abs(model.params.grad - expected).max()
assert not compressed.compressor.residual.any()
assert type(compressed.compressor.codec).__name__ == (
    "HalfCodec" if model.params.grad.size >= 2**18 else "ArrayHalfCodec")
model.params.grad[...] = values / 3  # not exact on the wire: the residual keeps the rest
compressed.exchange(model)
assert compressed.compressor.residual.any()
if rank == 0:
    print("exact", model.params.grad.size)
"""


def records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def final(directory):
    return checkpoint.read(directory / "final.h5")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("width, size", [(37, 1850), (600, 367800)],
                         ids=["array-codec", "numba-codec"])
@pytest.mark.parametrize("kind", HALF)
def test_exactly_representable_gradients_give_allreduces_sum(tmp_path, kind, width, size):
    """On 3 ranks (chunks of a third, the last one padded); any rank's failed check ends
    the job. The larger model converts with the NumPy backend's numba codec."""
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed")
    script = tmp_path / "exact.py"
    script.write_text(EXACT)
    run = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(script), kind, str(width)],
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"exact {size}"


@pytest.mark.timeout(300)
def test_compressed_exchange_trains_the_default_job_within_a_point_of_allreduce(tmp_path,
                                                                                launch):
    accuracy = {}
    for kind in ["none", *KINDS]:
        run = launch(2, "train", "-q", "--set", f"run.name='{kind}'",
                     "--set", f"strategy.compression='{kind}'")
        assert run.returncode == 0, run.stderr
        accuracy[kind] = records(tmp_path / "runs" / kind)[-1]["val_accuracy"]
    assert accuracy["none"] >= 0.95
    for kind in KINDS:
        assert accuracy[kind] >= accuracy["none"] - 0.01, accuracy


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_resumes_exactly_with_every_ranks_residual(tmp_path, kind):
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or mpinn is not installed")
    stopped, a, b = stopped_and_resumed(tmp_path, ["--set", f"strategy.compression='{kind}'"])
    mid_epoch = stopped.attrs["iterations"] % 180 != 0
    assert ("residual_by_rank" in stopped.shapes["strategy"]) == mid_epoch
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
    assert "residual_by_rank" not in b.shapes["strategy"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind, by_node", [*((kind, False) for kind in KINDS),
                                           ("bfloat16", True)],
                         ids=[*KINDS, "bfloat16-by-node"])
def test_checkpoints_every_n_steps_and_at_epoch_ends_resume_exactly(tmp_path, launch, kind,
                                                                    by_node):
    """Step 170 keeps both ranks' residuals; at 180 (the epoch's end) rank 0 holds their
    sum. Each resumes to the bits of the run that wrote them; on 3 ranks, 170 trains on.
    By node (here one node: its sum of each slice is what is compressed), a rank's
    residual is its slice's; rank 0's sum, or the 3 ranks' other slices, join the next
    step."""
    for name in ("whole", "again-170", "again-180", "three"):
        (tmp_path / f"{name}.toml").write_text(STOP_JOB.format(directory=tmp_path / name))
    sets = [arg for setting in [f"strategy.compression='{kind}'", "checkpoint.every_steps=10",
                                "training.epochs=2", f"strategy.by_node={str(by_node).lower()}"]
            for arg in ("--set", setting)]
    whole = launch(2, "train", "whole.toml", "-q", *sets)
    assert whole.returncode == 0, whole.stderr
    assert records(tmp_path / "whole")[-1].get("by_node", False) == by_node
    middle = checkpoint.read(tmp_path / "whole" / "ckpt-000000170.h5")
    end = checkpoint.read(tmp_path / "whole" / "ckpt-000000180.h5")
    assert middle.shapes["strategy"]["residual_by_rank"][0] == 2
    assert "residual_by_rank" not in end.shapes["strategy"]
    assert end.strategy_tensor("residual").any()
    for step, found in ((170, middle), (180, end)):
        again = launch(2, "train", f"again-{step}.toml", "-q", "--resume", str(found.path),
                       *sets)
        assert again.returncode == 0, again.stderr
        a, b = final(tmp_path / "whole"), final(tmp_path / f"again-{step}")
        for name, value in a.params.items():
            np.testing.assert_array_equal(b.params[name], value, err_msg=f"{name} from {step}")
    three = launch(3, "train", "three.toml", "-q", "--resume", str(middle.path), *sets)
    assert three.returncode == 0, three.stderr
    losses = [record["loss"] for record in records(tmp_path / "three") if "loss" in record]
    assert len(losses) == 2 and losses[-1] < records(tmp_path / "whole")[0]["loss"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings, message", [
    (["strategy.compression='fp8'"],
     "unknown allreduce compression 'fp8'; allowed: bfloat16, float16, none, powersgd"),
    (["strategy.compression='powersgd'", "strategy.powersgd_rank=0"],
     "allreduce: powersgd_rank must be a whole number of at least 1; received: "
     "powersgd_rank=0"),
    (["strategy.powersgd_rank=2"],
     "allreduce: powersgd_rank applies to compression 'powersgd' only; received: "
     "compression='none'"),
    (["strategy.name='ps'", "strategy.compression='powersgd'"],
     "unknown ps compression 'powersgd'; allowed: bfloat16, float16, none"),
    (["strategy.name='ps'", "strategy.mode='sync'", "strategy.compression='float16'"],
     "ps: staleness, staleness_aware_lr, push_every, pull_every and compression apply to "
     "mode 'async' only"),
], ids=["unknown", "rank-0", "rank-without-powersgd", "ps-powersgd", "ps-sync"])
def test_bad_compression_settings_are_one_line_and_exit_2_on_every_rank(launch, settings,
                                                                        message):
    run = launch(2, "train", "-q", *[arg for setting in settings for arg in ("--set", setting)])
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr



@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", HALF)
def test_compressed_pushes_train_the_default_job_within_a_point_of_full_ones(tmp_path, launch,
                                                                           kind):
    """ps async, one server and one worker (the same pushes in the same order each run)."""
    final_accuracy = {}
    for compression in ("none", kind):
        run = launch(2, "train", "-q", "--set", "strategy.name='ps'",
                     "--set", f"strategy.compression='{compression}'",
                     "--set", f"run.name='{compression}'")
        assert run.returncode == 0, run.stderr
        lines = records(tmp_path / "runs" / compression)
        final_accuracy[compression] = [line for line in lines if "val_accuracy" in line][-1][
            "val_accuracy"]
    assert final_accuracy[kind] >= final_accuracy["none"] - 0.01, final_accuracy


@pytest.mark.timeout(180)
def test_compressed_pushes_resume_exactly_with_the_workers_residual(tmp_path, launch):
    """Each epoch's checkpoint keeps every rank's residual (the server's: zeros); resumed
    from the first, the run ends bit for bit where an uninterrupted one does."""
    sets = ["--set", "strategy.name='ps'", "--set", "strategy.compression='bfloat16'"]
    for name, epochs in (("whole", 2), ("part", 1), ("part", 2)):
        run = launch(2, "train", "-q", *sets, "--set", f"run.name='{name}'",
                     "--set", f"training.epochs={epochs}", "--resume", "auto")
        assert run.returncode == 0, run.stderr
    first = checkpoint.read(sorted((tmp_path / "runs" / "part").glob("ckpt-*.h5"))[0])
    rows = first.strategy_tensor("residual_by_rank")
    assert not rows[0].any() and rows[1].any()
    a, b = final(tmp_path / "runs" / "whole"), final(tmp_path / "runs" / "part")
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
