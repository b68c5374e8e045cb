"""The watchdog's wording: rank lists and places in a run, as its messages show them (the
waits themselves are tested with real stalled ranks in tests/faults/test_stalls.py)."""

import pytest

from mpinn.dist.watchdog import ranks_text, where_text


@pytest.mark.parametrize("ranks, text", [
    ([3], "rank 3"),
    ([5, 3], "ranks 3, 5"),
    ([1, 2, 3, 7], "ranks 1-3, 7"),
    ([0, 1, 4, 5, 6, 9], "ranks 0-1, 4-6, 9"),
])
def test_ranks_text_collapses_runs(ranks, text):
    assert ranks_text(ranks) == text


@pytest.mark.parametrize("where, text", [
    ((0, 0), "epoch 1 step 1"),
    ((2, 41), "epoch 3 step 42"),
    ((1, "validation"), "epoch 2 validation"),
    ("setup", "setup"),
])
def test_where_text_counts_from_1(where, text):
    assert where_text(where) == text
