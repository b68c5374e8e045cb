"""An epoch's sums: exact ones (the reproducible modes') give the correctly rounded sum in
any order and grouping, keep Inf and NaN apart, and travel between ranks as text without
a bit lost."""

import json
import math

import numpy as np
import pytest

from mpinn.epoch_sums import EpochSums, ExactSum
from mpinn.metrics import SparseCategoricalAccuracy


def exact_sum(values) -> ExactSum:
    total = ExactSum()
    for value in values:
        total.add(value)
    return total


def test_any_order_and_grouping_gives_the_correctly_rounded_sum():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(500) * 10.0 ** rng.uniform(-300, 300, 500)
    values[:3] = [5e-324, -5e-324, 1.7e308]  # the smallest step, and near the largest
    expected = math.fsum(values)  # correctly rounded
    found = set()
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(values)
        cut = sorted(np.random.default_rng(seed).integers(0, len(order), 3))
        parts = [exact_sum(part) for part in np.split(order, cut)]
        total = ExactSum()
        for part in parts[::-1]:
            total += part
        found.add(float(total))
    assert found == {expected}
    assert float(sum(values[::-1])) != float(sum(values))  # float sums: not so


def test_non_finite_values_sum_apart_and_win():
    assert float(exact_sum([1.0, math.inf, 2.0])) == math.inf
    assert math.isnan(float(exact_sum([math.inf, 3.0, -math.inf])))
    assert math.isnan(float(exact_sum([math.nan, 1.0])))
    assert float(exact_sum([1.7e308, 1.7e308])) == math.inf  # past float64: overflows
    assert float(exact_sum([])) == 0.0


def test_text_round_trip_keeps_every_bit():
    total = exact_sum([0.1, 1e-300, -3e200, math.nan])
    back = ExactSum.from_json(json.loads(json.dumps(total.to_json())))
    assert back.steps == total.steps and math.isnan(back.special)
    finite = exact_sum([0.1, 1e-300, 2.5])
    assert float(ExactSum.from_json(json.loads(json.dumps(finite.to_json())))) == float(finite)


@pytest.mark.parametrize("exact", [False, True])
def test_epoch_means_with_skipped_batches(exact):
    sums = EpochSums([SparseCategoricalAccuracy()], skip_nonfinite=True, exact=exact)
    out = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    sums.add(0.5, out, np.array([0, 1, 1]))
    sums.add(math.nan, out, np.array([0, 0, 0]))  # skipped, not counted
    sums.add(0.25, out[:1], np.array([1]))
    means = sums.means()
    assert means == {"loss": pytest.approx((0.5 * 3 + 0.25) / 4), "accuracy": 0.5}
    assert sums.mean_loss() == means["loss"]
