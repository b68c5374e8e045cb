"""Job files: TOML in, a frozen and fully validated Job out.

Validation is strict and happens before anything runs: an unknown key, a value of the
wrong type or an impossible value raises a ConfigError naming the file, the key path and
the value. `--set key.path=value` overrides go through the same checks.
"""

import copy
import math
import tomllib
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
    },
    "data": {
        "dataset": (str, "digits"),
        "validation_split": (float, 0.2),
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
NOT_NEGATIVE = {"checkpoint.every_epochs", "checkpoint.every_steps", "watchdog.warn_seconds",
                "watchdog.abort_seconds"}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              list: "an array", dict: "a table"}


@dataclass(frozen=True)
class Job:
    """A validated job: `sections[section][key]`, read-only; `text` is the job as TOML."""

    source: str
    sections: MappingProxyType
    text: str

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
    job = Job(source, MappingProxyType(sections), _canonical_text(text, overrides))
    _check_layers(job)
    return job


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
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a table in {source}")
    table[parts[-1]] = value


def _canonical_text(text: str, overrides) -> str:
    """The job as given, with any overrides recorded after it."""
    if not overrides:
        return text
    return text + "\n# --set overrides:\n" + "".join(f"# {item}\n" for item in overrides)
