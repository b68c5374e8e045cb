"""Optimizer steps against their published update rules, written here in plain NumPy.

mpinn's optimizers run on a FlatParameters buffer; each reference below runs the textbook
formula on its own float64 arrays, and the two are compared after every step. Both ways of
stepping are checked: the fused kernel (where the backend has one) and the chain of array
operations, which must also agree bit for bit in float32.
"""

import math
import os

import numpy as np
import pytest

import mpinn
from mpinn import threads
from mpinn.optim.schedules import LearningRateSchedule
from mpinn.parameters import FlatParameters

SHAPES = {"dense_0/kernel": (3, 4), "dense_0/bias": (4,), "dense_1/kernel": (4, 2)}
SIZE = 3 * 4 + 4 + 4 * 2
STEPS = 5


def make_params(seed=0, backend="numpy"):
    params = FlatParameters(SHAPES, np.float64, mpinn.get_backend(backend))
    params.data[...] = params.backend.asarray(np.random.default_rng(seed).normal(size=params.size))
    return params


def host(params, flat=None):
    """A host copy of params.data (or of another buffer of the same backend)."""
    return params.backend.to_numpy(params.data if flat is None else flat).copy()


def gradient_sequence(seed=1, scales=(1.0, 0.3, 2.5, 0.05, 1.2)):
    """Gradients with varying scale, so step-size-invariant mistakes still show."""
    rng = np.random.default_rng(seed)
    return [scale * rng.normal(size=SIZE) for scale in scales]


@pytest.fixture(params=["fused", "chain"])
def fused(request) -> bool:
    return request.param == "fused"


def run_mpinn(optimizer, params, grads, fused=None, lr_scale=1.0):
    """Positions after each step, feeding each gradient through params.grad."""
    optimizer.build(params, fused=fused)
    history = []
    for g in grads:
        params.grad[...] = params.backend.asarray(g)
        optimizer.apply(params, lr_scale=lr_scale)
        history.append(host(params))
    return history


def assert_trajectories_equal(got, expected, rtol=1e-11):
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14, err_msg=f"after step {step + 1}")


# ----------------------------------------------------------------------- references
def ref_sgd(p, grads, lr, momentum=0.0, nesterov=False):
    p, buf, out = p.copy(), np.zeros_like(p), []
    for g in grads:
        if momentum:
            buf = momentum * buf + g
            step = g + momentum * buf if nesterov else buf
        else:
            step = g
        p = p - lr * step
        out.append(p)
    return out, {"momentum/trace": buf} if momentum else {}


def ref_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-7, wd=0.0):
    """Kingma & Ba Algorithm 1; with wd, Loshchilov & Hutter's decoupled decay."""
    p, m, v, out = p.copy(), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
        out.append(p)
    return out, {"adam/grad_sum": m / (1 - b1), "adam/grad_sq_sum": v / (1 - b2)}


def ref_rmsprop(p, grads, lr, rho=0.9, eps=1e-7, momentum=0.0):
    p, v, buf, out = p.copy(), np.zeros_like(p), np.zeros_like(p), []
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        scaled = g / (np.sqrt(v) + eps)
        if momentum:  # PyTorch: buf = momentum * buf + g / (sqrt(v) + eps); p -= lr * buf
            buf = momentum * buf + scaled
            scaled = buf
        p = p - lr * scaled
        out.append(p)
    state = {"rmsprop/grad_sq_sum": v / (1 - rho)}
    if momentum:
        state["momentum/trace"] = buf
    return out, state


def ref_adagrad(p, grads, lr, initial=0.1, eps=1e-7):
    p, acc, out = p.copy(), np.full_like(p, initial), []
    for g in grads:
        acc = acc + g * g
        p = p - lr * g / (np.sqrt(acc) + eps)
        out.append(p)
    return out, {"adagrad/accumulator": acc}


