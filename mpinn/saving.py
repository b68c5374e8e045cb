"""A model as a job file (TOML text) and back: how `model.save` records the architecture
and training setup, and how `load_model` rebuilds a model from any checkpoint."""

import json
import math

from . import checkpoint, optim
from .errors import DataError
from .optim import schedules

SCHEDULE_NAMES = {cls: name for name, cls in schedules.SCHEDULES.items()}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()
                                if v is not None) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _schedule_table(schedule) -> tuple[float, dict]:
    """(initial learning rate, [optimizer.schedule] table) of a schedule."""
    if isinstance(schedule, schedules.LinearWarmup):
        rate, table = _schedule_table(schedule.schedule)
        return rate, {**table, "warmup_steps": schedule.warmup_steps}
    if isinstance(schedule, schedules.Constant):
        return schedule.learning_rate, {}
    arguments = {k: v for k, v in vars(schedule).items() if k != "initial_learning_rate"}
    return schedule.initial_learning_rate, {"name": SCHEDULE_NAMES[type(schedule)],
                                            **arguments}


def model_job_text(model) -> str:
    """The model's architecture, loss, metrics and optimizer as a job file."""
    lines = ["[model]", f"dtype = {_toml(str(model.dtype))}",
             f"backend = {_toml(model.backend.name)}", "layers = ["]
    tables = [layer.get_config() for layer in model.layers]
    tables[0]["input_dim"] = model.input_dim
    lines += [f"    {_toml(table)}," for table in tables]
    lines += ["]", "", "[run]", f"seed = {model.seed}"]
    if model.loss is not None:
        loss = model.loss.name
        metrics = [spec for spec in model._metric_specs if isinstance(spec, str)]
        lines += ["", "[training]", f"loss = {_toml(loss)}", f"metrics = {_toml(metrics)}"]
        rate, table = _schedule_table(model.optimizer.learning_rate)
        name = next(key for key, cls in optim.OPTIMIZERS.items()
                    if type(model.optimizer) is cls)
        lines += ["", "[optimizer]", f"name = {_toml(name)}", f"learning_rate = {rate!r}"]
        lines += [f"{key} = {_toml(value)}" for key, value in model.optimizer.config.items()
                  if value is not None]
        if table:
            lines.append(f"schedule = {_toml(table)}")
    return "\n".join(lines) + "\n"


def load_model(path, backend: "str | None" = None):
    """The model saved in a checkpoint (`model.save` or a training run), with its weights,
    optimizer state and step count, ready to predict, evaluate or train on."""
    from .config import parse_job
    from .runner import build_model

    found = checkpoint.read(path)
    if not found.attrs["config"].strip():
        raise DataError(f"{path}: holds no job description (attribute 'config'), so the "
                        "model cannot be rebuilt")
    overrides = [f"model.backend={json.dumps(backend)}"] if backend else []
    job = parse_job(found.attrs["config"], f"{path} (stored job)", overrides)
    model = build_model(job)
    shapes = found.shapes["params"]
    kernels = [shapes[f"{layer.name}/kernel"] for layer in model.layers
               if f"{layer.name}/kernel" in shapes]
    input_dim = kernels[0][0] if kernels else model.input_dim
    if input_dim is not None:  # before allocating: the stored job could ask for any size
        planned = model.planned_parameters(input_dim)
        stored = sum(math.prod(shape) for shape in shapes.values())
        if planned != stored:
            raise DataError(f"{path}: the stored job's model has {planned:,} parameters, "
                            f"the stored tensors {stored:,}")
    model.build(input_dim)
    checkpoint.restore(model, found)
    return model
