"""Job files: TOML in, a frozen and fully validated Job out.

Validation is strict and happens before anything runs: an unknown key, a value of the
wrong type or an impossible value raises a ConfigError naming the file, the key path and
the value. `--set key.path=value` overrides go through the same checks.
"""

import copy
import datetime
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from .errors import ConfigError

REQUIRED = object()

# section -> key -> (type, default); a set after the type lists the allowed values.
SCHEMA = {
    "run": {
        "name": (str, "run"),
        "directory": (str, "runs"),
        "seed": (int, 0),
        "threads": (int, 0),  # BLAS and OpenMP threads per rank; 0: fit the node
    },
    "data": {
        "dataset": (str, "digits"),
        "validation_split": (float, 0.2),
        "split_seed": (int, 0),
        "validation": (dict, {}),  # loader arguments of a separate validation set
    },
    "model": {
        "layers": (list, REQUIRED),
        "dtype": (str, "float32", {"float32", "float64"}),
        "backend": (str, "numpy"),
    },
    "training": {
        "epochs": (int, 10),
        "batch_size": (int, 32),
        "loss": (str, ""),  # required to train; a stored model may have none
        "metrics": (list, []),
        "shuffle": (bool, True),
        "on_nonfinite": (str, "stop", {"stop", "skip"}),
    },
    "strategy": {
        "name": (str, "allreduce"),
    },
    "optimizer": {
        "name": (str, "adam"),
        "learning_rate": (float, 0.001),
        "schedule": (dict, {}),
    },
    "checkpoint": {
        "directory": (str, ""),
        "every_epochs": (int, 1),
        "every_steps": (int, 0),
        "keep": (int, 3),
    },
    "logging": {
        "progress": (str, "auto", {"auto", "bar", "lines", "none"}),
        "metrics_log": (str, "metrics.jsonl"),
    },
    "watchdog": {
        "warn_seconds": (float, 60.0),
        "abort_seconds": (float, 600.0),
    },
}
# Other keys in these sections are arguments of the dataset, optimizer or strategy they name;
# the runner checks them against its signature.
OPEN_SECTIONS = {"data", "optimizer", "strategy"}
POSITIVE = {"training.epochs", "training.batch_size", "optimizer.learning_rate",
            "checkpoint.keep"}
NOT_NEGATIVE = {"run.seed", "run.threads", "data.split_seed", "checkpoint.every_epochs",
                "checkpoint.every_steps", "watchdog.warn_seconds", "watchdog.abort_seconds"}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              list: "an array", dict: "a table"}


@dataclass(frozen=True)
class Job:
    """A validated job: `sections[section][key]`, read-only; `text` is the resolved job as
    TOML (every default and override written out: what a checkpoint stores)."""

    source: str
    sections: MappingProxyType
    text: str
    overrides: tuple = ()  # the `--set` items applied, as given

    def __getitem__(self, dotted: str):
        section, key = dotted.split(".", 1)
        return self.sections[section][key]

    def extras(self, section: str) -> dict:
        """The keys of an open section beyond its schema: arguments for what it names."""
        return {k: v for k, v in self.sections[section].items() if k not in SCHEMA[section]}


def default_job_text() -> str:
    """The job `mpinn train` runs when given none (jobs/digits.toml is the same)."""
    return resources.files("mpinn").joinpath("default_job.toml").read_text()


def load_job(path: "str | Path | None" = None, overrides=()) -> Job:
    """Read, override and validate a job file (the embedded default job when path is None)."""
    if path is None:
        source, text = "default job", default_job_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the job file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not a job file (TOML text); it holds binary data "
                              f"at byte {exc.start}") from exc
    return parse_job(text, source, overrides)


def parse_job(text: str, source: str = "job", overrides=()) -> Job:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    raw = copy.deepcopy(raw)
    for override in overrides:
        _apply_override(raw, override, source)
    sections = {}
    for section, value in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]; allowed: "
                              f"{', '.join(SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section} must be a table ([{section}])")
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys and section not in OPEN_SECTIONS:
                raise ConfigError(f"{source}: unknown key {section}.{key}; allowed in "
                                  f"[{section}]: {', '.join(keys)}")
        checked = {key: _checked(source, f"{section}.{key}", given.get(key, REQUIRED), spec)
                   for key, spec in keys.items()}
        extras = {key: value for key, value in given.items() if key not in keys}
        sections[section] = MappingProxyType({**checked, **extras})
    _check_validation_set(source, raw.get("data", {}), sections)
    job = Job(source, MappingProxyType(sections), dump_job(sections, overrides),
              tuple(overrides))
    _check_layers(job)
    return job


def names_data(text: str) -> bool:
    """Whether a stored job says what data it trained on (a model saved from Python with
    `Sequential.save` does not)."""
    if text.startswith(RESOLVED_HEADER):
        return True
    try:
        return "data" in tomllib.loads(text.partition(OLD_OVERRIDES_MARKER)[0])
    except tomllib.TOMLDecodeError:
        return False


def stored_job(text: str, source: str, overrides=()) -> Job:
    """The job a checkpoint stores. Older versions (and `Sequential.save`) stored the job
    as given, with `--set` overrides as trailing comments, and drew the hold-out with
    run.seed: both are read as they were meant."""
    if text.startswith(RESOLVED_HEADER):
        return parse_job(text, source, overrides)
    body, _, trailer = text.partition(OLD_OVERRIDES_MARKER)
    given = [line[2:] for line in trailer.splitlines() if line.startswith("# ")]
    seed = parse_job(body, source, given)["run.seed"]
    return parse_job(body, source, [*given, f"data.split_seed={seed}", *overrides])


