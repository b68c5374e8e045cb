"""An epoch's loss and metric sums, and their means over every rank's samples.

By default the sums are float64, added where they are computed and summed over ranks
with one Allreduce: equal up to rounding whatever the grouping. A strategy that promises
the same bits on any number of ranks (`Strategy.exact_sums`) has them summed exactly
instead (ExactSum), so that they do not depend on which rank added what, or in which
order."""

import json
import math
from collections.abc import Mapping

import numpy as np

SMALLEST_EXPONENT = 1074  # every finite float64 is a whole multiple of 2^-1074


class ExactSum:
    """A sum of float64 values without rounding: a whole number of 2^-1074 steps (a
    Python integer, of any size), with the non-finite values summed apart. Read as a
    float, it is the exact sum rounded once."""

    def __init__(self, steps: int = 0, special: float = 0.0):
        self.steps, self.special = steps, special

    def add(self, value) -> None:
        value = float(value)
        if math.isfinite(value):
            numerator, denominator = value.as_integer_ratio()  # denominator: a power of 2
            self.steps += numerator << (SMALLEST_EXPONENT - denominator.bit_length() + 1)
        else:  # Inf and NaN sum alike in any order
            self.special += value

    def __iadd__(self, other: "ExactSum") -> "ExactSum":
        self.steps += other.steps
        self.special += other.special
        return self

    def __float__(self) -> float:
        if self.special:  # Inf, -Inf or NaN
            return self.special
        try:
            return self.steps / (1 << SMALLEST_EXPONENT)  # correctly rounded
        except OverflowError:
            return math.inf if self.steps > 0 else -math.inf

    def to_json(self) -> list:
        return [str(self.steps), repr(self.special)]

    @classmethod
    def from_json(cls, pair: list) -> "ExactSum":
        return cls(int(pair[0]), float(pair[1]))


class EpochSums:
    """Sample-weighted running sums of the loss and metrics over an epoch. With
    `skip_nonfinite` (the optimizer skips such steps) a batch whose loss is NaN or Inf is
    counted apart instead; an epoch of nothing but such batches has NaN figures. With
    `exact`, every sum is an ExactSum."""

    def __init__(self, metric_list, skip_nonfinite: bool = False, exact: bool = False):
        self.metrics, self.skip_nonfinite, self.exact = metric_list, skip_nonfinite, exact
        self.samples = self.skipped = 0
        if exact:
            self.loss, self.totals = ExactSum(), [ExactSum() for _ in metric_list]
        else:  # float64 device scalars: the batch sums add up where they are computed
            self.loss, self.totals = 0.0, [np.float64(0)] * len(metric_list)

    def add(self, loss, out, y) -> None:
        """A batch's mean loss, its outputs and targets."""
        if self.skip_nonfinite and not math.isfinite(loss):
            self.skipped += 1
            return
        n = len(out)
        self.samples += n
        if self.exact:
            self.loss.add(loss * n)
            for total, metric in zip(self.totals, self.metrics, strict=True):
                total.add(metric.batch_sum(y, out))
            return
        self.loss += loss * n
        for i, metric in enumerate(self.metrics):
            self.totals[i] += metric.batch_sum(y, out)

    def mean_loss(self) -> float:
        """The running mean loss, a host number (no device read)."""
        return self._mean(self.samples, self.skipped, self.loss)

    def means(self) -> dict:
        return self._logs(self.samples, self.skipped, self.loss, self.totals)

    def reduced(self, strategy) -> dict:
        """Means over every rank's samples (exact, whatever the shard sizes)."""
        if strategy.size == 1:
            return self.means()
        if self.exact:
            return self._logs(*self._exact_reduced(strategy.comm))
        samples, skipped, loss, *totals = strategy.reduce(
            [self.samples, self.skipped, self.loss, *map(float, self.totals)])
        return self._logs(samples, skipped, loss, totals)

    def _exact_reduced(self, comm) -> tuple:
        """Every rank's counts and exact sums, summed (as text: the integers are long)."""
        mine = [self.samples, self.skipped, *(s.to_json() for s in (self.loss, *self.totals))]
        samples = skipped = 0
        sums = [ExactSum() for _ in range(1 + len(self.totals))]
        for text in comm.allgather_bytes(json.dumps(mine).encode()):
            theirs = json.loads(text)
            samples, skipped = samples + theirs[0], skipped + theirs[1]
            for total, pair in zip(sums, theirs[2:], strict=True):
                total += ExactSum.from_json(pair)
        return samples, skipped, sums[0], sums[1:]

    def _logs(self, samples, skipped, loss, totals) -> dict:
        logs = {"loss": self._mean(samples, skipped, loss)}
        for metric, total in zip(self.metrics, totals, strict=True):
            logs[metric.name] = self._mean(samples, skipped, total)
        return logs

    @staticmethod
    def _mean(samples, skipped, total) -> float:
        if not samples:
            return math.nan if skipped else 0.0
        return float(total) / samples


class RunningMeans(Mapping):
    """A step's running epoch means for batch hooks, read from the device only when a
    hook looks at them (a progress bar redraws a few times a second; most hooks never)."""

    def __init__(self, sums: EpochSums):
        self._sums, self._means = sums, None

    def _read(self) -> dict:
        if self._means is None:
            self._means = self._sums.means()
        return self._means

    def __getitem__(self, key):
        if key == "loss" and self._means is None:
            return self._sums.mean_loss()
        return self._read()[key]

    def __iter__(self):
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())
