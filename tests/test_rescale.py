"""The Rescale layer (x * scale + offset) and the note on raw 0-255 inputs."""

import numpy as np
import pytest

import mpinn
from mpinn.data import load_digits
from mpinn.inputs import raw_pixel_note
from mpinn.layers import LAYER_TYPES, Rescale


def built(layer, width=3, dtype="float32"):
    layer.build(width, mpinn.get_backend("numpy"), dtype)
    return layer


def raw_digits():
    """The digits' 0-16 pixels stretched to 0-255 bytes, as MNIST stores them."""
    x, y = load_digits(scale=False)
    return np.round(x * 255 / 16).astype(np.uint8), y


def classifier(*first, backend="numpy"):
    model = mpinn.Sequential([*first, mpinn.Dense(32, activation="relu"),
                              mpinn.Dense(10, activation="softmax")], seed=0, backend=backend)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# ------------------------------------------------------------------------------ layer
def test_forward_and_backward_values():
    layer = built(Rescale(0.5, offset=-1.0), dtype="float64")
    x = np.array([[0.0, 2.0, 4.0], [1.0, -2.0, 10.0]])
    kept = x.copy()
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, [[-1.0, 0.0, 1.0], [-0.5, -2.0, 4.0]])
    np.testing.assert_array_equal(x, kept)  # the input (the caller's array) is untouched
    assert np.shares_memory(layer.forward(x, training=False), y)  # one work buffer, reused
    dy = np.array([[2.0, -4.0, 6.0], [1.0, 0.0, -8.0]])
    np.testing.assert_array_equal(layer.backward(dy.copy(), input_grad=True),
                                  [[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]])
    assert layer.backward(dy, input_grad=False) is None  # as the first layer: no work


def test_output_takes_the_model_dtype():
    layer = built(Rescale(1 / 255))
    y = layer.forward(np.array([[0, 128, 255]], dtype=np.uint8), training=False)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.0, 128 / 255, 1.0]], rtol=1e-7)


def test_defaults_are_the_identity_and_add_no_parameters():
    model = mpinn.Sequential([Rescale(input_dim=3), mpinn.Dense(2)], seed=0)
    plain = mpinn.Sequential([mpinn.Dense(2, input_dim=3)], seed=0)
    assert model.count_params() == plain.count_params() == 8
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(model.predict(x), plain.predict(x))


@pytest.mark.parametrize(("key", "value"), [
    ("scale", float("nan")), ("scale", float("inf")), ("offset", -float("inf")),
    ("scale", "1/255"), ("scale", True), ("offset", None),
])
def test_refuses_what_is_not_a_finite_number(key, value):
    with pytest.raises(mpinn.ConfigError, match=rf"Rescale: {key} must be a finite number\. "
                                                rf"Received: {key}={value!r}"):
        Rescale(**{key: value})


def test_accepts_any_finite_scale_including_zero_and_numpy_numbers():
    assert Rescale(0).scale == 0.0
    assert Rescale(np.float32(0.5), np.int64(-1)).get_config()["offset"] == -1.0


def test_works_on_every_backend(backend):
    x = np.random.default_rng(0).integers(0, 256, size=(10, 4)).astype(np.float32)
    model = mpinn.Sequential([Rescale(1 / 255, offset=-0.5, input_dim=4),
                              mpinn.Dense(3, activation="tanh")], seed=1, backend=backend)
    reference = mpinn.Sequential([mpinn.Dense(3, activation="tanh", input_dim=4)], seed=1)
    np.testing.assert_allclose(model.predict(x, batch_size=4),
                               reference.predict(x / np.float32(255) - 0.5), rtol=1e-5,
                               atol=1e-6)


# ------------------------------------------------------------------ config and saving
def test_config_builds_the_same_layer_from_its_job_type():
    config = Rescale(0.25, offset=1.5, name="pixels").get_config()
    assert config == {"type": "rescale", "name": "pixels", "scale": 0.25, "offset": 1.5}
    options = {key: value for key, value in config.items() if key != "type"}
    again = LAYER_TYPES[config["type"]](**options)
    assert again.get_config() == config