def with_data_defaults(job: Job, defaults: dict) -> Job:
    """`job` with `defaults` (a dataset's default arguments) added to [data] where unset."""
    data = {**job.sections["data"], **{key: value for key, value in defaults.items()
                                       if key not in job.sections["data"]}}
    sections = MappingProxyType({**job.sections, "data": MappingProxyType(data)})
    return Job(job.source, sections, dump_job(sections, job.overrides), job.overrides)


def differences(job: Job, other: Job, ignore=(), only=None) -> list[str]:
    """`key is value here but value there` for each key whose resolved values differ, in
    the sections or dotted keys of `only` (all when None) but not of `ignore`."""
    found = []
    for section, keys in job.sections.items():
        for key in sorted(set(keys) | set(other.sections[section])):
            name = f"{section}.{key}"
            if section in ignore or name in ignore or (
                    only is not None and section not in only and name not in only):
                continue
            mine, theirs = keys.get(key), other.sections[section].get(key)
            if mine != theirs:
                found.append(f"{name} is {_shown(mine)} here but {_shown(theirs)} "
                             f"in {other.source}")
    return found


def _check_validation_set(source: str, given: dict, sections: dict) -> None:
    """A validation set of its own replaces the hold-out: give one or the other."""
    data = sections["data"]
    if not data["validation"]:
        return
    if given.get("validation_split"):
        raise ConfigError(f"{source}: data.validation and data.validation_split are "
                          "alternatives: give a validation set or a hold-out fraction, not both")
    misplaced = sorted(set(data["validation"]) & set(SCHEMA["data"]) - {"dataset"})
    if misplaced:
        raise ConfigError(f"{source}: data.validation.{misplaced[0]}: give only the validation "
                          "set's dataset and loader arguments (the others of [data] apply)")
    sections["data"] = MappingProxyType({**data, "validation_split": 0.0})


def _checked(source, path, value, spec):
    kind, default, *allowed = spec
    if value is REQUIRED:
        if default is REQUIRED:
            raise ConfigError(f"{source}: {path} is required")
        return copy.deepcopy(default)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{source}: {path} must be {TYPE_NAMES[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{source}: {path} must be a finite number, got {value!r}")
    if allowed and value not in allowed[0]:
        raise ConfigError(f"{source}: {path} = {value!r} is not allowed; allowed: "
                          f"{', '.join(sorted(allowed[0]))}")
    if path in POSITIVE and value <= 0:
        raise ConfigError(f"{source}: {path} must be > 0, got {value!r}")
    if path in NOT_NEGATIVE and value < 0:
        raise ConfigError(f"{source}: {path} must be >= 0, got {value!r}")
    if path == "data.validation_split" and not 0 <= value < 1:
        raise ConfigError(f"{source}: {path} must be in [0, 1), got {value!r}")
    return value


def _check_layers(job: Job) -> None:
    layers = job["model.layers"]
    if not layers:
        raise ConfigError(f"{job.source}: model.layers is empty; give at least one layer")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
            raise ConfigError(f"{job.source}: model.layers[{index}] must be a table with a "
                              f"'type' (e.g. {{ type = \"dense\", units = 64 }}), got {layer!r}")


def _apply_override(raw: dict, override: str, source: str) -> None:
    """Apply `section.key=value` (value read as TOML, else as a bare string)."""
    path, sep, value_text = override.partition("=")
    parts = path.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {override!r}: expected section.key=value, "
                          "e.g. --set training.epochs=5")
    if parts[0] not in SCHEMA or (parts[1] not in SCHEMA[parts[0]]
                                  and parts[0] not in OPEN_SECTIONS):
        raise ConfigError(f"--set {override!r}: unknown key {'.'.join(parts[:2])}")
    try:
        value = tomllib.loads(f"value = {value_text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    if SCHEMA[parts[0]].get(parts[1], (None,))[0] is str and len(parts) == 2:
        value = value if isinstance(value, str) else value_text.strip()  # name=nan, name=1
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a table in {source}")
    table[parts[-1]] = value


RESOLVED_HEADER = "# The resolved job: every default and override written out."
OLD_OVERRIDES_MARKER = "\n# --set overrides:\n"
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_job(sections, overrides=()) -> str:
    """The resolved job as TOML that parse_job reads back to the same sections."""
    lines = [RESOLVED_HEADER]
    lines += [f"# --set {item}" for item in overrides if item.isprintable()]
    for section, keys in sections.items():
        lines += ["", f"[{section}]"]
        for key, value in keys.items():
            if section == "model" and key == "layers":
                lines += ["layers = ["] + [f"    {toml_value(layer)}," for layer in value] + ["]"]
            else:
                lines.append(f"{_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _shown(value) -> str:
    return "not set" if value is None else toml_value(value)


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    escaped = "".join(
        char if char not in '"\\' and (char == "\t" or (ord(char) >= 0x20 and char != "\x7f"))
        else f"\\u{ord(char):04x}" for char in text)
    return f'"{escaped}"'


def toml_value(value) -> str:
    """A value as TOML (inline tables for tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime.date, datetime.time)):  # a TOML date or time
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()
                                if v is not None) + " }" if value else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")
