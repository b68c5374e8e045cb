"""A model as a job file (TOML text): how `model.save` records the architecture and
training setup (`building.load_model` rebuilds the model from it)."""

from . import optim
from .config import toml_value
from .optim import schedules

SCHEDULE_NAMES = {cls: name for name, cls in schedules.SCHEDULES.items()}


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
    lines = ["[model]", f"dtype = {toml_value(str(model.dtype))}",
             f"backend = {toml_value(model.backend.name)}", "layers = ["]
    tables = [layer.get_config() for layer in model.layers]
    tables[0]["input_dim"] = model.input_dim
    lines += [f"    {toml_value(table)}," for table in tables]
    lines += ["]", "", "[run]", f"seed = {model.seed}"]
    if model.loss is not None:
        loss = model.loss.name
        metrics = [spec for spec in model._metric_specs if isinstance(spec, str)]
        lines += ["", "[training]", f"loss = {toml_value(loss)}",
                  f"metrics = {toml_value(metrics)}"]
        rate, table = _schedule_table(model.optimizer.learning_rate)
        name = next(key for key, cls in optim.OPTIMIZERS.items()
                    if type(model.optimizer) is cls)
        lines += ["", "[optimizer]", f"name = {toml_value(name)}", f"learning_rate = {rate!r}"]
        lines += [f"{key} = {toml_value(value)}" for key, value in model.optimizer.config.items()
                  if value is not None]
        if table:
            lines.append(f"schedule = {toml_value(table)}")
    return "\n".join(lines) + "\n"
