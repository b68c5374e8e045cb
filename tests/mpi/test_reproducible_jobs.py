"""allreduce's reproducible mode under real `mpiexec`: the default digits job gives the
same SHA-256 of its parameters on 1, 2, 3 and 4 ranks (and of its optimizer state across
a resume on another number of ranks), with Dropout, where the default mode does not."""

import hashlib
import subprocess
import sys

import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC

REPRODUCIBLE = ["--set", "strategy.reproducible=true", "--set", "strategy.chunk_size=8"]
DROPOUT = ["--set", 'model.layers=[{type="dense", units=64, activation="relu"}, '
           '{type="dropout", rate=0.2}, {type="dense", units=10, activation="softmax"}]']


def digest(path, part: str = "params") -> str:
    found = checkpoint.read(path)
    if part == "params":
        tensors = [found.params[name] for name in sorted(found.params)]
    else:
        tensors = [array for slot in sorted(found.optimizer)
                   for _, array in sorted(found.optimizer[slot].items())]
    return hashlib.sha256(b"".join(tensor.tobytes() for tensor in tensors)).hexdigest()


def train(launch, tmp_path, ranks, name, *settings):
    run = launch(ranks, "train", "-q", "--set", f"run.directory='{tmp_path / name}'",
                 *settings)
    assert run.returncode == 0, run.stderr
    return tmp_path / name / "final.h5"


@pytest.mark.timeout(300)
def test_the_same_parameters_bit_for_bit_on_1_2_3_4_ranks(tmp_path, launch):
    """32 samples a step in chunks of 8: 4 chunks on 1 rank, 2 + 2, 1 + 1 + 2, 1 each; the
    model has a Dropout layer, whose masks are drawn per chunk."""
    epochs = ["--set", "training.epochs=3", *DROPOUT]
    found = {ranks: digest(train(launch, tmp_path, ranks, f"r{ranks}", *REPRODUCIBLE, *epochs))
             for ranks in (None, 2, 3, 4)}
    assert len(set(found.values())) == 1, found
    default = [digest(train(launch, tmp_path, ranks, f"d{ranks}", *epochs)) for ranks in (1, 2)]
    assert default[0] != default[1]  # what the mode is for


@pytest.mark.timeout(300)
def test_a_resume_on_another_number_of_ranks_keeps_the_bits(tmp_path, launch):
    """4 ranks for 2 epochs, then 2 ranks for 2 more: 1 rank's 4 epochs, parameters and
    optimizer state (the fixed-point exponent's source travels in the checkpoint; Dropout
    masks depend on the epoch, step and chunk alone)."""
    train(launch, tmp_path, 4, "split", *REPRODUCIBLE, *DROPOUT, "--set", "training.epochs=2")
    split = train(launch, tmp_path, 2, "split", *REPRODUCIBLE, *DROPOUT, "--set",
                  "training.epochs=4", "--resume", "auto")
    whole = train(launch, tmp_path, None, "whole", *REPRODUCIBLE, *DROPOUT, "--set",
                  "training.epochs=4")
    assert checkpoint.read(split).strategy_tensor("fixed_point_largest")[0] > 0
    for part in ("params", "optimizer"):
        assert digest(split, part) == digest(whole, part), part


# a gradient that outgrows the exponent: no headroom, and a first guess far too small, so
# the first step's chunks overflow it and every rank computes them again
OUTGROWN = """
import hashlib, sys
import mpinn
from mpinn.data import load_digits
from mpinn_strategies import reproducible

reproducible.HEADROOM_BITS, reproducible.FIRST_LARGEST = 0, 1e-30
x, y = load_digits()
model = mpinn.Sequential([mpinn.Dense(16, activation="relu", input_shape=(64,)),
                          mpinn.Dense(10, activation="softmax")], seed=3)
model.compile("adam", "sparse_categorical_crossentropy")
strategy = mpinn.strategy("allreduce", reproducible=True, chunk_size=10)
model.fit(x[:300], y[:300], batch_size=40, epochs=2, verbose=0, strategy=strategy)
if strategy.rank == 0:
    print(hashlib.sha256(model.params.data.tobytes()).hexdigest())
"""


@pytest.mark.timeout(120)
def test_chunks_past_the_exponent_are_computed_again_alike_on_every_world_size(tmp_path):
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed")
    (tmp_path / "outgrown.py").write_text(OUTGROWN)
    found = []
    for ranks in (1, 3):
        run = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "outgrown.py"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=100)
        assert run.returncode == 0, run.stderr
        found.append(run.stdout.split()[-1])
    assert found[0] == found[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings, message", [
    (["strategy.reproducible=true", "strategy.overlap=true"],
     "allreduce: reproducible goes with overlap = false, compression 'none' and by_node "
     "'auto' or false; received: overlap=True, compression='none', by_node='auto'"),
    (["strategy.reproducible=true", "strategy.chunk_size=0"],
     "allreduce: chunk_size must be a whole number of at least 1; received: chunk_size=0"),
    (["strategy.reproducible='yes'"],
     "allreduce: reproducible must be true or false; received: reproducible='yes'"),
], ids=["overlap", "chunk-0", "not-a-bool"])
def test_bad_reproducible_settings_are_one_line_and_exit_2_on_every_rank(launch, settings,
                                                                         message):
    run = launch(2, "train", "-q", *[arg for setting in settings for arg in ("--set", setting)])
    assert run.returncode == 2, run.stderr
    said = [line for line in run.stderr.splitlines() if line.strip()]
    assert said and said[0].endswith(message), run.stderr
    assert len(said) == 1, run.stderr


@pytest.mark.timeout(120)
def test_rank_0_says_the_chunks_and_the_ranks_left_without_one(tmp_path, launch):
    run = launch(3, "train", "--set", "strategy.reproducible=true", "--set",
                 "training.epochs=1", "--set", f"run.directory='{tmp_path / 'run'}'")
    assert run.returncode == 0, run.stderr
    said = ("mpinn: note: reproducible: each step of 32 samples is 2 chunk(s) of 16, so 1 of "
            "the 3 ranks train none")
    assert (run.stdout + run.stderr).count(said) == 1, run.stdout + run.stderr
    assert ("1 BLAS thread per rank (reproducible: BLAS's bits depend on its thread count)"
            in run.stdout + run.stderr)