def test_layer_types_hold_every_layer():
    assert LAYER_TYPES == {"dense": mpinn.Dense, "dropout": mpinn.Dropout,
                           "activation": mpinn.Activation, "rescale": Rescale}


def test_saved_model_scales_raw_inputs_after_load_model(tmp_path):
    x, y = raw_digits()
    model = classifier(Rescale(1 / 255))
    model.fit(x, y, epochs=1, verbose=0)
    before = model.predict(x)
    model.save(tmp_path / "model.h5")
    loaded = mpinn.load_model(tmp_path / "model.h5")
    assert isinstance(loaded.layers[0], Rescale) and loaded.layers[0].scale == 1 / 255
    np.testing.assert_array_equal(loaded.predict(x), before)
    assert loaded.evaluate(x, y) == pytest.approx(model.evaluate(x, y), rel=1e-6)


# ----------------------------------------------------------------------------- training
def test_trains_on_raw_pixels_as_on_pixels_scaled_beforehand():
    x, y = raw_digits()
    inside = classifier(Rescale(1 / 255)).fit(x, y, epochs=2, verbose=0)
    beforehand = classifier().fit(x.astype(np.float32) * np.float32(1 / 255), y, epochs=2,
                                  verbose=0)
    assert inside.history == beforehand.history


def test_helps_training_on_raw_pixels():
    x, y = raw_digits()
    fits = {}
    for label, first in (("raw", ()), ("rescaled", (Rescale(1 / 255),))):
        history = classifier(*first).fit(x[:1500], y[:1500], epochs=3, verbose=0,
                                         validation_data=(x[1500:], y[1500:]))
        fits[label] = history.history["val_loss"][-1]
    assert fits["rescaled"] < 2  # raw inputs: 14 (saturated softmax), scaled: 1.3
    assert fits["raw"] > 4 * fits["rescaled"]


# ---------------------------------------------------------------------- raw pixel note
def test_note_on_uint8_images_names_the_fix():
    x, _ = raw_digits()
    note = raw_pixel_note(x, classifier())
    assert note.startswith("x looks like raw 0-255 pixels (uint8, max 255); ")
    assert '{ type = "rescale", scale = 0.00392156862745098 }' in note
    assert float("0.00392156862745098") == 1 / 255  # the job-file number is exact
    assert "\n" not in note


def test_note_on_whole_number_floats_and_device_arrays_names_the_dtype(backend):
    x, _ = raw_digits()
    model = classifier(backend=backend)
    note = raw_pixel_note(model.backend.asarray(x, np.float32), model, name="data x")
    assert note.startswith("data x looks like raw 0-255 pixels (float32, max 255)")


@pytest.mark.parametrize("case", ["in_0_1", "standardized", "fractions", "small_counts",
                                  "above_255", "nan"])
def test_no_note_for_other_data(case):
    x, _ = raw_digits()
    x = x.astype(np.float64)
    data = {
        "in_0_1": x / 255,
        "standardized": (x - x.mean(axis=0)) / (x.std(axis=0) + 1),
        "fractions": x * 0.9 + 0.1,
        "small_counts": np.round(x * 16 / 255),  # the digits' own 0-16 range
        "above_255": x * 4,  # e.g. 10-bit sensor values: 1/255 would be wrong
        "nan": np.where(x > 100, np.nan, x),
    }[case]
    assert raw_pixel_note(data, classifier()) is None


def test_no_note_when_the_model_starts_with_a_rescale_layer():
    x, _ = raw_digits()
    assert raw_pixel_note(x, classifier(Rescale(1 / 255))) is None
    assert raw_pixel_note(x, classifier(Rescale(1.0))) is None  # the user's choice stands
