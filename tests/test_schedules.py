"""Learning-rate schedules against their formulas (Keras' definitions), step by step."""

import math

import pytest

import mpinn
from mpinn.optim import schedules

STEPS = [0, 1, 2, 3, 5, 7, 10, 99, 100, 101, 250, 1000]


def check(schedule, formula, steps=STEPS):
    for step in steps:
        assert schedule(step) == pytest.approx(formula(step), rel=1e-12, abs=1e-300), step


def test_constant():
    check(schedules.Constant(0.05), lambda step: 0.05)
    assert isinstance(schedules.get(0.3), schedules.Constant)
    assert schedules.get(0.3)(17) == 0.3
    cosine = schedules.CosineDecay(0.1, 10)
    assert schedules.get(cosine) is cosine


def test_exponential_decay():
    check(schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.96),
          lambda step: 0.1 * math.exp(math.log(0.96) * step / 100))


def test_exponential_decay_staircase():
    schedule = schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5, staircase=True)
    expected = {0: 0.1, 1: 0.1, 99: 0.1, 100: 0.05, 101: 0.05, 199: 0.05, 200: 0.025,
                250: 0.025, 1000: 0.1 / 1024}
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12), step


def test_inverse_time_decay():
    check(schedules.InverseTimeDecay(0.2, decay_steps=10, decay_rate=0.5),
          lambda step: 0.2 / (1 + 0.5 * step / 10))


def test_inverse_time_decay_staircase():
    schedule = schedules.InverseTimeDecay(0.2, decay_steps=10, decay_rate=0.5, staircase=True)
    expected = {0: 0.2, 9: 0.2, 10: 0.2 / 1.5, 19: 0.2 / 1.5, 20: 0.1, 105: 0.2 / 6}
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12), step


def test_inverse_time_decay_zero_rate_is_constant():
    check(schedules.InverseTimeDecay(0.2, decay_steps=10, decay_rate=0.0), lambda step: 0.2)


def test_step_decay():
    schedule = schedules.StepDecay(0.4, step_size=3, factor=0.5)
    expected = {0: 0.4, 2: 0.4, 3: 0.2, 5: 0.2, 6: 0.1, 9: 0.05, 10: 0.05}
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12), step
    assert schedules.StepDecay(1.0, step_size=10)(25) == pytest.approx(0.01)  # default factor


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_cosine_decay(alpha):
    lr0, total = 0.3, 100

    def formula(step):
        t = min(step, total) / total
        return lr0 * (alpha + (1 - alpha) * (1 + math.cos(math.pi * t)) / 2)

    schedule = schedules.CosineDecay(lr0, total, alpha=alpha)
    check(schedule, formula)
    assert schedule(0) == pytest.approx(lr0)
    assert schedule(50) == pytest.approx(lr0 * (1 + alpha) / 2)  # half way: the midpoint
    assert schedule(total) == pytest.approx(lr0 * alpha, abs=1e-15)
    assert schedule(10 * total) == pytest.approx(lr0 * alpha, abs=1e-15)  # flat afterwards


def test_linear_warmup_of_a_constant():
    # mpinn's convention: rate * (step + 1) / warmup_steps while warming up, so the first
    # step is not wasted at rate 0 and the full rate is reached at step warmup_steps - 1
    schedule = schedules.LinearWarmup(0.5, warmup_steps=4)
    expected = {0: 0.125, 1: 0.25, 2: 0.375, 3: 0.5, 4: 0.5, 5: 0.5, 100: 0.5}
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12), step


def test_linear_warmup_of_a_cosine():
    lr0, total, warmup = 0.2, 50, 5
    schedule = schedules.LinearWarmup(schedules.CosineDecay(lr0, total, alpha=0.1),
                                      warmup_steps=warmup)

    def cosine(step):
        t = min(step, total) / total
        return lr0 * (0.1 + 0.9 * (1 + math.cos(math.pi * t)) / 2)

    for step in range(warmup):  # equal increments up to the cosine's starting rate
        assert schedule(step) == pytest.approx(lr0 * (step + 1) / warmup, rel=1e-12), step
    # then the cosine, shifted to start where the warm-up ends
    check(schedule, lambda step: cosine(step - warmup),
          steps=[warmup, warmup + 1, warmup + 10, warmup + 25, warmup + total, 1000])
    assert max(schedule(step) for step in range(200)) == pytest.approx(lr0)


BAD = [
    ("constant_zero", lambda: schedules.Constant(0), "learning_rate", "0"),
    ("constant_negative", lambda: schedules.Constant(-0.1), "learning_rate", "-0.1"),
    ("constant_string", lambda: schedules.Constant("0.1"), "learning_rate", "'0.1'"),
    ("constant_inf", lambda: schedules.Constant(math.inf), "learning_rate", "inf"),
    ("get_nan", lambda: schedules.get(math.nan), "learning_rate", "nan"),
    ("exp_initial", lambda: schedules.ExponentialDecay(0, 10, 0.9),
     "initial_learning_rate", "0"),
    ("exp_decay_steps", lambda: schedules.ExponentialDecay(0.1, 0, 0.9), "decay_steps", "0"),
    ("exp_decay_steps_negative", lambda: schedules.ExponentialDecay(0.1, -5, 0.9),
     "decay_steps", "-5"),
    ("exp_decay_rate", lambda: schedules.ExponentialDecay(0.1, 10, -0.5), "decay_rate", "-0.5"),
    ("exp_decay_rate_zero", lambda: schedules.ExponentialDecay(0.1, 10, 0), "decay_rate", "0"),
    ("inverse_decay_steps", lambda: schedules.InverseTimeDecay(0.1, 0, 0.5), "decay_steps", "0"),
    ("inverse_decay_rate", lambda: schedules.InverseTimeDecay(0.1, 10, -1), "decay_rate", "-1"),
    ("inverse_initial", lambda: schedules.InverseTimeDecay(-1.0, 10, 0.5),
     "initial_learning_rate", "-1.0"),
    ("step_size_zero", lambda: schedules.StepDecay(0.1, 0), "step_size", "0"),
    ("step_size_float", lambda: schedules.StepDecay(0.1, 2.5), "step_size", "2.5"),
    ("step_size_bool", lambda: schedules.StepDecay(0.1, True), "step_size", "True"),
    ("step_factor", lambda: schedules.StepDecay(0.1, 3, factor=-0.1), "factor", "-0.1"),
    ("cosine_decay_steps", lambda: schedules.CosineDecay(0.1, 0), "decay_steps", "0"),
    ("cosine_alpha", lambda: schedules.CosineDecay(0.1, 10, alpha=-0.2), "alpha", "-0.2"),
    ("cosine_initial", lambda: schedules.CosineDecay(math.nan, 10), "initial_learning_rate",
     "nan"),
    ("warmup_steps_zero", lambda: schedules.LinearWarmup(0.1, 0), "warmup_steps", "0"),
    ("warmup_steps_negative", lambda: schedules.LinearWarmup(0.1, -3), "warmup_steps", "-3"),
    ("warmup_bad_schedule", lambda: schedules.LinearWarmup(-0.1, 5), "learning_rate", "-0.1"),
    ("optimizer_lr", lambda: mpinn.SGD(learning_rate=-1), "learning_rate", "-1"),
]


@pytest.mark.parametrize(("make", "argument", "value"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_invalid_arguments_raise_config_error(make, argument, value):
    with pytest.raises(mpinn.ConfigError) as info:
        make()
    message = str(info.value)
    assert argument in message
    assert f"{argument}={value}" in message
