"""The classic examples, run as a user would (their main()), with the results checked."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, **kwargs):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(verbose=0, **kwargs)


def test_linear_regression_recovers_slope_and_intercept():
    result = run_example("linear_regression")
    assert abs(result["slope"] - 1.5) < 0.1
    assert abs(result["intercept"] - 0.8) < 0.1


def test_xor_is_learned():
    result = run_example("xor")
    np.testing.assert_array_equal(result["predicted"], result["expected"])


def test_binary_classifier_8_10_8_1():
    result = run_example("binary_classifier")
    shapes = [w.shape for w in result["model"].get_weights()]
    assert shapes == [(8, 10), (10,), (10, 8), (8,), (8, 1), (1,)]
    assert result["test_accuracy"] > 0.85


@pytest.mark.slow
def test_mnist_shaped_mlp():
    result = run_example("mnist_mlp", epochs=5)
    shapes = [w.shape for w in result["model"].get_weights()]
    assert shapes == [(784, 64), (64,), (64, 10), (10,)]
    assert result["test_accuracy"] > 0.93
