"""Bad arguments raise one clear, one-line error naming the value and what is allowed."""

import numpy as np
import pytest

import mpinn
from mpinn import ConfigError, DataError, Dense, PluginError, Sequential


def raises_one_line(error, *fragments):
    """Context: the call raises `error` whose one-line message holds every fragment."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(error)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message
            for fragment in fragments:
                assert fragment in message, f"{fragment!r} not in {message!r}"
            return handled

    return Check()


@pytest.mark.parametrize("make, fragments", [
    (lambda: Dense(4, activation="relu6"), ["activation 'relu6'", "allowed:", "softmax", "gelu"]),
    (lambda: Dense(-3), ["units", "Received: units=-3"]),
    (lambda: Dense(2.5), ["units", "Received: units=2.5"]),
    (lambda: Dense(4, kernel_initializer="lecun"), ["initializer 'lecun'", "he_normal"]),
    (lambda: Dense(4, kernel_regularizer="l3"), ["regularizer 'l3'", "l1_l2"]),
    (lambda: Dense(4, input_shape=(8, 8)), ["input_shape", "(8, 8)"]),
    (lambda: mpinn.Dropout(1.5), ["rate", "1.5"]),
    (lambda: mpinn.SGD(learning_rate=-0.1), ["learning_rate", "-0.1"]),
    (lambda: mpinn.Adam(learning_rate=0), ["learning_rate", "=0"]),
    (lambda: mpinn.SGD(momentum=1.2), ["momentum", "1.2"]),
    (lambda: mpinn.Adam(beta_1=1.0), ["beta_1", "1.0"]),
    (lambda: mpinn.Adam(global_clipnorm=-1), ["global_clipnorm", "-1"]),
    (lambda: mpinn.regularizers.L2(-0.1), ["l2", "-0.1"]),
    (lambda: Sequential(dtype="float16"), ["dtype 'float16'", "float32", "float64"]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_constructor_arguments(make, fragments):
    with raises_one_line(ConfigError, *fragments):
        make()


def small_model():
    model = Sequential([Dense(8, activation="relu", input_shape=(4,)),
                        Dense(3, activation="softmax")], seed=0)
    return model


@pytest.mark.parametrize("kwargs, fragments", [
    ({"loss": "hinge"}, ["loss 'hinge'", "allowed:", "sparse_categorical_crossentropy"]),
    ({"loss": "mse", "optimizer": "lbfgs"}, ["optimizer 'lbfgs'", "adam", "rmsprop"]),
    ({"loss": "mse", "metrics": ["f1"]}, ["metric 'f1'", "accuracy"]),
    ({}, ["needs a loss"]),
])
def test_bad_compile_arguments(kwargs, fragments):
    with raises_one_line(ConfigError, *fragments):
        small_model().compile(**kwargs)


@pytest.fixture
def compiled():
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_x_and_y_length_mismatch(compiled):
    with raises_one_line(DataError, "x has 10", "y has 9"):
        compiled.fit(np.zeros((10, 4)), np.zeros(9, dtype=int), verbose=0)


def test_labels_out_of_range_for_output_layer(compiled):
    with raises_one_line(DataError, "label 3", "dense_1", "3 units", "allowed: 0..2"):
        compiled.fit(np.zeros((4, 4)), np.array([0, 1, 2, 3]), verbose=0)
    with raises_one_line(DataError, "label -1"):
        compiled.evaluate(np.zeros((2, 4)), np.array([0, -1]))


def test_calling_a_loss_checks_its_arguments():
    loss = mpinn.losses.get("sparse_categorical_crossentropy")
    with raises_one_line(DataError, "label 5", "allowed: 0..1"):
        loss([0, 5], [[0.5, 0.5], [0.5, 0.5]])
    with raises_one_line(DataError, "y_true", "y_pred", "has 3"):
        mpinn.losses.get("mse")([1.0, 2.0, 3.0], [1.0, 2.0])


def test_non_integer_class_labels(compiled):
    with raises_one_line(DataError, "0.5", "not a class index"):
        compiled.fit(np.zeros((2, 4)), np.array([0.5, 1.0]), verbose=0)


def test_wrong_input_width(compiled):
    with raises_one_line(DataError, "x has 5 features", "dense_0", "input_dim=4"):
        compiled.fit(np.zeros((6, 5)), np.zeros(6, dtype=int), verbose=0)
    with raises_one_line(DataError, "x has 3 features", "input_dim=4"):
        compiled.predict(np.zeros((2, 3)))


def test_wrong_validation_data_is_named(compiled):
    with raises_one_line(DataError, "x_val has 2 features"):
        compiled.fit(np.zeros((6, 4)), np.zeros(6, dtype=int), verbose=0,
                     validation_data=(np.zeros((2, 2)), np.zeros(2, dtype=int)))


def test_one_hot_width_must_match_output_units():
    model = small_model()
    model.compile("adam", "categorical_crossentropy")
    with raises_one_line(DataError, "shape (4, 2)", "3 units", "must have shape (4, 3)"):
        model.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0)
    with raises_one_line(DataError, "sparse_categorical_crossentropy"):
        model.fit(np.zeros((4, 4)), np.zeros(4), verbose=0)


def test_binary_targets_must_lie_in_unit_interval():
    model = Sequential([Dense(1, activation="sigmoid", input_shape=(2,))], seed=0)
    model.compile("sgd", "binary_crossentropy")
    with raises_one_line(DataError, "holds 2", "[0, 1]"):
        model.fit(np.zeros((3, 2)), np.array([0, 1, 2]), verbose=0)


def test_nan_in_inputs_is_reported_with_its_sample(compiled):
    x = np.zeros((5, 4))
    x[3, 1] = np.nan
    with raises_one_line(DataError, "NaN or Inf", "sample 3"):
        compiled.fit(x, np.zeros(5, dtype=int), verbose=0)


def test_fit_before_compile_and_bad_fit_arguments(compiled):
    with raises_one_line(ConfigError, "compile the model first"):
        small_model().fit(np.zeros((2, 4)), np.zeros(2), verbose=0)
    with raises_one_line(ConfigError, "batch_size", "Received: batch_size=0"):
        compiled.fit(np.zeros((2, 4)), np.zeros(2, dtype=int), batch_size=0, verbose=0)
    with raises_one_line(ConfigError, "validation_split", "1.2"):
        compiled.fit(np.zeros((2, 4)), np.zeros(2, dtype=int), validation_split=1.2)
    with raises_one_line(ConfigError, "verbose 3", "allowed: 0, 1, 2"):
        compiled.fit(np.zeros((2, 4)), np.zeros(2, dtype=int), verbose=3)


def test_set_weights_checks_count_and_shapes(compiled):
    weights = compiled.get_weights()
    with raises_one_line(ConfigError, "4 weight arrays", "received 3"):
        compiled.set_weights(weights[:3])
    weights[2] = np.zeros((8, 2))
    with raises_one_line(ConfigError, "dense_1/kernel", "(8, 3)", "(8, 2)"):
        compiled.set_weights(weights)


def test_unknown_backend_lists_installed_ones():
    with raises_one_line(PluginError, "'tpu'", "installed:", "numpy"):
        Sequential(backend="tpu")


def test_duplicate_layer_names():
    with raises_one_line(ConfigError, "'hidden'", "used twice"):
        Sequential([Dense(2, name="hidden", input_dim=2), Dense(2, name="hidden")])


def test_errors_are_value_errors_too():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
