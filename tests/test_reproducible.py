"""The reproducible mode in one process: sync ps's asks for allreduce's (the same chunks
on one rank), and training in chunks gives other bits than in whole batches."""

import numpy as np
from mpinn_strategies.allreduce import AllreduceStrategy

import mpinn
from mpinn.data import load_digits


def trained(strategy):
    x, y = load_digits()
    model = mpinn.Sequential([mpinn.Dense(16, activation="relu", input_shape=(64,)),
                              mpinn.Dropout(0.1), mpinn.Dense(10, activation="softmax")], seed=5)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[:400], y[:400], batch_size=40, epochs=2, verbose=0,
                        validation_split=0.25, strategy=strategy)
    return model.params.data.copy(), history.history


def test_sync_ps_on_one_rank_trains_as_allreduce_in_the_same_chunks():
    ps = mpinn.strategy("ps", mode="sync", reproducible=True, chunk_size=10)
    assert isinstance(ps, AllreduceStrategy) and ps.exact.chunk_size == 10
    params, history = trained(ps)
    same_params, same_history = trained(mpinn.strategy("allreduce", reproducible=True,
                                                       chunk_size=10))
    np.testing.assert_array_equal(params, same_params)
    assert history == same_history
    whole, _ = trained(None)
    assert not np.array_equal(params, whole)  # whole batches, one Dropout stream: not so
    assert type(mpinn.strategy("ps", mode="sync")).__name__ == "LocalStrategy"
