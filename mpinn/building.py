"""A job's parts: backend, model, optimizer, data and strategy, built from a validated Job;
and a model rebuilt from a checkpoint's stored job. The runner, `load_model` and the CLI's
evaluate and predict all build through here, so a checkpoint is read as it was trained."""

import inspect
import math

from . import checkpoint, optim, plugins
from .backend import get_backend
from .config import SCHEMA, Job, stored_job, with_data_defaults
from .data import train_test_split
from .dist.comm import Comm
from .errors import ConfigError, DataError, MpinnError
from .layers import LAYER_TYPES
from .model import Sequential
from .optim import schedules


def _keyword_names(target) -> list[str]:
    """Keyword arguments `target` accepts, following **kwargs up a class's bases."""
    names = []
    for owner in (target.__mro__ if inspect.isclass(target) else [target]):
        function = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        parameters = inspect.signature(function).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _call_checked(where: str, target, kwargs: dict, fixed: "dict | None" = None):
    """target(**fixed, **kwargs), with unknown keys and bad values named by `where`;
    `fixed` are arguments the job does not set."""
    fixed = fixed or {}
    allowed = [name for name in _keyword_names(target) if name not in fixed]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]}; allowed: "
                          f"{', '.join(allowed) or 'none'}")
    try:
        return target(**fixed, **kwargs)
    except MpinnError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_backend(job: Job, comm: Comm):
    """The job's backend, on the device that this rank's place on its node gives it."""
    name = job["model.backend"]
    try:
        backend = get_backend(name)
        backend.select_device(comm.local_rank)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: model.backend = {name!r}: {exc}") from exc
    return backend


def build_model(job: Job) -> Sequential:
    layers = []
    for index, spec in enumerate(job["model.layers"]):
        options = dict(spec)
        kind = options.pop("type")
        where = f"{job.source}: model.layers[{index}]"
        if kind not in LAYER_TYPES:
            raise ConfigError(f"{where}: unknown layer type {kind!r}; allowed: "
                              f"{', '.join(LAYER_TYPES)}")
        layers.append(_call_checked(where, LAYER_TYPES[kind], options))
    model = _call_checked(f"{job.source}: [model]", Sequential, {
        "layers": layers, "seed": job["run.seed"], "dtype": job["model.dtype"],
        "backend": job["model.backend"]})
    if job["training.loss"]:
        model.compile(optimizer=build_optimizer(job), loss=job["training.loss"],
                      metrics=job["training.metrics"])
    return model


def build_optimizer(job: Job) -> optim.Optimizer:
    name = job["optimizer.name"]
    if name not in optim.OPTIMIZERS:
        raise ConfigError(f"{job.source}: optimizer.name = {name!r} is not allowed; allowed: "
                          f"{', '.join(optim.OPTIMIZERS)}")
    learning_rate = job["optimizer.learning_rate"]
    schedule = dict(job["optimizer.schedule"])
    if schedule:
        where = f"{job.source}: optimizer.schedule"
        warmup = schedule.pop("warmup_steps", None)
        kind = schedule.pop("name", None)
        if kind is not None:
            if kind not in schedules.SCHEDULES:
                raise ConfigError(f"{where}.name = {kind!r} is not allowed; allowed: "
                                  f"{', '.join(schedules.SCHEDULES)}")
            learning_rate = _call_checked(where, schedules.SCHEDULES[kind],
                                          {"initial_learning_rate": learning_rate, **schedule})
        elif schedule:
            raise ConfigError(f"{where}: needs a name to go with {', '.join(schedule)}")
        if warmup is not None:
            learning_rate = _call_checked(where, schedules.LinearWarmup,
                                          {"schedule": learning_rate, "warmup_steps": warmup})
    return _call_checked(f"{job.source}: [optimizer]", optim.OPTIMIZERS[name],
                         {"learning_rate": learning_rate, **job.extras("optimizer")})


