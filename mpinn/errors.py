"""The errors mpinn raises on purpose: each message names the bad value and its source, and
each kind carries the exit code `mpinn train` ends with (docs/reliability.md lists them)."""

import math
import numbers


class MpinnError(Exception):
    """Base of every error mpinn raises on purpose."""

    exit_code = 2  # bad input: a job, data, checkpoint or plugin mpinn cannot use


class ConfigError(MpinnError, ValueError):
    """An argument or setting has a value mpinn cannot use."""


class LayoutError(ConfigError):
    """A setting the job's ranks cannot serve (their layout on nodes, their arrays), found
    as training sets up, by every rank alike: rank 0 alone says it."""

    every_rank = True


class PluginError(MpinnError, LookupError):
    """A plugin was asked for that is not installed, or failed to load."""


class DataError(MpinnError, ValueError):
    """Input data does not fit the model or is malformed."""


class NonFiniteError(MpinnError, ArithmeticError):
    """A loss, gradient or parameter holds NaN or Inf: training diverged."""

    exit_code = 3


class StorageError(MpinnError, OSError):
    """A file could not be written (disk full, read-only file system, I/O error); what
    was saved before is intact."""

    exit_code = 74  # EX_IOERR of sysexits.h


def choose(kind: str, name: str, allowed) -> None:
    """Raise a ConfigError unless `name` is one of `allowed`, listing them."""
    if name not in allowed:
        raise ConfigError(
            f"unknown {kind} {name!r}; allowed: {', '.join(sorted(map(str, allowed)))}"
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(owner: str, name: str, value, expected: str) -> ConfigError:
    return ConfigError(f"{owner}: {name} must be {expected}. Received: {name}={value!r}")


def positive_number(owner: str, name: str, value, allow_zero: bool = False) -> float:
    """`value` as a float, if it is a finite number > 0 (or >= 0 with allow_zero)."""
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
        raise _invalid(owner, name, value, "a number >= 0" if allow_zero else "a number > 0")
    return float(value)


def positive_int(owner: str, name: str, value) -> int:
    """`value` as an int, if it is an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise _invalid(owner, name, value, "a positive integer")
    return int(value)


def fraction(owner: str, name: str, value) -> float:
    """`value` as a float, if it lies in [0, 1)."""
    if not _is_number(value) or not 0 <= value < 1:
        raise _invalid(owner, name, value, "in [0, 1)")
    return float(value)
