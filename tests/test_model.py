"""Sequential's Keras-style API, its flat parameter buffer, and training results."""

import io

import numpy as np
import pytest

import mpinn
from mpinn import Dense, Dropout, EarlyStopping, Sequential
from mpinn.data import load_digits, make_blobs, train_test_split


def digits_mlp(seed=0, dtype="float32", backend="numpy"):
    model = Sequential([
        Dense(64, activation="relu", input_shape=(64,)),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ], seed=seed, dtype=dtype, backend=backend)
    model.compile(optimizer=mpinn.Adam(0.001), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits()
    return train_test_split(x, y, test_fraction=0.2, seed=0)


def test_digits_mlp_reaches_096_on_holdout_and_is_bit_reproducible(digits_split, backend):
    x_train, x_test, y_train, y_test = digits_split
    runs = []
    for _ in range(2):
        model = digits_mlp(seed=0, backend=backend)
        history = model.fit(x_train, y_train, batch_size=32, epochs=30, verbose=0)
        runs.append((model, history))
    (first, history), (second, _) = runs
    _, accuracy = first.evaluate(x_test, y_test)
    assert accuracy >= 0.96
    assert len(history.history["loss"]) == 30
    assert history.history["loss"][-1] < history.history["loss"][0]
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes()


def test_different_seeds_give_different_weights():
    first, second = digits_mlp(seed=0), digits_mlp(seed=1)
    assert not np.array_equal(first.get_weights()[0], second.get_weights()[0])


def test_parameters_live_in_one_flat_buffer_with_sorted_named_views():
    model = digits_mlp()
    model.build()
    params = model.params
    assert params.names == sorted(params.names)
    assert params.names[:2] == ["dense_0/bias", "dense_0/kernel"]
    assert params.data.shape == (model.count_params(),) == (64 * 64 + 64 + 64 * 64 + 64 + 650,)
    kernel = params.values["dense_0/kernel"]
    assert kernel.shape == (64, 64) and np.shares_memory(kernel, params.data)
    assert np.shares_memory(params.grads["dense_2/bias"], params.grad)
    params.data[:] = 0.5  # writes through the buffer reach the layers
    assert (model.layers[0].values["kernel"] == 0.5).all()


def test_float64_is_selectable_end_to_end(digits_split, backend):
    x_train, _, y_train, _ = digits_split
    model = digits_mlp(dtype="float64", backend=backend)
    model.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    assert model.params.data.dtype == np.float64
    assert model.predict(x_train[:3]).dtype == np.float64


def test_add_input_dim_and_automatic_names():
    model = Sequential(seed=0)
    model.add(Dense(8, activation="tanh", input_dim=3))
    model.add(Dropout(0.1))
    model.add(Dense(2))
    assert [layer.name for layer in model.layers] == ["dense_0", "dropout_0", "dense_1"]
    assert model.count_params() == 3 * 8 + 8 + 8 * 2 + 2


def test_model_builds_from_data_when_no_input_shape_given():
    x, y = make_blobs(samples=64, centers=3, features=5)
    model = Sequential([Dense(4, activation="relu"), Dense(3, activation="softmax")], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.get_weights()[0].shape == (5, 4)


def test_summary_lists_layers_and_total(capsys):
    digits_mlp().summary()
    text = capsys.readouterr().out
    assert "dense_0 (Dense)" in text and "(None, 10)" in text
    assert "Total params: 8,970" in text


def test_get_and_set_weights_round_trip(backend):
    source, target = digits_mlp(seed=0, backend=backend), digits_mlp(seed=1, backend=backend)
    target.set_weights(source.get_weights())
    x = np.random.default_rng(0).random((5, 64))
    np.testing.assert_array_equal(source.predict(x), target.predict(x))


def test_fit_history_with_validation_split_and_evaluate_forms(digits_split, backend):
    x_train, x_test, y_train, y_test = digits_split
    model = digits_mlp(backend=backend)
    history = model.fit(x_train, y_train, epochs=2, verbose=0, validation_split=0.25)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1]
    logs = model.evaluate(x_test, y_test, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    assert model.evaluate(x_test, y_test) == [logs["loss"], logs["accuracy"]]
    probabilities = model.predict(x_test)
    assert probabilities.shape == (len(x_test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == y_test).mean()
    assert accuracy == pytest.approx(logs["accuracy"])


def test_validation_split_takes_the_last_samples_before_shuffling():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10) % 2
    model = Sequential([Dense(2, activation="softmax", input_shape=(2,))], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    seen = []

    class Record(mpinn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["val_loss"])

    model.fit(x, y, epochs=1, verbose=0, validation_split=0.2, callbacks=[Record()])
    expected = model.evaluate(x[8:], y[8:])
    assert seen[0] == pytest.approx(expected)


def test_dropout_is_active_only_in_training(backend):
    layer = Dropout(0.5)
    model = Sequential([Dense(200, input_shape=(10,), kernel_initializer="ones"), layer],
                       seed=0, backend=backend)
    model.compile("sgd", "mse")
    x = np.ones((4, 10), dtype=np.float32)
    inference = model.predict(x)
    np.testing.assert_array_equal(inference, 10.0)
    training = model.backend.to_numpy(
        model._forward(model.backend.asarray(x, np.float32), training=True))
    dropped = (training == 0).mean()
    assert 0.35 < dropped < 0.65
    np.testing.assert_array_equal(training[training != 0], 20.0)  # kept ones scaled by 2


def test_early_stopping_stops_and_restores_best_weights():
    x, y = make_blobs(samples=200, centers=2, features=4, seed=1)
    model = Sequential([Dense(2, activation="softmax", input_shape=(4,))], seed=0)
    model.compile(mpinn.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    after_first_epoch = []

    class Snapshot(mpinn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                after_first_epoch.extend(self.model.get_weights())

    stopper = EarlyStopping(monitor="loss", patience=2, min_delta=10.0,
                            restore_best_weights=True)
    history = model.fit(x, y, epochs=50, verbose=0, callbacks=[Snapshot(), stopper])
    assert history.epoch == [0, 1, 2]  # only epoch 0 improves on +inf by more than 10
    assert stopper.stopped_epoch == 2
    for restored, best in zip(model.get_weights(), after_first_epoch, strict=True):
        np.testing.assert_array_equal(restored, best)


def test_learning_rate_schedule_drives_optimizer():
    schedule = mpinn.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = mpinn.SGD(learning_rate=schedule)
    model = Sequential([Dense(1, input_shape=(1,))], seed=0)
    model.compile(optimizer, "mse")
    x, y = np.ones((4, 1)), np.zeros((4, 1))
    model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    assert optimizer.iterations == 3
    assert optimizer.learning_rate(optimizer.iterations) == pytest.approx(0.0125)


def test_batch_hooks_see_the_running_epoch_means():
    x, y = make_blobs(samples=64, centers=2, features=3)
    model = Sequential([Dense(2, activation="softmax", input_shape=(3,))], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    seen = []

    class Recorder(mpinn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs))

    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Recorder()])
    assert [sorted(logs) for logs in seen] == [["accuracy", "loss"]] * 4
    assert seen[-1] == pytest.approx({key: values[-1]
                                      for key, values in history.history.items()})


def test_verbose_modes_print_progress(capsys):
    x, y = make_blobs(samples=64, centers=2, features=3)
    model = Sequential([Dense(2, activation="softmax", input_shape=(3,))], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "accuracy" in lines[1]
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_auto_progress_is_live_on_a_terminal_but_not_under_open_mpi(monkeypatch):
    from mpinn.callbacks import ProgressLogger

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    assert ProgressLogger("auto", 1, 10, 5, stream=Terminal()).live
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")  # Open MPI gives every rank a terminal
    assert not ProgressLogger("auto", 1, 10, 5, stream=Terminal()).live
    assert ProgressLogger("bar", 1, 10, 5, stream=Terminal()).live
