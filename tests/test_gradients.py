"""Gradient checks against central finite differences in float64 (micrograd-style).

Every reference here is written in the test with plain NumPy: activation and loss formulas,
a forward pass over the model's weights, and finite differences of the model's own loss
while its flat parameter buffer is perturbed entry by entry.
"""

import math
import warnings

import numpy as np
import pytest

import mpinn
from mpinn.activations import ACTIVATIONS
from mpinn.layers import Rescale
from mpinn.losses import LOSSES

H = 1e-6  # central-difference step
RTOL = 1e-6
EPS_CLIP = 1e-7  # Keras' probability clip, which mpinn documents it follows


def assert_grad_close(analytic, numeric, what=""):
    """Relative check at float64 precision; the absolute floor scales with the gradient."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    assert analytic.shape == numeric.shape, what
    atol = 1e-8 * max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=atol, err_msg=what)


def central_difference(f, x):
    """d f(x) / dx for a scalar f, perturbing `x` (an array, in place) entry by entry."""
    grad = np.zeros(x.shape)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = f()
        flat[i] = old - H
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * H)
    return grad


# ----------------------------------------------------------------- independent references
def ref_sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z), written another way


def ref_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


REF_ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.2 * z),  # mpinn default negative_slope
    "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1),  # alpha = 1
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
    "sigmoid": ref_sigmoid,
    "tanh": lambda z: 1 - 2 / (np.exp(2 * z) + 1),
    "softmax": ref_softmax,
}


def ref_loss(name, y, p, from_logits=False):
    """Batch-mean loss written from its textbook formula."""
    n = len(p)
    if name == "mse":
        return float(np.mean((p - y) ** 2))
    if name == "mae":
        return float(np.mean(np.abs(p - y)))
    if name == "binary_crossentropy":
        if from_logits:  # -y log s(z) - (1-y) log(1-s(z)) = log(1 + e^z) - y z
            return float(np.mean(np.logaddexp(0, p) - y * p))
        q = np.clip(p, EPS_CLIP, 1 - EPS_CLIP)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    if name == "sparse_categorical_crossentropy":
        y = np.eye(p.shape[1])[np.asarray(y).reshape(-1)]
        name = "categorical_crossentropy"
    if name == "categorical_crossentropy":
        log_p = ref_log_softmax(p) if from_logits else np.log(np.clip(p, EPS_CLIP, 1 - EPS_CLIP))
        return float(-(y * log_p).sum() / n)
    raise AssertionError(name)


def away_from_kinks(values, margin=0.05):
    """Push values away from 0, where relu/leaky_relu/elu/mae have kinks."""
    return np.where(values >= 0, values + margin, values - margin)


def test_every_activation_and_loss_has_a_reference():
    """Guards the parametrizations below: a new activation or loss needs a reference."""
    assert set(ACTIVATIONS) == set(REF_ACTIVATIONS)
    assert set(LOSSES) == {
        "mse", "mae", "binary_crossentropy", "categorical_crossentropy",
        "sparse_categorical_crossentropy",
    }


# ----------------------------------------------------------------------- activations
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_forward_matches_formula(name):
    rng = np.random.default_rng(1)
    z = away_from_kinks(rng.normal(scale=2.0, size=(6, 5)))
    act = ACTIVATIONS[name]()
    out = np.full_like(z, np.nan)
    returned = act.forward(z, out)
    np.testing.assert_allclose(out, REF_ACTIVATIONS[name](z), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(returned, out)
    np.testing.assert_allclose(act(z), REF_ACTIVATIONS[name](z), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("in_place", [False, True], ids=["out_new", "out_is_dy"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name, in_place):
    rng = np.random.default_rng(2)
    z = away_from_kinks(rng.normal(scale=2.0, size=(4, 5)))
    w = rng.normal(size=z.shape)  # dL/dy for L = sum(w * f(z))
    act = ACTIVATIONS[name]()
    y = act.forward(z, np.empty_like(z))
    dy = w.copy()
    out = dy if in_place else np.empty_like(z)
    dz = act.backward(dy, z, y, out)
    zc = z.copy()
    numeric = central_difference(lambda: float((w * REF_ACTIVATIONS[name](zc)).sum()), zc)
    assert_grad_close(dz, numeric, f"activation {name}")
    assert dz is out or np.shares_memory(dz, out)


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "elu", "tanh", "gelu"])
def test_activation_is_finite_for_large_inputs(name):
    z = np.array([[-800.0, -30.0, 0.5, 30.0, 800.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ACTIVATIONS[name]()(z)
    assert np.isfinite(y).all()
    with np.errstate(all="ignore"):
        expected = REF_ACTIVATIONS[name](z)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------------------- losses
LOSS_CASES = [
    ("mse", False),
    ("mae", False),
    ("binary_crossentropy", False),
    ("binary_crossentropy", True),
    ("categorical_crossentropy", False),
    ("categorical_crossentropy", True),
    ("sparse_categorical_crossentropy", False),
    ("sparse_categorical_crossentropy", True),
]
LOSS_IDS = [f"{name}{'-from_logits' if logits else ''}" for name, logits in LOSS_CASES]


def loss_data(name, from_logits, rng, n=5, k=3, soft_labels=False):
    """(y_true, y_pred) suited to the loss, away from kinks and from the probability clip."""
    if name in ("mse", "mae"):
        y = rng.normal(size=(n, k))
        return y, y + away_from_kinks(rng.normal(size=(n, k)))
    if from_logits:
        pred = rng.normal(scale=2.0, size=(n, k))
    elif name == "binary_crossentropy":
        pred = rng.uniform(0.05, 0.95, size=(n, k))
    else:
        pred = ref_softmax(rng.normal(size=(n, k)))
    if name == "sparse_categorical_crossentropy":
        return rng.integers(0, k, size=n), pred
    if name == "binary_crossentropy":
        return (rng.uniform(size=(n, k)) if soft_labels else rng.integers(0, 2, (n, k))) * 1.0, pred
    if soft_labels:
        return ref_softmax(rng.normal(size=(n, k))), pred
    return np.eye(k)[rng.integers(0, k, size=n)], pred


LOSS_LABEL_CASES = [
    pytest.param(name, logits, soft, id=f"{case_id}-{'soft' if soft else 'hard'}_labels")
    for (name, logits), case_id in zip(LOSS_CASES, LOSS_IDS, strict=True)
    for soft in (False, True)
    # soft labels only where labels are probabilities (sparse labels are class indices)
    if not (soft and name in ("mse", "mae", "sparse_categorical_crossentropy"))
]


@pytest.mark.parametrize(("name", "from_logits", "soft"), LOSS_LABEL_CASES)
def test_loss_value_and_grad_match_formula(name, from_logits, soft):
    rng = np.random.default_rng(3)
    y, pred = loss_data(name, from_logits, rng, soft_labels=soft)
    loss = LOSSES[name](from_logits=from_logits)
    grad = np.full_like(pred, np.nan)
    value = loss.value_and_grad(y, pred.copy(), grad)
    assert value == pytest.approx(ref_loss(name, y, pred, from_logits), rel=1e-12)
    assert loss(y, pred) == pytest.approx(value, rel=1e-12)
    pc = pred.copy()
    numeric = central_difference(lambda: ref_loss(name, y, pc, from_logits), pc)
    assert_grad_close(grad, numeric, f"loss {name} from_logits={from_logits}")


def test_categorical_crossentropy_logits_grad_with_unnormalised_labels():
    """The logits gradient is p * sum(y) - y: labels whose rows do not sum to 1."""
    rng = np.random.default_rng(4)
    z, y = rng.normal(size=(4, 3)), rng.uniform(size=(4, 3))
    grad = np.empty_like(z)
    mpinn.losses.CategoricalCrossentropy(from_logits=True).value_and_grad(y, z.copy(), grad)
    zc = z.copy()
    numeric = central_difference(lambda: ref_loss("categorical_crossentropy", y, zc, True), zc)
    assert_grad_close(grad, numeric)


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy",
                                  "sparse_categorical_crossentropy"])
def test_crossentropy_from_logits_is_stable_for_large_logits(name):
    """The labels' probabilities underflow to 0: the loss still comes out exact."""
    z = np.array([[-1000.0, 0.3, 1000.0], [800.0, -800.0, -2.0]])
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if name.startswith("sparse"):
        y = np.array([0, 1])
    grad = np.empty_like(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings from a path sold as stable
        value = LOSSES[name](from_logits=True).value_and_grad(y, z.copy(), grad)
    assert value == pytest.approx(ref_loss(name, y, z, from_logits=True), rel=1e-12)
    assert np.isfinite(grad).all()


def test_sparse_crossentropy_after_softmax_is_exact_when_a_label_probability_underflows():
    """The model's fused path (probabilities already computed): log p of an underflowed
    label comes from the logits, and the gradient is p - onehot either way."""
    z = np.array([[-1000.0, 0.3, 1000.0], [800.0, -800.0, -2.0], [1.0, 2.0, 3.0]])
    y = np.array([0, 1, 2])
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    assert probs[0, 0] == 0 and probs[1, 1] == 0
    grad = np.empty_like(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning from log(0) either
        value = LOSSES["sparse_categorical_crossentropy"]().logits_value_and_grad(
            y, z, probs, grad)
    assert value == pytest.approx(ref_loss("sparse_categorical_crossentropy", y, z, True),
                                  rel=1e-12)
    np.testing.assert_allclose(grad, (probs - np.eye(3)[y]) / 3, rtol=0, atol=1e-15)


# --------------------------------------------------------------------- model helpers
def numpy_forward(model, x, masks=None):
    """The model's output from its weights, computed here with the reference formulas."""
    masks = masks or {}
    for layer in model.layers:
        if isinstance(layer, mpinn.Dense):
            z = x @ layer.values["kernel"]
            if layer.use_bias:
                z = z + layer.values["bias"]
            x = REF_ACTIVATIONS[layer.activation.name](z)
        elif isinstance(layer, mpinn.Activation):
            x = REF_ACTIVATIONS[layer.activation.name](x)
        elif isinstance(layer, mpinn.Dropout):
            if layer.name in masks:
                x = x * masks[layer.name]
        elif isinstance(layer, Rescale):
            x = x * layer.scale + layer.offset
        else:
            raise AssertionError(layer)
    return x


def make_model(layers, loss, input_dim=4, seed=0):
    model = mpinn.Sequential(layers, seed=seed, dtype="float64")
    model.compile(optimizer="sgd", loss=loss)
    model.build(input_dim)
    # random values everywhere (biases too), so no parameter sits at zero or a kink
    rng = np.random.default_rng(seed + 100)
    model.params.data[...] = rng.normal(scale=0.7, size=model.params.size)
    return model


def model_loss(model, x, y, training=False):
    return model._loss_and_output_grad(x, y, training=training)[0]


def check_model_gradients(model, x, y, training=False):
    """compute_gradients' flat gradient vs central differences of the model's loss."""
    loss, out = model.compute_gradients(x, y)
    loss, out = float(loss), np.array(out)
    analytic = model.params.grad.copy()
    data = model.params.data
    numeric = central_difference(lambda: model_loss(model, x, y, training), data)
    assert_grad_close(analytic, numeric, "flat params.grad vs finite differences")
    return loss, out, analytic


def data_for(loss_name, units, rng, n=6, input_dim=4):
    x = rng.normal(size=(n, input_dim))
    if loss_name == "sparse_categorical_crossentropy":
        return x, rng.integers(0, units, size=n)
    if loss_name in ("binary_crossentropy", "categorical_crossentropy"):
        if loss_name == "categorical_crossentropy":
            return x, np.eye(units)[rng.integers(0, units, size=n)]
        return x, rng.integers(0, 2, size=(n, units)) * 1.0
    return x, rng.normal(size=(n, units))


def pre_activation_margin(model, x):
    """Smallest |z| over the Dense pre-activations (relu-like kinks sit at z = 0)."""
    margin = np.inf
    for layer in model.layers:
        if isinstance(layer, mpinn.Dense):
            z = x @ layer.values["kernel"] + layer.values.get("bias", 0)
            margin = min(margin, float(np.abs(z).min()))
        x = layer.forward(x, False)
    return margin


# ------------------------------------------------------------- model-level: activations
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_dense_activation_gradients(name):
    rng = np.random.default_rng(5)
    model = make_model(
        [mpinn.Dense(5, activation=name, input_dim=4), mpinn.Dense(3, activation=name),
         mpinn.Dense(2)], "mse",
    )
    x, y = data_for("mse", 2, rng)
    assert pre_activation_margin(model, x) > 1e-3  # finite differences never cross a kink
    loss, out, _ = check_model_gradients(model, x, y)
    expected = numpy_forward(model, x)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(ref_loss("mse", y, expected), rel=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_layer_gradients(name):
    rng = np.random.default_rng(6)
    model = make_model(
        [mpinn.Dense(5, input_dim=4), mpinn.Activation(name), mpinn.Dense(2)], "mse"
    )
    x, y = data_for("mse", 2, rng)
    assert pre_activation_margin(model, x) > 1e-3
    loss, out, _ = check_model_gradients(model, x, y)
    np.testing.assert_allclose(out, numpy_forward(model, x), rtol=1e-12, atol=1e-14)
    assert model.params.size == 4 * 5 + 5 + 5 * 2 + 2  # Activation adds no parameters


@pytest.mark.parametrize("use_bias", [True, False], ids=["with_bias", "no_bias"])
def test_dense_bias_gradients(use_bias):
    rng = np.random.default_rng(7)
    model = make_model(
        [mpinn.Dense(5, activation="tanh", use_bias=use_bias, input_dim=4),
         mpinn.Dense(3, use_bias=use_bias)], "mse",
    )
    assert model.params.size == 4 * 5 + 5 * 3 + (5 + 3 if use_bias else 0)
    assert sorted(model.params.names) == sorted(
        ["dense_0/kernel", "dense_1/kernel"]
        + (["dense_0/bias", "dense_1/bias"] if use_bias else [])
    )
    x, y = data_for("mse", 3, rng)
    _, _, grad = check_model_gradients(model, x, y)
    # the named views of the flat gradient, checked against the closed form for the last layer
    hidden = np.tanh(x @ model.layers[0].values["kernel"]
                     + (model.layers[0].values["bias"] if use_bias else 0))
    dout = 2 * (numpy_forward(model, x) - y) / y.size
    grads = model.params.views(grad)
    np.testing.assert_allclose(grads["dense_1/kernel"], hidden.T @ dout, rtol=1e-10)
    if use_bias:
        np.testing.assert_allclose(grads["dense_1/bias"], dout.sum(axis=0), rtol=1e-10)


def test_rescale_layer_gradients():
    """First (no input gradient: skipped) and between Dense layers (dy * scale)."""
    rng = np.random.default_rng(15)
    model = make_model([Rescale(2.5, offset=-0.3, input_dim=4),
                        mpinn.Dense(5, activation="tanh"), Rescale(-0.7, offset=0.2),
                        mpinn.Dense(2)], "mse")
    x, y = data_for("mse", 2, rng)
    _, out, _ = check_model_gradients(model, x, y)
    np.testing.assert_allclose(out, numpy_forward(model, x), rtol=1e-12, atol=1e-14)
    assert model.params.size == 4 * 5 + 5 + 5 * 2 + 2  # Rescale adds no parameters


# ------------------------------------------------------------------ model-level: losses
def output_layers(kind, units):
    """Output stacks: 'linear', '<act>' (Dense activation), 'layer_<act>' (Activation
    layer), 'unfused_<act>' (the activation, then a linear Activation layer)."""
    if kind == "linear":
        return [mpinn.Dense(units)]
    if kind.startswith("layer_"):
        return [mpinn.Dense(units), mpinn.Activation(kind[len("layer_"):])]
    if kind.startswith("unfused_"):
        return [mpinn.Dense(units, activation=kind[len("unfused_"):]), mpinn.Activation("linear")]
    return [mpinn.Dense(units, activation=kind)]


MODEL_LOSS_CASES = [
    # (loss, from_logits, output, expect fused)
    ("mse", False, "linear", False),
    ("mae", False, "linear", False),
    ("mse", False, "sigmoid", False),
    ("binary_crossentropy", False, "sigmoid", True),
    ("binary_crossentropy", False, "layer_sigmoid", True),
    ("binary_crossentropy", False, "unfused_sigmoid", False),
    ("binary_crossentropy", True, "linear", False),
    ("categorical_crossentropy", False, "softmax", True),
    ("categorical_crossentropy", False, "layer_softmax", True),
    ("categorical_crossentropy", False, "unfused_softmax", False),
    ("categorical_crossentropy", True, "linear", False),
    ("categorical_crossentropy", True, "softmax", False),  # logits flag wins: no fusion
    ("sparse_categorical_crossentropy", False, "softmax", True),
    ("sparse_categorical_crossentropy", False, "layer_softmax", True),
    ("sparse_categorical_crossentropy", False, "unfused_softmax", False),
    ("sparse_categorical_crossentropy", True, "linear", False),
]
MODEL_LOSS_IDS = [
    f"{loss}{'-from_logits' if logits else ''}-{output}{'-fused' if fused else ''}"
    for loss, logits, output, fused in MODEL_LOSS_CASES
]


@pytest.mark.parametrize(("loss_name", "from_logits", "output", "fused"), MODEL_LOSS_CASES,
                         ids=MODEL_LOSS_IDS)
def test_model_loss_gradients(loss_name, from_logits, output, fused):
    rng = np.random.default_rng(8)
    units = 3
    loss = LOSSES[loss_name](from_logits=from_logits)
    model = make_model([mpinn.Dense(5, activation="tanh", input_dim=4),
                        *output_layers(output, units)], loss)
    assert model._fused is fused  # the path under test is the one taken
    x, y = data_for(loss_name, units, rng)
    if loss_name == "mae":
        assert np.abs(numpy_forward(model, x) - y).min() > 1e-3
    value, out, _ = check_model_gradients(model, x, y)
    expected_out = numpy_forward(model, x)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-14)
    assert value == pytest.approx(ref_loss(loss_name, y, expected_out, from_logits), rel=1e-10)
    # the public path reports the same loss
    assert model.evaluate(x, y, batch_size=len(x)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("loss_name", ["categorical_crossentropy", "binary_crossentropy"])
def test_fused_and_unfused_paths_agree(loss_name):
    """Same weights, same data: softmax/sigmoid + CE from the logits (fused) and through the
    activation's Jacobian (unfused) give the same loss and gradient."""
    act = "softmax" if loss_name == "categorical_crossentropy" else "sigmoid"
    rng = np.random.default_rng(9)
    fused = make_model([mpinn.Dense(5, activation="tanh", input_dim=4),
                        mpinn.Dense(3, activation=act)], loss_name)
    unfused = make_model([mpinn.Dense(5, activation="tanh", input_dim=4),
                          mpinn.Dense(3, activation=act), mpinn.Activation("linear")], loss_name)
    assert fused._fused and not unfused._fused
    unfused.params.data[...] = fused.params.data
    x, y = data_for(loss_name, 3, rng)
    lf, _ = fused.compute_gradients(x, y)
    lu, _ = unfused.compute_gradients(x, y)
    assert lf == pytest.approx(lu, rel=1e-10)
    np.testing.assert_allclose(fused.params.grad, unfused.params.grad, rtol=1e-8, atol=1e-12)


def test_fused_loss_ignores_probability_clip():
    """Fused CE works from the logits: a confident wrong prediction is penalised in full
    (the probability path would clip at -log(1e-7) ~ 16.1)."""
    model = make_model([mpinn.Dense(2, activation="softmax", input_dim=1)],
                       "categorical_crossentropy", input_dim=1)
    model.params.values["dense_0/kernel"][...] = [[30.0, -30.0]]
    model.params.values["dense_0/bias"][...] = 0
    x, y = np.array([[1.0]]), np.array([[0.0, 1.0]])
    loss, _ = model.compute_gradients(x, y)
    assert loss == pytest.approx(60.0, rel=1e-9)  # log(1 + e^-60) + 60
    np.testing.assert_allclose(model.params.grads["dense_0/bias"], [1.0, -1.0], rtol=1e-9)


# ----------------------------------------------------------------------------- Dropout
class FixedUniform:
    """Stands in for a Dropout layer's generator: always the same uniform draws."""

    def __init__(self, values):
        self.values = values

    def random(self, shape, dtype=None):
        assert tuple(shape) == self.values.shape
        return self.values.astype(dtype)


def test_dropout_layer_forward_and_backward_with_fixed_mask():
    rng = np.random.default_rng(10)
    rate = 0.4
    layer = mpinn.Dropout(rate)
    layer.build(5, mpinn.get_backend("numpy"), np.float64)
    u = rng.uniform(size=(6, 5))
    layer.rng = FixedUniform(u)
    mask = (u >= rate) / (1 - rate)
    assert 0 < (mask == 0).sum() < mask.size  # some dropped, some kept
    x = rng.normal(size=(6, 5))
    np.testing.assert_allclose(layer.forward(x, True), x * mask, rtol=1e-15)
    dy = rng.normal(size=(6, 5))
    np.testing.assert_allclose(layer.backward(dy.copy(), True), mask * dy, rtol=1e-15)
    # inference: the identity, and the gradient passes through untouched
    np.testing.assert_array_equal(layer.forward(x, False), x)
    np.testing.assert_array_equal(layer.backward(dy.copy(), True), dy)


def test_dropout_model_gradients_with_fixed_mask():
    rng = np.random.default_rng(11)
    model = make_model([mpinn.Dense(6, activation="tanh", input_dim=4), mpinn.Dropout(0.5),
                        mpinn.Dense(3)], "mse")
    x, y = data_for("mse", 3, rng)
    u = rng.uniform(size=(len(x), 6))
    model.layers[1].rng = FixedUniform(u)
    mask = (u >= 0.5) * 2.0
    assert 0 < (mask == 0).sum() < mask.size
    loss, out, _ = check_model_gradients(model, x, y, training=True)
    expected = numpy_forward(model, x, masks={model.layers[1].name: mask})
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(ref_loss("mse", y, expected), rel=1e-12)


def test_dropout_zero_rate_is_identity_in_training():
    rng = np.random.default_rng(12)
    model = make_model([mpinn.Dense(5, activation="tanh", input_dim=4), mpinn.Dropout(0.0),
                        mpinn.Dense(2)], "mse")
    x, y = data_for("mse", 2, rng)
    _, out, _ = check_model_gradients(model, x, y, training=True)
    np.testing.assert_allclose(out, numpy_forward(model, x), rtol=1e-12)


def test_dropout_is_identity_in_predict_and_evaluate():
    rng = np.random.default_rng(13)
    model = make_model([mpinn.Dense(8, activation="tanh", input_dim=4), mpinn.Dropout(0.5),
                        mpinn.Dense(2)], "mse")
    x, y = data_for("mse", 2, rng, n=20)
    expected = numpy_forward(model, x)  # no dropout at all
    np.testing.assert_allclose(model.predict(x, batch_size=7), expected, rtol=1e-12)
    np.testing.assert_allclose(model(x), expected, rtol=1e-12)
    assert model.evaluate(x, y, batch_size=7) == pytest.approx(
        ref_loss("mse", y, expected), rel=1e-12)
    # and training does drop (so the checks above are not vacuous)
    trained_out = np.array(model._forward(x, training=True))
    assert not np.allclose(trained_out, expected)
    hidden = np.tanh(x @ model.layers[0].values["kernel"] + model.layers[0].values["bias"])
    dropped = np.array(model.layers[1].forward(hidden, True))
    assert np.all(np.isclose(dropped, 0) | np.isclose(dropped, 2 * hidden))


# ------------------------------------------------------------------------ regularizers
REGULARIZER_CASES = {
    "L1": (lambda: mpinn.regularizers.L1(0.3), 0.3, 0.0),
    "L2": (lambda: mpinn.regularizers.L2(0.2), 0.0, 0.2),
    "L1L2": (lambda: mpinn.regularizers.L1L2(l1=0.1, l2=0.25), 0.1, 0.25),
}


@pytest.mark.parametrize("target", ["kernel", "bias", "kernel_and_bias"])
@pytest.mark.parametrize("reg_name", sorted(REGULARIZER_CASES))
def test_regularizer_loss_and_gradient(reg_name, target):
    make_reg, l1, l2 = REGULARIZER_CASES[reg_name]
    kwargs = {}
    if "kernel" in target:
        kwargs["kernel_regularizer"] = make_reg()
    if "bias" in target:
        kwargs["bias_regularizer"] = make_reg()
    rng = np.random.default_rng(14)
    x, y = data_for("mse", 2, rng)
    model = make_model([mpinn.Dense(3, activation="tanh", input_dim=4, **kwargs),
                        mpinn.Dense(2)], "mse")
    plain = make_model([mpinn.Dense(3, activation="tanh", input_dim=4), mpinn.Dense(2)], "mse")
    plain.params.data[...] = model.params.data
    assert np.abs(model.params.data).min() > 1e-3  # L1's kink at 0 is out of reach

    penalty = 0.0
    for part in ("kernel", "bias"):
        if part in target:
            w = model.layers[0].values[part]
            penalty += l1 * np.abs(w).sum() + l2 * (w**2).sum()
    assert model_loss(model, x, y) - model_loss(plain, x, y) == pytest.approx(penalty, rel=1e-10)
    assert model_loss(model, x, y) == pytest.approx(
        ref_loss("mse", y, numpy_forward(model, x)) + penalty, rel=1e-12)

    check_model_gradients(model, x, y)
    # the regularization gradient lands on the regularized tensors only
    plain.compute_gradients(x, y)
    diff = model.params.views(model.params.grad - plain.params.grad)
    for part in ("kernel", "bias"):
        w = model.layers[0].values[part]
        expected = l1 * np.sign(w) + 2 * l2 * w if part in target else np.zeros_like(w)
        np.testing.assert_allclose(diff[f"dense_0/{part}"], expected, rtol=1e-9, atol=1e-12)
    for name in ("dense_1/kernel", "dense_1/bias"):
        np.testing.assert_allclose(diff[name], 0, atol=1e-15)


def test_regularizer_direct_formula():
    w = np.array([[0.5, -2.0], [1.5, -0.25]])
    reg = mpinn.regularizers.L1L2(l1=0.1, l2=0.3)
    assert reg.loss(w) == pytest.approx(0.1 * 4.25 + 0.3 * (0.25 + 4 + 2.25 + 0.0625))
    grad = np.ones_like(w)
    reg.add_gradient(w, grad)
    np.testing.assert_allclose(grad, 1 + 0.1 * np.sign(w) + 0.6 * w)
