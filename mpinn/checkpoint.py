"""Checkpoints in HDF5: everything needed to continue a run exactly, on any world size.

Layout (readable with plain h5py or h5dump):

    /                         attrs: format, format_version, mpinn_version, epoch, step,
                                     iterations, world_size, strategy, backend, dtype,
                                     config (the job as TOML text, may be empty)
    /params/<layer>/<name>    parameters, one float dataset each
    /optimizer/<slot>/<layer>/<name>   optimizer state (e.g. adam/m), laid out like params
    /data                     attrs: epoch, step (global batches done in that epoch), seed
    /rng                      attrs: one JSON text per Dropout layer (generator state)
    /history/<metric>         per-epoch values

Written atomically: a temporary file in the same directory, flush and fsync, os.replace,
fsync of the directory. Read safely: the structure is checked before anything is
allocated (numeric datasets only, no links to other files, no virtual datasets), every
dataset carries a Fletcher-32 checksum that HDF5 verifies on read, nothing is unpickled.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import DataError

FORMAT = "mpinn.checkpoint"
FORMAT_VERSION = 1
NAME_PATTERN = "ckpt-{iterations:09d}.h5"
NAME_RE = re.compile(r"^ckpt-(\d{9})\.h5$")
TEMPORARY_RE = re.compile(r"^\.ckpt-\d{9}\.h5\.tmp-\d+$")
REQUIRED_ATTRS = ("format", "format_version", "epoch", "step", "iterations", "dtype")


@dataclass
class Checkpoint:
    path: Path
    attrs: dict
    params: dict[str, np.ndarray]
    optimizer: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    rng: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)


# -------------------------------------------------------------------------- writing
def save(path, model, *, epoch: int = 0, step: int = 0, history=None, config: str = "",
         world_size: int = 1, strategy: str = "local") -> Path:
    """Write `model` (parameters, optimizer state, RNG states) and the run's position."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    to_host = model.backend.to_numpy
    try:
        with h5py.File(temporary, "w") as file:
            iterations = model.optimizer.iterations if model.optimizer else 0
            file.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "mpinn_version": __version__, "epoch": epoch, "step": step,
                "iterations": iterations, "world_size": world_size, "strategy": strategy,
                "backend": model.backend.name, "dtype": str(model.dtype), "config": config,
            })
            _write_tensors(file.create_group("params"), model.params.values, to_host)
            if model.optimizer is not None:
                for slot, flat in model.optimizer.state().items():
                    _write_tensors(file.create_group(f"optimizer/{slot}"),
                                   model.params.views(flat), to_host)
            data = file.create_group("data")
            data.attrs.update({"epoch": epoch, "step": step, "seed": model.seed})
            rng = file.create_group("rng")
            for layer in model.layers:
                if getattr(layer, "rng", None) is not None:
                    rng.attrs[layer.name] = json.dumps(layer.rng.bit_generator.state)
            group = file.create_group("history")
            for metric, values in (history or {}).items():
                group.create_dataset(metric, data=np.asarray(values, np.float64),
                                     fletcher32=True)
            file.flush()
            os.fsync(file.id.get_vfd_handle())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return path


def _write_tensors(group, named: dict, to_host) -> None:
    for name, value in sorted(named.items()):
        group.create_dataset(name, data=to_host(value), fletcher32=True)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


