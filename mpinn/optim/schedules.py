"""Learning-rate schedules: callables from the optimizer step (0-based) to a rate."""

import math

from ..errors import positive_int
from ..errors import positive_number as _positive


class LearningRateSchedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(LearningRateSchedule):
    def __init__(self, learning_rate: float):
        self.learning_rate = _positive("learning rate", "learning_rate", learning_rate)

    def __call__(self, step):
        return self.learning_rate


class ExponentialDecay(LearningRateSchedule):
    """initial * decay_rate ** (step / decay_steps), floored to whole periods if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _positive(owner, "initial_learning_rate",
                                               initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.decay_rate = _positive(owner, "decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step):
        periods = step / self.decay_steps
        if self.staircase:
            periods = math.floor(periods)
        return self.initial_learning_rate * self.decay_rate**periods


class InverseTimeDecay(LearningRateSchedule):
    """initial / (1 + decay_rate * step / decay_steps): the classic `decay` argument."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        owner = "InverseTimeDecay"
        self.initial_learning_rate = _positive(owner, "initial_learning_rate",
                                               initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.decay_rate = _positive(owner, "decay_rate", decay_rate, allow_zero=True)
        self.staircase = bool(staircase)

    def __call__(self, step):
        periods = step / self.decay_steps
        if self.staircase:
            periods = math.floor(periods)
        return self.initial_learning_rate / (1 + self.decay_rate * periods)


class StepDecay(LearningRateSchedule):
    """initial * factor ** (step // step_size): drop by `factor` every `step_size` steps."""

    def __init__(self, initial_learning_rate, step_size, factor=0.1):
        owner = "StepDecay"
        self.initial_learning_rate = _positive(owner, "initial_learning_rate",
                                               initial_learning_rate)
        self.step_size = positive_int(owner, "step_size", step_size)
        self.factor = _positive(owner, "factor", factor)

    def __call__(self, step):
        return self.initial_learning_rate * self.factor ** (step // self.step_size)


class CosineDecay(LearningRateSchedule):
    """Half a cosine from initial down to initial * alpha over decay_steps, then flat."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
        owner = "CosineDecay"
        self.initial_learning_rate = _positive(owner, "initial_learning_rate",
                                               initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.alpha = _positive(owner, "alpha", alpha, allow_zero=True)

    def __call__(self, step):
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)


class LinearWarmup(LearningRateSchedule):
    """Rise linearly to the wrapped schedule's first rate over warmup_steps (rate * (step + 1)
    / warmup_steps, so the first step already moves), then follow the schedule from its
    start."""

    def __init__(self, schedule, warmup_steps):
        self.schedule = get(schedule)
        self.warmup_steps = positive_int("LinearWarmup", "warmup_steps", warmup_steps)

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.schedule(0) * (step + 1) / self.warmup_steps
        return self.schedule(step - self.warmup_steps)


# the names job files use for the schedules with an initial_learning_rate
SCHEDULES = {
    "exponential": ExponentialDecay,
    "inverse_time": InverseTimeDecay,
    "step": StepDecay,
    "cosine": CosineDecay,
}


def get(learning_rate) -> LearningRateSchedule:
    """A schedule from a number (constant) or a schedule."""
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate
    return Constant(learning_rate)
