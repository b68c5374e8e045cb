"""A strategy's own checkpoint state (/strategy) that does not fit the model, on real MPI."""

import shutil

import h5py
import numpy as np
import pytest

from mpinn import checkpoint

LOCAL_SGD = ["--set", "strategy.name='local_sgd'", "--set", "strategy.outer_lr=0.7"]
FLOAT16 = ["--set", "strategy.compression='float16'"]


def with_strategy_tensor(source, target, name, shape):
    """A copy of the checkpoint `source` whose /strategy/<name> has `shape` (checksummed,
    finite: only its shape is wrong)."""
    shutil.copyfile(source, target)
    with h5py.File(target, "a") as file:
        if name in file["strategy"]:
            del file["strategy"][name]
        file["strategy"].create_dataset(name, data=np.zeros(shape, np.float32), chunks=shape,
                                        fletcher32=True)
    return target


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sets, name, rows", [
    (LOCAL_SGD, "outer_anchor", None), (LOCAL_SGD, "params_by_rank", 3),
    (FLOAT16, "residual", None), (FLOAT16, "residual_by_rank", 3),
], ids=["short-anchor", "parameter-rows-of-3-ranks", "short-residual", "residual-rows-of-3-ranks"])
def test_state_of_the_wrong_shape_is_one_line_and_exit_2_on_every_rank(tmp_path, launch, sets,
                                                                       name, rows):
    assert launch(2, "train", "-q", *sets, "--set", "training.epochs=1").returncode == 0
    trained = tmp_path / "runs" / "digits" / "final.h5"
    size = sum(int(np.prod(shape)) for shape in checkpoint.read(trained).shapes["params"].values())
    shape, needed = ((size - 1,), (size,)) if rows is None else ((rows, size), (2, size))
    crafted = with_strategy_tensor(trained, tmp_path / "crafted.h5", name, shape)
    run = launch(2, "train", "-q", "--resume", str(crafted), "--set", "run.name='again'", *sets)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"{crafted}: strategy state {name} has shape {shape}, the model needs {needed}"), lines


REPRODUCIBLE = ["--set", "strategy.reproducible=true", "--set", "strategy.chunk_size=8"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape, value, said", [
    ((2,), 0.0, "has shape (2,), the model needs (1,)"),
    ((1,), 0.0, "is 0.0, not above 0"),
    ((1,), -3.0, "is -3.0, not above 0"),
], ids=["two-values", "zero", "negative"])
def test_a_crafted_fixed_point_exponent_source_is_one_line_and_exit_2(tmp_path, launch, shape,
                                                                     value, said):
    """Reproducible mode's largest value sets the next step's exponent: it must be one
    number above 0."""
    assert launch(2, "train", "-q", *REPRODUCIBLE, "--set", "training.epochs=1").returncode == 0
    crafted = tmp_path / "crafted.h5"
    shutil.copyfile(tmp_path / "runs" / "digits" / "final.h5", crafted)
    with h5py.File(crafted, "a") as file:
        del file["strategy"]["fixed_point_largest"]
        file["strategy"].create_dataset("fixed_point_largest",
                                        data=np.full(shape, value, np.float32), fletcher32=True)
    run = launch(2, "train", "-q", "--resume", str(crafted), "--set", "run.name='again'",
                 *REPRODUCIBLE)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines == [f"mpinn: error: {crafted}: strategy state fixed_point_largest {said}"], lines
