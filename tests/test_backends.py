"""Every installed backend against the backend contract, and the backends against each other
(the comparisons run where two backends can run, e.g. NumPy and CuPy on a GPU machine)."""

import json

import numpy as np
import pytest

import mpinn
from mpinn import Dense, Sequential
from mpinn.backend import BackendUnavailable, get_backend, installed_backends
from mpinn.data import load_digits


def runnable_backends() -> list[str]:
    return [name for name, reason in installed_backends().items() if reason is None]


def test_arrays_cross_between_host_and_backend(backend):
    b = get_backend(backend)
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_backend = b.asarray(host, dtype=np.float64)
    assert isinstance(on_backend, b.xp.ndarray) and on_backend.dtype == np.float64
    np.testing.assert_array_equal(b.to_numpy(on_backend), host)
    staging = b.host_empty((3, 4), np.float64)
    b.to_host(on_backend * 2, out=staging)
    np.testing.assert_array_equal(staging, host * 2)
    b.from_host(staging + 1, out=on_backend)
    b.synchronize()
    np.testing.assert_array_equal(b.to_numpy(on_backend), host * 2 + 1)


def test_take_rows_gathers_into_the_given_array(backend):
    b = get_backend(backend)
    x = b.asarray(np.arange(20, dtype=np.float32).reshape(5, 4))
    index = b.asarray(np.array([4, 0, 2]))
    out = b.xp.empty((3, 4), dtype=np.float32)
    b.take_rows(x, index, out)
    np.testing.assert_array_equal(b.to_numpy(out), b.to_numpy(x)[[4, 0, 2]])


def test_random_state_round_trips_through_json(backend):
    b = get_backend(backend)
    seed = np.random.SeedSequence(7, spawn_key=(2, 1))
    rng = b.rng(seed)
    first = b.to_numpy(rng.random((64, 8), dtype=np.float32))
    assert first.dtype == np.float32 and 0 <= first.min() and first.max() < 1
    state = json.loads(json.dumps(b.rng_state(rng)))
    ahead = b.to_numpy(rng.random((64, 8), dtype=np.float32))
    assert not np.array_equal(first, ahead)
    b.set_rng_state(rng, state)
    np.testing.assert_array_equal(b.to_numpy(rng.random((64, 8), dtype=np.float32)), ahead)
    again = b.rng(seed)  # same seed: same stream
    np.testing.assert_array_equal(b.to_numpy(again.random((64, 8), dtype=np.float32)), first)
    other = b.rng(np.random.SeedSequence(8, spawn_key=(2, 1)))
    assert not np.array_equal(b.to_numpy(other.random((64, 8), dtype=np.float32)), first)


@pytest.mark.parametrize("variables, expected", [
    ({}, 0), ({"SLURM_LOCALID": "2"}, 2), ({"MPI_LOCALRANKID": "3", "SLURM_LOCALID": "0"}, 3),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 1),
])
def test_a_backend_starts_on_the_device_its_launcher_gives_it(monkeypatch, variables, expected):
    from mpinn_numpy import NumpyBackend

    from mpinn import plugins
    from mpinn.dist.comm import LAUNCHER_LOCAL_RANK_VARIABLES

    chosen = []

    class Recording(NumpyBackend):
        def select_device(self, local_rank):
            chosen.append(local_rank)

    for name in LAUNCHER_LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(plugins, "load", lambda group, name: Recording)
    get_backend.__wrapped__("recording")  # uncached: a fresh load
    assert chosen == [expected]


def test_a_backend_that_cannot_run_says_why_in_one_line():
    missing = [name for name, reason in installed_backends().items() if reason]
    if not missing:
        pytest.skip("every installed backend runs here")
    for name in missing:
        with pytest.raises(BackendUnavailable) as caught:
            Sequential([Dense(1, input_dim=1)], backend=name)
        assert "\n" not in str(caught.value) and str(caught.value)


# ------------------------------------------------------------------- across backends
def two_backends():
    found = runnable_backends()
    if len(found) < 2:
        pytest.skip(f"only {found} can run here: the comparisons need two backends")
    return found