def load_data(job: Job):
    """(x, y) for training, and for validation (None when the job has none): the job's own
    validation set, or a hold-out of `validation_split` drawn with `split_seed`."""
    train = load_dataset(job, job["data.dataset"], job.extras("data"))
    given = job["data.validation"]
    if given:
        name = given.get("dataset", job["data.dataset"])
        arguments = {**job.extras("data"), **{k: v for k, v in given.items() if k != "dataset"}}
        return train, load_dataset(job, name, arguments, "data.validation")
    split = job["data.validation_split"]
    if not split:
        return train, None
    x_train, x_val, y_train, y_val = train_test_split(*train, split, seed=job["data.split_seed"])
    return (x_train, y_train), (x_val, y_val)


def completed(job: Job) -> Job:
    """The job with its dataset's default arguments written out, so that giving a default
    explicitly is the same job, and a checkpoint records every argument its data had."""
    try:
        loader = plugins.load(plugins.DATASETS, job["data.dataset"])
    except MpinnError:
        return job  # load_data says what is wrong
    defaults = {parameter.name: parameter.default
                for parameter in inspect.signature(loader).parameters.values()
                if isinstance(parameter.default, (bool, int, float, str))}
    return with_data_defaults(job, defaults)


def load_dataset(job: Job, name: str, arguments: dict, key: str = "data"):
    """(x, y) of dataset plugin `name` called with `arguments`; `key` names them in errors."""
    try:
        loader = plugins.load(plugins.DATASETS, name)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: {key}.dataset: {exc}") from exc
    allowed = _keyword_names(loader)
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ConfigError(f"{job.source}: unknown key {key}.{unknown[0]}; [data] takes "
                          f"{', '.join(SCHEMA['data'])} and the arguments of dataset {name!r}: "
                          f"{', '.join(allowed) or 'none'}")
    where = f"{job.source}: [{key}] (dataset {name!r})"
    x, y = _call_checked(where, loader, arguments)
    if len(x) != len(y):
        given = "".join(f", {k}={v!r}" for k, v in arguments.items())
        raise DataError(f"{job.source}: [{key}] (dataset {name!r}{given}): x has {len(x)} "
                        f"samples but y has {len(y)}")
    return x, y


def load_strategy(job: Job, comm: Comm):
    name = job["strategy.name"]
    try:
        strategy_class = plugins.load(plugins.STRATEGIES, name)
    except MpinnError as exc:
        raise ConfigError(f"{job.source}: strategy.name: {exc}") from exc
    return _call_checked(f"{job.source}: [strategy] ({name!r})", strategy_class,
                         job.extras("strategy"), fixed={"comm": comm})


def load_model(path, backend: "str | None" = None) -> Sequential:
    """The model saved in a checkpoint (`model.save` or a training run), with its weights,
    optimizer state and step count, ready to predict, evaluate or train on."""
    found = checkpoint.read(path)
    model = model_from(found, stored(found, backend))
    checkpoint.restore(model, found)
    return model


def stored(found: "checkpoint.Checkpoint", backend: "str | None" = None, overrides=()) -> Job:
    """The job a checkpoint was trained with (`backend` replaces its backend)."""
    text = found.attrs["config"]
    if not text.strip():
        raise DataError(f"{found.path}: holds no job description (attribute 'config'), so the "
                        "model cannot be rebuilt")
    if backend:
        overrides = [*overrides, f"model.backend={backend}"]
    return stored_job(text, f"{found.path} (stored job)", overrides)


def model_from(found: "checkpoint.Checkpoint", job: Job) -> Sequential:
    """The job's model, built for the checkpoint's tensors (checked before allocating: the
    stored job could ask for any size); its values are the job's initial ones."""
    model = build_model(job)
    shapes = found.shapes["params"]
    kernels = [shapes[f"{layer.name}/kernel"] for layer in model.layers
               if f"{layer.name}/kernel" in shapes]
    input_dim = kernels[0][0] if kernels else model.input_dim
    if input_dim is not None:
        planned = model.planned_parameters(input_dim)
        stored_count = sum(math.prod(shape) for shape in shapes.values())
        if planned != stored_count:
            raise DataError(f"{found.path}: the stored job's model has {planned:,} parameters, "
                            f"the stored tensors {stored_count:,}")
    model.build(input_dim)
    return model
