"""`mpinn evaluate` and `mpinn predict`: a checkpoint used as it was trained. Its stored job
rebuilds the model and names the data (the run's own validation set, drawn as in
training); under mpirun every rank takes a shard and rank 0 speaks."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint
from .building import completed, load_data, load_dataset, model_from, stored
from .config import Job, names_data
from .data.files import read_numpy
from .dist.strategy import Strategy
from .errors import ConfigError, DataError, MpinnError, StorageError
from .inputs import features
from .model import Sequential

DATA_SUFFIXES = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}


@dataclass
class Evaluation:
    """A checkpoint's model and the data to score it on, named in words."""

    model: Sequential
    x: object
    y: object
    what: str
    batch_size: int
    exact: bool  # a reproducible job's: its batches, summed exactly (Strategy.exact_sums)

    def run(self, comm) -> dict:
        """Loss and metrics, each rank scoring its shard with the training's batch size, so
        that the figures are the training's own for the same data and world size (a
        reproducible job's: for the same data, on any world size)."""
        strategy = Strategy(comm)
        strategy.exact_sums = self.exact
        strategy.setup(self.model)
        return self.model._evaluate_checked(self.x, self.y, self.batch_size, strategy)


def restored(path, overrides=()) -> tuple[Sequential, Job, Job, "checkpoint.Checkpoint"]:
    """(model with the checkpoint's weights, the stored job, the job with `overrides`, the
    checkpoint); only the data and the backend may be overridden: the model is the
    checkpoint's."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not (key.startswith("data.") or key == "model.backend"):
            raise ConfigError(f"--set {item!r}: only data.* keys and model.backend can be set "
                              "here; the model is the checkpoint's")
    found = checkpoint.read(path)
    job = completed(stored(found, overrides=overrides))
    model = model_from(found, job)
    checkpoint.restore(model, found)
    return model, completed(stored(found)), job, found


def prepare_evaluation(path, data_file=None, overrides=()) -> Evaluation:
    """What `mpinn evaluate` scores: every sample of `data_file`; every sample of the data
    when `overrides` change where it comes from; else the run's validation set."""
    model, trained, job, found = restored(path, overrides)
    if model.loss is None:
        raise MpinnError(f"{path}: the stored model has no loss to evaluate")
    if data_file is None and not overrides and not names_data(found.attrs["config"]):
        raise ConfigError(f"{path}: the stored job names no data (a model saved from Python): "
                          "give the data to score with --data FILE, or --set data.dataset=... "
                          "and its arguments")
    if data_file is not None:
        (x, y), what = _file_data(job, data_file), f"{data_file}"
    elif job["data.dataset"] != trained["data.dataset"] or (
            job.extras("data") != trained.extras("data")):
        (x, y), what = load_dataset(job, job["data.dataset"], job.extras("data")), (
            f"dataset {job['data.dataset']!r}")
    else:
        train, validation = load_data(job)
        (x, y), what = (validation, _validation_text(job)) if validation is not None else (
            train, "the training data (the job has no validation set)")
    x, y = model._checked(x, y)
    return Evaluation(model, x, y, f"{what}, {len(x)} samples", job["training.batch_size"],
                      job.extras("strategy").get("reproducible") is True)


def _file_data(job: Job, data_file):
    """All of a .npz or HDF5 file, read with the job's array names when its loader is the
    same."""
    name = DATA_SUFFIXES.get(Path(data_file).suffix.lower())
    if name is None:
        raise ConfigError(f"--data {data_file}: give a .npz or HDF5 (.h5, .hdf5) file, or "
                          "choose other data with --set data.dataset=... and its arguments")
    arguments = {**job.extras("data"), "path": str(data_file)} if (
        name == job["data.dataset"]) else {"path": str(data_file)}
    return load_dataset(job, name, arguments, "--data")


def _validation_text(job: Job) -> str:
    if job["data.validation"]:
        return "the validation set (data.validation)"
    return (f"the validation hold-out ({job['data.validation_split']:g} of the data, "
            f"split_seed {job['data.split_seed']})")


def prepare_prediction(path, inputs) -> tuple[Sequential, np.ndarray]:
    """The checkpoint's model and the samples of INPUT.npy, checked against it."""
    model, *_ = restored(path)
    x = read_numpy(inputs, ".npy array")
    if not isinstance(x, np.ndarray):
        raise DataError(f"{inputs}: not a .npy array but an archive; save the samples with "
                        "numpy.save")
    return model, features(x, model.input_dim, str(inputs), f"layer {model.layers[0].name!r}")


def save_array(path, array: np.ndarray) -> Path:
    """Write a .npy file whole or not at all (an earlier file of that name survives a full
    disk); as np.save, a name without .npy gets it. Returns the path written."""
    path = Path(path) if str(path).endswith(".npy") else Path(f"{path}.npy")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.save(file, array)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    return path