def mlp(backend, seed=4):
    model = Sequential([Dense(32, activation="relu", input_shape=(64,)),
                        Dense(10, activation="softmax")], seed=seed, backend=backend)
    model.compile(mpinn.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_the_same_seed_trains_the_same_parameters_on_every_backend():
    x, y = load_digits()
    results = {}
    for name in two_backends():
        model = mlp(name)
        history = model.fit(x[:640], y[:640], batch_size=64, epochs=1, verbose=0)
        results[name] = (np.concatenate([w.ravel() for w in model.get_weights()]),
                         history.history["loss"][0])
    (reference, loss), *others = results.values()
    for weights, other_loss in others:
        assert np.abs(weights - reference).max() < 1e-5
        assert other_loss == pytest.approx(loss, rel=1e-5)


def test_a_checkpoint_continues_on_another_backend(tmp_path):
    x, y = load_digits()
    names = two_backends()
    for source, target in ((names[0], names[1]), (names[1], names[0])):
        trained = mlp(source)
        trained.fit(x, y, batch_size=64, epochs=2, verbose=0)
        trained.save(tmp_path / f"{source}.h5")
        moved = mpinn.load_model(tmp_path / f"{source}.h5", backend=target)
        assert moved.backend.name == target
        np.testing.assert_allclose(moved.predict(x[:50]), trained.predict(x[:50]), atol=1e-6)
        staying = mpinn.load_model(tmp_path / f"{source}.h5")
        for model in (moved, staying):
            model.fit(x, y, batch_size=64, epochs=3, initial_epoch=2, verbose=0)
        for a, b in zip(moved.get_weights(), staying.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------- device memory discipline, without a GPU
def strict_model(layers, loss, optimizer="adam", metrics=("accuracy",), dtype="float32"):
    from strict_device import StrictDeviceBackend

    model = Sequential(layers, seed=1, dtype=dtype, backend=StrictDeviceBackend())
    model.compile(optimizer, loss, metrics=list(metrics))
    return model


def strict_cases():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, 64)
    one_hot = np.eye(3, dtype=np.float32)[classes]
    binary = (rng.random((64, 1)) > 0.5).astype(np.float32)
    regression = rng.normal(size=(64, 2)).astype(np.float32)
    losses = mpinn.losses
    return {
        "sparse, softmax": ([Dense(8, "relu"), Dense(3, "softmax")],
                            "sparse_categorical_crossentropy", classes, {}),
        "sparse, logits": ([Dense(8, "tanh"), Dense(3)],
                           losses.SparseCategoricalCrossentropy(from_logits=True), classes, {}),
        "sparse, sigmoid": ([Dense(8, "gelu"), Dense(3, "sigmoid")],
                            "sparse_categorical_crossentropy", classes, {}),
        "categorical, dropout": ([Dense(8, "elu"), mpinn.Dropout(0.3), Dense(3, "softmax")],
                                 "categorical_crossentropy", one_hot, {"optimizer": "rmsprop"}),
        "categorical, activation layer": (
            [Dense(8, "leaky_relu"), Dense(3), mpinn.Activation("softmax")],
            "categorical_crossentropy", one_hot,
            {"optimizer": mpinn.SGD(0.1, momentum=0.9, nesterov=True)}),
        "binary, sigmoid": ([Dense(8, "relu"), Dense(1, "sigmoid")], "binary_crossentropy",
                            binary, {"optimizer": mpinn.AdamW(global_clipnorm=1.0)}),
        "binary, logits": ([Dense(8, "relu"), Dense(1)],
                           losses.BinaryCrossentropy(from_logits=True), binary,
                           {"optimizer": "adagrad"}),
        "mse, regularized": ([Dense(8, "relu", kernel_regularizer=mpinn.regularizers.L1L2(
            1e-3, 1e-3), bias_regularizer="l2"), Dense(2)], "mse", regression,
            {"metrics": ("mse", "mae")}),
        "mae, float64": ([Dense(8, "sigmoid"), Dense(2, use_bias=False)], "mae", regression,
                         {"metrics": ("mae",), "dtype": "float64"}),
    }


@pytest.mark.parametrize("case", sorted(strict_cases()))
def test_training_never_mixes_host_and_device_memory(case, tmp_path):
    layers, loss, y, options = strict_cases()[case]
    x = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    model = strict_model(layers, loss, **options)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    assert np.isfinite(history.history["val_loss"]).all()
    model.evaluate(x, y, batch_size=16)
    assert isinstance(model.predict(x, batch_size=16), np.ndarray)
    model.train_on_batch(x[:8], y[:8])
    model.save(tmp_path / "model.h5")
    mpinn.checkpoint.restore(model, mpinn.checkpoint.read(tmp_path / "model.h5"))
    device = model.backend
    model.fit(device.asarray(x), device.asarray(y), batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("verbose", [0, 2])  # 2: progress lines, a batch hook as in the CLI
@pytest.mark.parametrize("case", sorted(strict_cases()))
def test_a_training_step_reads_the_device_once(case, verbose, monkeypatch):
    """Each host read of a device number stalls the GPU until its queue drains: a step
    reads its loss (with the weight penalties, if any, in one more read; a clipped
    optimizer also reads the gradient norm), and an epoch each metric's total once."""
    from strict_device import DeviceArray

    reads = []
    for conversion in ("__float__", "__bool__", "__int__"):
        original = getattr(DeviceArray, conversion)
        monkeypatch.setattr(DeviceArray, conversion,
                            lambda self, original=original: reads.append(1) or original(self))
    layers, loss, y, options = strict_cases()[case]
    model = strict_model(layers, loss, **options)
    x, y = model.backend.asarray(np.ones((64, 5), np.float32)), model.backend.asarray(y)
    counts = []
    for epochs in (1, 3):  # the difference leaves out what fit reads once, checking data
        reads.clear()
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=verbose)
        counts.append(len(reads))
    per_step = 1 + bool(model._penalties) + any(
        isinstance(t, mpinn.optim.base.ClipByGlobalNorm) for t in model.optimizer.transforms)
    assert (counts[1] - counts[0]) / 2 == 4 * per_step + len(model.metrics)


def test_the_strict_stand_in_catches_mixing():
    from strict_device import StrictDeviceBackend

    device = StrictDeviceBackend()
    on_device = device.asarray(np.ones(3))
    with pytest.raises(TypeError, match="mixed with device arrays"):
        on_device + np.ones(3)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(on_device)
    with pytest.raises(TypeError, match="CuPy has no take"):
        np.take(on_device, device.asarray(np.array([0])), mode="clip")


def test_a_loss_called_directly_takes_device_arrays():
    from strict_device import StrictDeviceBackend

    device = StrictDeviceBackend()
    probabilities = np.random.default_rng(2).dirichlet(np.ones(4), size=6)
    labels = np.arange(6) % 4
    loss = mpinn.losses.get("sparse_categorical_crossentropy")
    expected = loss(labels, probabilities)
    assert loss(device.asarray(labels), device.asarray(probabilities)) == pytest.approx(expected)