# eps values large enough that where epsilon enters the formula changes the result
CASES = {
    "sgd": (lambda: mpinn.SGD(0.1), lambda p, g: ref_sgd(p, g, 0.1)),
    "sgd_momentum": (lambda: mpinn.SGD(0.05, momentum=0.9),
                     lambda p, g: ref_sgd(p, g, 0.05, momentum=0.9)),
    "sgd_nesterov": (lambda: mpinn.SGD(0.05, momentum=0.8, nesterov=True),
                     lambda p, g: ref_sgd(p, g, 0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda: mpinn.Adam(0.01), lambda p, g: ref_adam(p, g, 0.01)),
    "adam_large_eps": (lambda: mpinn.Adam(0.02, beta_1=0.8, beta_2=0.95, epsilon=0.1),
                       lambda p, g: ref_adam(p, g, 0.02, 0.8, 0.95, 0.1)),
    "adamw": (lambda: mpinn.AdamW(0.01, weight_decay=0.1),
              lambda p, g: ref_adam(p, g, 0.01, wd=0.1)),
    "adamw_large_eps": (lambda: mpinn.AdamW(0.03, weight_decay=0.5, epsilon=0.05, beta_2=0.9),
                        lambda p, g: ref_adam(p, g, 0.03, 0.9, 0.9, 0.05, wd=0.5)),
    "rmsprop": (lambda: mpinn.RMSprop(0.01), lambda p, g: ref_rmsprop(p, g, 0.01)),
    "rmsprop_large_eps": (lambda: mpinn.RMSprop(0.01, rho=0.7, epsilon=0.1),
                          lambda p, g: ref_rmsprop(p, g, 0.01, rho=0.7, eps=0.1)),
    "rmsprop_momentum": (lambda: mpinn.RMSprop(0.01, rho=0.8, momentum=0.9, epsilon=1e-3),
                         lambda p, g: ref_rmsprop(p, g, 0.01, 0.8, 1e-3, momentum=0.9)),
    "adagrad": (lambda: mpinn.Adagrad(0.1), lambda p, g: ref_adagrad(p, g, 0.1)),
    "adagrad_custom": (
        lambda: mpinn.Adagrad(0.2, initial_accumulator_value=0.5, epsilon=0.01),
        lambda p, g: ref_adagrad(p, g, 0.2, initial=0.5, eps=0.01)),
    "adagrad_zero_initial": (lambda: mpinn.Adagrad(0.1, initial_accumulator_value=0.0),
                             lambda p, g: ref_adagrad(p, g, 0.1, initial=0.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_updates_match_published_formula(case, backend, fused):
    make_optimizer, reference = CASES[case]
    params = make_params(backend=backend)
    p0, grads = host(params), gradient_sequence()
    got = run_mpinn(make_optimizer(), params, [g.copy() for g in grads], fused)
    expected, _ = reference(p0, grads)
    assert_trajectories_equal(got, expected)
    assert not np.allclose(got[-1], p0)  # something moved


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_exposes_named_flat_buffers(case, backend):
    make_optimizer, reference = CASES[case]
    params = make_params(backend=backend)
    p0, grads = host(params), gradient_sequence()
    optimizer = make_optimizer()
    run_mpinn(optimizer, params, grads)
    _, expected_state = reference(p0, grads)
    state = optimizer.state()
    assert sorted(state) == sorted(expected_state)
    for name, buffer in state.items():
        assert buffer.shape == (SIZE,) and buffer.dtype == np.float64, name
        np.testing.assert_allclose(host(params, buffer), expected_state[name], rtol=1e-11,
                                   atol=1e-15, err_msg=name)
    assert optimizer.iterations == STEPS


def test_adagrad_accumulator_starts_at_initial_value():
    optimizer = mpinn.Adagrad(initial_accumulator_value=0.7)
    optimizer.build(make_params())
    np.testing.assert_array_equal(optimizer.state()["adagrad/accumulator"], np.full(SIZE, 0.7))


def test_adam_first_step_is_lr_times_sign():
    """A textbook property of Algorithm 1: with tiny eps, step 1 moves every entry by lr."""
    params = make_params()
    p0, g = params.data.copy(), gradient_sequence()[0]
    run_mpinn(mpinn.Adam(0.01, epsilon=1e-12), params, [g.copy()])
    np.testing.assert_allclose(params.data, p0 - 0.01 * np.sign(g), rtol=1e-9)


# --------------------------------------------------------------------------- clipping
def clip(g, max_norm):
    norm = math.sqrt(float(np.sum(g * g)))
    return g * (max_norm / norm) if norm > max_norm else g


CLIP_CASES = {
    "sgd": (lambda c: mpinn.SGD(0.1, global_clipnorm=c), lambda p, g: ref_sgd(p, g, 0.1)),
    "sgd_momentum": (lambda c: mpinn.SGD(0.05, momentum=0.9, global_clipnorm=c),
                     lambda p, g: ref_sgd(p, g, 0.05, momentum=0.9)),
    "adam": (lambda c: mpinn.Adam(0.01, epsilon=0.1, global_clipnorm=c),
             lambda p, g: ref_adam(p, g, 0.01, eps=0.1)),
    "adamw": (lambda c: mpinn.AdamW(0.01, weight_decay=0.1, epsilon=0.1, global_clipnorm=c),
              lambda p, g: ref_adam(p, g, 0.01, eps=0.1, wd=0.1)),
    "rmsprop": (lambda c: mpinn.RMSprop(0.01, epsilon=0.1, global_clipnorm=c),
                lambda p, g: ref_rmsprop(p, g, 0.01, eps=0.1)),
    "adagrad": (lambda c: mpinn.Adagrad(0.1, global_clipnorm=c),
                lambda p, g: ref_adagrad(p, g, 0.1)),
}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_global_clipnorm_clips_gradient_before_the_update(case, backend, fused):
    max_norm = 2.0
    grads = gradient_sequence()
    norms = [np.linalg.norm(g) for g in grads]
    assert any(n > max_norm for n in norms) and any(n < max_norm for n in norms)
    make_optimizer, reference = CLIP_CASES[case]
    params = make_params(backend=backend)
    p0 = host(params)
    got = run_mpinn(make_optimizer(max_norm), params, [g.copy() for g in grads], fused)
    clipped = [clip(g, max_norm) for g in grads]
    expected, _ = reference(p0, clipped)
    assert_trajectories_equal(got, expected)
    # and clipping made a difference
    unclipped, _ = reference(p0, grads)
    assert not np.allclose(unclipped[-1], expected[-1])


def test_global_clipnorm_leaves_small_gradients_alone():
    grads = gradient_sequence(scales=(0.1, 0.2, 0.05, 0.1, 0.3))
    params = make_params()
    p0 = params.data.copy()
    got = run_mpinn(mpinn.SGD(0.1, global_clipnorm=100.0), params, [g.copy() for g in grads])
    assert_trajectories_equal(got, ref_sgd(p0, grads, 0.1)[0])


# ----------------------------------------------------------------------- fused steps
FUSED_CASES = {**CASES, **{f"{name}_clipped": (lambda make=make: make(2.0), reference)
                           for name, (make, reference) in CLIP_CASES.items()},
               "sgd_weight_decay": (lambda: mpinn.SGD(0.1, weight_decay=0.05), None),
               "rmsprop_momentum_clipped_decayed": (
                   lambda: mpinn.RMSprop(0.01, momentum=0.5, global_clipnorm=1.0,
                                         weight_decay=0.01), None),
               "adam_schedule": (lambda: mpinn.Adam(mpinn.schedules.ExponentialDecay(
                   0.1, decay_steps=2, decay_rate=0.5)), None)}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def thread_budget(request):
    """The process's thread budget (mpinn.threads) for one test: on one thread the fused
    kernels run without numba's threads."""
    before = threads.budget()
    threads.apply(threads.ThreadPlan(request.param, "test"))
    yield request.param
    threads.apply(threads.ThreadPlan(before, "test"))


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_the_fused_step_is_the_chain_bit_for_bit(case, thread_budget):
    """float32, a staleness-scaled rate: the NumPy backend's kernel against the chain."""
    make_optimizer = FUSED_CASES[case][0]
    grads = [g.astype(np.float32) for g in gradient_sequence()]
    trajectories = []
    for fused in (True, False):
        params = FlatParameters(SHAPES, np.float32, mpinn.get_backend("numpy"))
        params.data[...] = np.random.default_rng(0).normal(size=params.size)
        optimizer = make_optimizer()
        trajectories.append(run_mpinn(optimizer, params, grads, fused, lr_scale=0.5))
        assert (optimizer.kernel is not None) == fused
        state = optimizer.state()
    for step, (a, b) in enumerate(zip(*trajectories, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"after step {step + 1}")
    assert not np.array_equal(trajectories[0][-1], trajectories[0][0])
    assert all(buffer.dtype == np.float32 for buffer in state.values())


@pytest.mark.parametrize("case", ["adam_clipped", "rmsprop_momentum_clipped_decayed",
                                  "adam_schedule", "sgd_clipped"])
def test_slices_stepped_with_the_whole_norm_step_as_the_whole(case, fused):
    """A sharded parameter server's step: the optimizer sliced in two, each slice given
    the whole gradient's norm, moves the parameters and the state bit for bit as one
    optimizer on the whole buffer; the sliced state is the whole one's (views)."""
    make_optimizer = FUSED_CASES[case][0]
    grads = [g.astype(np.float32) for g in gradient_sequence()]
    whole, split = (FlatParameters(SHAPES, np.float32, mpinn.get_backend("numpy"))
                    for _ in range(2))
    for params in (whole, split):
        params.data[...] = np.random.default_rng(0).normal(size=params.size)
    expected = run_mpinn(make_optimizer(), whole, grads, fused)
    optimizer = make_optimizer()
    optimizer.build(split, fused=fused)
    cut = 9  # inside dense_0/kernel: slices need not follow tensors
    parts = [optimizer.sliced(split.part(start, stop), start, stop)
             for start, stop in ((0, cut), (cut, SIZE))]
    for step, g in enumerate(grads):
        norm = float(np.sqrt(np.vdot(g, g)))
        split.grad[...] = g
        for part, (start, stop) in zip(parts, ((0, cut), (cut, SIZE)), strict=True):
            part.apply(split.part(start, stop), norm=norm)
        np.testing.assert_array_equal(split.data, expected[step], err_msg=f"step {step + 1}")
    assert [part.iterations for part in parts] == [STEPS, STEPS] and optimizer.iterations == 0
    for name, buffer in optimizer.state().items():
        assert np.any(buffer[:cut]) and np.any(buffer[cut:]), name


def test_a_gradient_norm_that_is_not_finite_skips_the_step():
    optimizer = mpinn.Adam(0.1, global_clipnorm=1.0)
    optimizer.skip_nonfinite = True
    params = make_params()
    optimizer.build(params)
    before = host(params)
    params.grad[...] = 1.0  # finite here; the whole gradient's norm says otherwise
    optimizer.apply(params, norm=math.inf)
    assert optimizer.skipped == 1 and optimizer.iterations == 0
    np.testing.assert_array_equal(host(params), before)


@pytest.mark.parametrize("inputs, fused", [(4, False), (512, True)])
def test_a_model_from_fused_from_parameters_on_is_fused(inputs, fused):
    """Below FUSED_FROM parameters the kernels would not repay their loading time."""
    model = mpinn.Sequential([mpinn.Dense(512, input_dim=inputs)], seed=0)
    model.compile("adam", "mse")
    model.train_on_batch(np.ones((2, inputs)), np.ones((2, 512)))
    assert (model.params.size >= mpinn.optim.base.FUSED_FROM) == fused
    assert (model.optimizer.kernel is not None) == fused


def test_a_chain_without_a_kernel_runs_as_a_chain():
    """A transform of the user's own has no fused form: the optimizer runs its chain."""

    class Halve(mpinn.optim.Transform):
        def update(self, updates, params, step, scale):
            return scale / 2

    optimizer = mpinn.optim.Optimizer([Halve()], learning_rate=0.1)
    params = make_params()
    p0 = host(params)
    run_mpinn(optimizer, params, [np.ones(SIZE)])
    assert optimizer.kernel is None
    np.testing.assert_allclose(host(params), p0 - 0.05)


def test_the_fused_step_gives_the_same_bits_on_one_thread_and_two(monkeypatch):
    from mpinn import threads

    results = []
    for count in (1, 2):
        monkeypatch.setattr(threads, "_applied", count)
        params = FlatParameters({"w": (100_003,)}, np.float32, mpinn.get_backend("numpy"))
        params.data[...] = np.random.default_rng(0).normal(size=params.size)
        grads = [np.random.default_rng(seed).normal(size=params.size) for seed in (1, 2)]
        results.append(run_mpinn(mpinn.Adam(0.01), params, grads, fused=True)[-1])
    np.testing.assert_array_equal(*results)


def test_without_numba_the_optimizer_runs_its_chain(tmp_path):
    """Where numba does not import, training works and `mpinn info` says steps are
    unfused, and how to fuse them."""
    import subprocess
    import sys

    (tmp_path / "numba.py").write_text("raise ImportError('no numba here')\n")
    script = ("import mpinn, numpy as np\n"
              "m = mpinn.Sequential([mpinn.Dense(3, input_dim=4)], seed=0)\n"
              "m.compile('adam', 'mse'); m.build(); m.optimizer.build(m.params, fused=True)\n"
              "m.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0)\n"
              "assert m.optimizer.kernel is None and m.optimizer.iterations == 1\n"
              "print(mpinn.get_backend('numpy').describe())\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=60)
    assert found.returncode == 0, found.stderr
    assert "optimizer steps unfused (no numba here; pip install numba fuses them)" in found.stdout


# -------------------------------------------------------------------------- schedules
class RecordingSchedule(LearningRateSchedule):
    """Rates from a table, remembering the steps the optimizer asked for."""

    def __init__(self, rates):
        self.rates, self.asked = rates, []

    def __call__(self, step):
        self.asked.append(step)
        return self.rates[step]


def test_schedule_drives_sgd_step_size():
    rates = [0.5, 0.1, 0.02, 0.3, 0.001]
    schedule = RecordingSchedule(rates)
    params = make_params()
    p0, grads = params.data.copy(), gradient_sequence()
    got = run_mpinn(mpinn.SGD(schedule), params, [g.copy() for g in grads])
    expected, p = [], p0.copy()
    for lr, g in zip(rates, grads, strict=True):
        p = p - lr * g
        expected.append(p)
    assert_trajectories_equal(got, expected)
    assert schedule.asked == [0, 1, 2, 3, 4]


def test_exponential_decay_drives_adam():
    schedule = mpinn.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    params = make_params()
    p0, grads = params.data.copy(), gradient_sequence()
    got = run_mpinn(mpinn.Adam(schedule), params, [g.copy() for g in grads])
    # reference Adam with lr_t = 0.1 * 0.5 ** ((t - 1) / 2) for step t = 1..5
    p, m, v, expected = p0.copy(), np.zeros(SIZE), np.zeros(SIZE), []
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr = 0.1 * 0.5 ** ((t - 1) / 2)
        p = p - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-7)
        expected.append(p)
    assert_trajectories_equal(got, expected)


def test_train_on_batch_applies_the_step_to_the_model():
    """The optimizer through a model: new weights = old - lr * compute_gradients' grad."""
    rng = np.random.default_rng(3)
    model = mpinn.Sequential([mpinn.Dense(3, activation="tanh", input_dim=4), mpinn.Dense(2)],
                             seed=0, dtype="float64")
    model.compile(optimizer=mpinn.SGD(0.1, momentum=0.5), loss="mse")
    model.build(4)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    p, buf = model.params.data.copy(), np.zeros(model.params.size)
    for _ in range(3):
        probe = mpinn.Sequential([mpinn.Dense(3, activation="tanh", input_dim=4),
                                  mpinn.Dense(2)], seed=0, dtype="float64")
        probe.compile(optimizer="sgd", loss="mse")
        probe.build(4)
        probe.params.data[...] = p
        probe.compute_gradients(x, y)
        buf = 0.5 * buf + probe.params.grad
        p = p - 0.1 * buf
        model.train_on_batch(x, y)
        np.testing.assert_allclose(model.params.data, p, rtol=1e-12)


# ---------------------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ("sgd_momentum_1", lambda: mpinn.SGD(momentum=1.0), "momentum", "1.0"),
    ("sgd_momentum_negative", lambda: mpinn.SGD(momentum=-0.1), "momentum", "-0.1"),
    ("sgd_nesterov_without_momentum", lambda: mpinn.SGD(nesterov=True), "momentum", "0"),
    ("sgd_lr_zero", lambda: mpinn.SGD(learning_rate=0), "learning_rate", "0"),
    ("adam_lr_negative", lambda: mpinn.Adam(learning_rate=-0.1), "learning_rate", "-0.1"),
    ("adam_beta_1", lambda: mpinn.Adam(beta_1=1.0), "beta_1", "1.0"),
    ("adam_beta_2", lambda: mpinn.Adam(beta_2=1.5), "beta_2", "1.5"),
    ("adam_epsilon", lambda: mpinn.Adam(epsilon=0), "epsilon", "0"),
    ("adamw_weight_decay", lambda: mpinn.AdamW(weight_decay=-0.1), "weight_decay", "-0.1"),
    ("rmsprop_rho", lambda: mpinn.RMSprop(rho=1.0), "rho", "1.0"),
    ("rmsprop_momentum", lambda: mpinn.RMSprop(momentum=2), "momentum", "2"),
    ("adagrad_initial", lambda: mpinn.Adagrad(initial_accumulator_value=-1),
     "initial_accumulator_value", "-1"),
    ("clipnorm_zero", lambda: mpinn.SGD(global_clipnorm=0.0), "global_clipnorm", "0.0"),
    ("clipnorm_nan", lambda: mpinn.Adam(global_clipnorm=float("nan")), "global_clipnorm", "nan"),
]


@pytest.mark.parametrize(("make", "argument", "value"), [c[1:] for c in BAD_ARGUMENTS],
                         ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_raise_config_error(make, argument, value):
    with pytest.raises(mpinn.ConfigError) as info:
        make()
    assert argument in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_lr_scale_scales_one_step(name):
    """The parameter server's staleness-aware rate: lr_scale multiplies that step's rate."""
    full, half = make_params(), make_params()
    start = full.data.copy()
    for params, scale in ((full, 1.0), (half, 0.5)):
        optimizer = mpinn.optim.get(name)
        optimizer.build(params)
        params.grad[...] = np.linspace(-1, 1, params.size)
        optimizer.apply(params, lr_scale=scale)
    np.testing.assert_allclose(half.data - start, 0.5 * (full.data - start), rtol=1e-9)