# -------------------------------------------------------------------------- reading
def read(path) -> Checkpoint:
    """Read and check a checkpoint; any problem is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    try:
        if not h5py.is_hdf5(path):
            raise DataError(f"{path}: not an HDF5 file")
        with h5py.File(path, "r") as file:
            _check_structure(path, file)
            attrs = {key: _plain(value) for key, value in file.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise DataError(f"{path}: not an mpinn checkpoint (format "
                                f"{attrs.get('format')!r}, expected {FORMAT!r})")
            if attrs.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{path}: checkpoint format version "
                                f"{attrs.get('format_version')} is not {FORMAT_VERSION}")
            missing = [key for key in REQUIRED_ATTRS if key not in attrs]
            if missing or "params" not in file:
                raise DataError(f"{path}: incomplete checkpoint (missing "
                                f"{', '.join(missing) or '/params'})")
            checkpoint = Checkpoint(path, attrs, _read_tensors(file["params"]))
            for slot_group in ("optimizer",):
                if slot_group in file:
                    for transform, slots in file[slot_group].items():
                        for slot, tensors in slots.items():
                            checkpoint.optimizer[f"{transform}/{slot}"] = _read_tensors(tensors)
            if "data" in file:
                checkpoint.data = {k: _plain(v) for k, v in file["data"].attrs.items()}
            if "rng" in file:
                checkpoint.rng = {k: str(v) for k, v in file["rng"].attrs.items()}
            if "history" in file:
                checkpoint.history = {k: v[()].tolist() for k, v in file["history"].items()}
            return checkpoint
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: damaged checkpoint ({_first_line(exc)})") from exc


def _check_structure(path, file) -> None:
    """Refuse links to other files, virtual datasets and non-numeric data before reading."""
    problems = []

    def visit(name):
        link = file.get(name, getlink=True)
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            problems.append(f"{name} is a {type(link).__name__}")
            return
        node = file[name]
        if isinstance(node, h5py.Dataset):
            if node.is_virtual:
                problems.append(f"{name} is a virtual dataset")
            elif node.dtype.kind not in "biuf" or node.dtype.names is not None:
                problems.append(f"{name} has non-numeric type {node.dtype}")

    _visit_links(file, "", visit)
    if problems:
        raise DataError(f"{path}: refused: {problems[0]}")


def _visit_links(group, prefix, visit) -> None:
    """Every link under `group`, external and soft ones included (visititems skips them)."""
    for name in group:
        full = f"{prefix}{name}"
        visit(full)
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
            _visit_links(group[name], f"{full}/", visit)


def _read_tensors(group) -> dict[str, np.ndarray]:
    found = {}
    for layer, members in group.items():
        for name, dataset in members.items():
            found[f"{layer}/{name}"] = dataset[()]
    return found


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ------------------------------------------------------------------------ restoring
def restore(model, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's parameters, optimizer state and RNG states into `model`,
    after checking that every name and shape fits it."""
    model.build()
    where = checkpoint.path
    expected = {slot.name: slot.shape for slot in model.params.slots}
    _check_tensors(where, "parameters", checkpoint.params, expected)
    if model.optimizer is not None:
        slots = set(model.optimizer.state())
        if set(checkpoint.optimizer) != slots:
            raise DataError(
                f"{where}: optimizer state {sorted(checkpoint.optimizer) or 'none'} does not "
                f"fit the job's optimizer {type(model.optimizer).__name__} "
                f"({', '.join(sorted(slots)) or 'no state'})")
        for slot in slots:
            _check_tensors(where, f"optimizer state {slot}", checkpoint.optimizer[slot],
                           expected)
    backend = model.backend
    for name, value in checkpoint.params.items():
        model.params.values[name][...] = backend.asarray(value, dtype=model.dtype)
    if model.optimizer is not None:
        for slot, flat in model.optimizer.state().items():
            views = model.params.views(flat)
            for name, value in checkpoint.optimizer[slot].items():
                views[name][...] = backend.asarray(value, dtype=flat.dtype)
        model.optimizer.iterations = int(checkpoint.attrs["iterations"])
    for layer in model.layers:
        if layer.name in checkpoint.rng and getattr(layer, "rng", None) is not None:
            layer.rng.bit_generator.state = json.loads(checkpoint.rng[layer.name])


def _check_tensors(where, what, found: dict, expected: dict) -> None:
    if set(found) != set(expected):
        extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DataError(f"{where}: {what} do not fit the model ({detail})")
    for name, shape in expected.items():
        if found[name].shape != shape:
            raise DataError(f"{where}: {what} {name} has shape {found[name].shape}, "
                            f"the model needs {shape}")


# ------------------------------------------------------------------ run directories
def checkpoint_path(directory, iterations: int) -> Path:
    return Path(directory) / NAME_PATTERN.format(iterations=iterations)


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in `directory`, newest (most optimizer steps) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME_RE.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_valid(directory) -> "Checkpoint | None":
    """The newest checkpoint in `directory` that reads cleanly (None when there is none)."""
    for path in list_checkpoints(directory):
        try:
            return read(path)
        except DataError:
            continue
    return None


def prune(directory, keep: int) -> None:
    """Keep the newest `keep` checkpoints; remove older ones and stray temporary files."""
    for path in list_checkpoints(directory)[keep:]:
        path.unlink(missing_ok=True)
    for path in Path(directory).iterdir():
        if TEMPORARY_RE.match(path.name):
            path.unlink(missing_ok=True)
