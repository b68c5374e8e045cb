"""The reproducible mode under real `mpiexec`: the default digits job gives the same
SHA-256 of its parameters, and the same figures (loss, accuracy, validation) to the last
bit, on 1, 2, 3 and 4 ranks, allreduce and sync ps alike (and of its optimizer state
across a resume on another number of ranks), with Dropout, where the default mode does
not."""

import hashlib
import json
import subprocess
import sys

import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC

REPRODUCIBLE = ["--set", "strategy.reproducible=true", "--set", "strategy.chunk_size=8"]
PS_SYNC = ["--set", "strategy.name='ps'", "--set", "strategy.mode='sync'"]
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


def outcome(path) -> tuple:
    """The parameters' SHA-256 and every epoch's figures, as stored."""
    return digest(path), checkpoint.read(path).history


@pytest.mark.timeout(400)
def test_the_same_parameters_and_figures_bit_for_bit_on_1_2_3_4_ranks(tmp_path, launch):
    """32 samples a step in chunks of 8: 4 chunks on 1 rank, 2 + 2, 1 + 1 + 2, 1 each, and
    ps's workers alike (1, 2, 3 of them); the model has a Dropout layer, whose masks are
    drawn per chunk. The validation set's batches are each evaluated whole, by one rank."""
    epochs = ["--set", "training.epochs=3", *DROPOUT]
    found = {ranks: outcome(train(launch, tmp_path, ranks, f"r{ranks}", *REPRODUCIBLE, *epochs))
             for ranks in (None, 2, 3, 4)}
    found.update({f"ps{ranks}": outcome(train(launch, tmp_path, ranks, f"ps{ranks}", *PS_SYNC,
                                              *REPRODUCIBLE, *epochs)) for ranks in (2, 3, 4)})
    assert all(value == found[None] for value in found.values()), found
    assert set(found[None][1]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    default = [digest(train(launch, tmp_path, ranks, f"d{ranks}", *epochs)) for ranks in (1, 2)]
    assert default[0] != default[1]  # what the mode is for


@pytest.mark.timeout(300)
@pytest.mark.parametrize("first, then", [([], []), (PS_SYNC, PS_SYNC), ([], PS_SYNC)],
                         ids=["allreduce", "ps", "allreduce-then-ps"])
def test_a_resume_on_another_number_of_ranks_keeps_the_bits(tmp_path, launch, first, then):
    """4 ranks for 2 epochs, then 2 ranks for 2 more: 1 rank's 4 epochs, parameters,
    optimizer state and figures (the fixed-point exponent's source travels in the
    checkpoint; Dropout masks depend on the epoch, step and chunk alone)."""
    train(launch, tmp_path, 4, "split", *first, *REPRODUCIBLE, *DROPOUT, "--set",
          "training.epochs=2")
    split = train(launch, tmp_path, 2, "split", *then, *REPRODUCIBLE, *DROPOUT, "--set",
                  "training.epochs=4", "--resume", "auto")
    whole = train(launch, tmp_path, None, "whole", *REPRODUCIBLE, *DROPOUT, "--set",
                  "training.epochs=4")
    assert checkpoint.read(split).strategy_tensor("fixed_point_largest")[0] > 0
    for part in ("params", "optimizer"):
        assert digest(split, part) == digest(whole, part), part
    assert checkpoint.read(split).history == checkpoint.read(whole).history


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
    (["strategy.name='ps'", "strategy.reproducible=true"],
     "ps: reproducible applies to mode 'sync' only; received: mode='async'"),
    (["strategy.name='ps'", "strategy.mode='sync'", "strategy.chunk_size=2.5"],
     "ps: chunk_size must be a whole number of at least 1; received: chunk_size=2.5"),
], ids=["overlap", "chunk-0", "not-a-bool", "ps-async", "ps-chunk"])
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
            "the 3 training ranks train none")
    assert (run.stdout + run.stderr).count(said) == 1, run.stdout + run.stderr
    assert ("1 BLAS thread per rank (reproducible: BLAS's bits depend on its thread count)"
            in run.stdout + run.stderr)


EVALUATE = """
import json, sys
from mpinn.dist import world
from mpinn.inference import prepare_evaluation

figures = prepare_evaluation(sys.argv[1]).run(world())
if world().rank == 0:
    print(json.dumps(figures))
"""


@pytest.mark.timeout(200)
def test_evaluate_gives_the_training_figures_bit_for_bit_on_any_world_size(tmp_path, launch):
    """`mpinn evaluate`'s figures for a reproducible job: its batches, summed exactly."""
    final = train(launch, tmp_path, 3, "run", *REPRODUCIBLE, "--set", "training.epochs=2")
    history = checkpoint.read(final).history
    (tmp_path / "evaluate.py").write_text(EVALUATE)
    for ranks in (1, 2, 4):
        run = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "evaluate.py",
                              str(final)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=100)
        assert run.returncode == 0, run.stderr
        figures = json.loads(run.stdout.splitlines()[-1])
        assert figures == {"loss": history["val_loss"][-1],
                           "accuracy": history["val_accuracy"][-1]}, ranks
