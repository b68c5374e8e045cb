"""Checkpoints in HDF5: everything needed to continue a run exactly, on any world size.

Layout (readable with plain h5py or h5dump):

    /                         attrs: format, format_version, mpinn_version, epoch, step,
                                     iterations, world_size, strategy, backend, dtype,
                                     config (the job as TOML text, may be empty)
    /params/<layer>/<name>    parameters, one float dataset each
    /optimizer/<slot>/<layer>/<name>   optimizer state (e.g. adam/grad_sum), laid out like params
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
FORMAT_VERSION = 2
NAME_PATTERN = "ckpt-{iterations:09d}.h5"
NAME_RE = re.compile(r"^ckpt-(\d{9})\.h5$")
TEMPORARY_RE = re.compile(r"^\.ckpt-\d{9}\.h5\.tmp-\d+$")
REQUIRED_ATTRS = ("format", "format_version", "epoch", "step", "iterations", "dtype")


@dataclass
class Checkpoint:
    """What `read` found: metadata, and the names and shapes of the stored tensors.
    Tensor values are read on demand (`params`, `optimizer`) or straight into a model's
    buffers (`restore`), so that loading allocates nothing twice."""

    path: Path
    attrs: dict
    # group ("params", "optimizer/adam/grad_sum") -> tensor name -> shape
    shapes: dict[str, dict[str, tuple]]
    data: dict = field(default_factory=dict)
    rng: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def slots(self) -> list[str]:
        """Optimizer state slots, e.g. ["adam/grad_sq_sum", "adam/grad_sum"]."""
        return sorted(group.removeprefix("optimizer/") for group in self.shapes
                      if group.startswith("optimizer/"))

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.tensors("params")

    @property
    def optimizer(self) -> dict[str, dict[str, np.ndarray]]:
        return {slot: self.tensors(f"optimizer/{slot}") for slot in self.slots}

    def tensors(self, group: str) -> dict[str, np.ndarray]:
        """The named arrays of one group, checksums verified."""
        with _opened(self.path) as file:
            return {name: file[f"{group}/{name}"][()] for name in self.shapes[group]}

    def read_into(self, group: str, targets: dict, to_backend=None) -> None:
        """Read each named tensor of `group` into `targets[name]` (host arrays, or backend
        arrays through `to_backend(host, target)`), checksums verified."""
        with _opened(self.path) as file:
            for name, target in targets.items():
                dataset = file[f"{group}/{name}"]
                if to_backend is None:
                    dataset.read_direct(target)
                else:
                    to_backend(dataset[()], target)

    def verify(self) -> None:
        """Read every tensor once, so that a damaged one raises DataError now."""
        for group in self.shapes:
            self.tensors(group)


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
                    rng.attrs[layer.name] = json.dumps(model.backend.rng_state(layer.rng))
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
        value = to_host(value)
        # one chunk per tensor (HDF5 allows up to 4 GiB): checksummed in one piece
        chunks = value.shape if 0 < value.nbytes < 2**32 else True
        group.create_dataset(name, data=value, fletcher32=True, chunks=chunks)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


# -------------------------------------------------------------------------- reading
class _opened:
    """h5py.File(path, "r") whose failures (a bad checksum, a truncated file) become one
    DataError naming the file."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: damaged checkpoint ({_first_line(exc)})") from exc
        return self.file

    def __exit__(self, kind, exc, traceback):
        self.file.close()
        if isinstance(exc, (OSError, KeyError, ValueError, TypeError)):
            raise DataError(f"{self.path}: damaged checkpoint ({_first_line(exc)})") from exc
        return False


def read(path) -> Checkpoint:
    """Read and check a checkpoint's structure and metadata; any problem is a DataError
    naming the file. Tensor values are read later, with their checksums."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    with _opened(path) as file:
        shapes = _check_structure(path, file)
        attrs = {key: _plain(value) for key, value in file.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise DataError(f"{path}: not an mpinn checkpoint (format "
                            f"{attrs.get('format')!r}, expected {FORMAT!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: checkpoint format version "
                            f"{attrs.get('format_version')} is not {FORMAT_VERSION}")
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing or "params" not in shapes:
            raise DataError(f"{path}: incomplete checkpoint (missing "
                            f"{', '.join(missing) or '/params'})")
        found = Checkpoint(path, attrs, {group: tensors for group, tensors in shapes.items()
                                         if group == "params" or group.startswith("optimizer/")})
        if "data" in file:
            found.data = {k: _plain(v) for k, v in file["data"].attrs.items()}
        if "rng" in file:
            found.rng = {k: str(v) for k, v in file["rng"].attrs.items()}
        if "history" in file:
            found.history = {k: v[()].tolist() for k, v in file["history"].items()}
        return found


def _check_structure(path, file) -> dict[str, dict[str, tuple]]:
    """Refuse links to other files, soft links, virtual datasets and non-numeric data
    before reading anything; return the datasets' shapes by group and name."""
    shapes: dict[str, dict[str, tuple]] = {}
    problem = None

    def visit(name, link):
        nonlocal problem
        if problem:
            return
        if not isinstance(link, h5py.HardLink):
            problem = f"{name} is a {type(link).__name__}"
            return
        node = file[name]
        if isinstance(node, h5py.Dataset):
            if node.is_virtual:
                problem = f"{name} is a virtual dataset"
            elif node.dtype.kind not in "biuf" or node.dtype.names is not None:
                problem = f"{name} has non-numeric type {node.dtype}"
            else:
                group, _, rest = name.partition("/")
                if group == "optimizer":  # optimizer/<transform>/<slot>/<layer>/<name>
                    parts = name.split("/")
                    group, rest = "/".join(parts[:3]), "/".join(parts[3:])
                shapes.setdefault(group, {})[rest] = node.shape

    file.visititems_links(visit)
    if problem:
        raise DataError(f"{path}: refused: {problem}")
    return shapes


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
    _check_tensors(where, "parameters", checkpoint.shapes["params"], expected)
    if model.optimizer is not None:
        slots = set(model.optimizer.state())
        if set(checkpoint.slots) != slots:
            raise DataError(
                f"{where}: optimizer state {checkpoint.slots or 'none'} does not fit the "
                f"job's optimizer {type(model.optimizer).__name__} "
                f"({', '.join(sorted(slots)) or 'no state'})")
        for slot in slots:
            _check_tensors(where, f"optimizer state {slot}",
                           checkpoint.shapes[f"optimizer/{slot}"], expected)
    backend = model.backend
    host = isinstance(model.params.data, np.ndarray) and model.dtype == checkpoint.attrs["dtype"]

    def to_backend(value, target):
        target[...] = backend.asarray(value, dtype=target.dtype)

    copy = None if host else to_backend
    checkpoint.read_into("params", model.params.values, copy)
    if model.optimizer is not None:
        for slot, flat in model.optimizer.state().items():
            checkpoint.read_into(f"optimizer/{slot}", model.params.views(flat), copy)
        model.optimizer.iterations = int(checkpoint.attrs["iterations"])
    if checkpoint.attrs.get("backend", backend.name) != backend.name:
        return  # dropout streams differ between backends: keep the seed's own
    for layer in model.layers:
        if layer.name in checkpoint.rng and getattr(layer, "rng", None) is not None:
            backend.set_rng_state(layer.rng, json.loads(checkpoint.rng[layer.name]))


def _check_tensors(where, what, shapes: dict, expected: dict) -> None:
    if set(shapes) != set(expected):
        extra, missing = sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes))
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DataError(f"{where}: {what} do not fit the model ({detail})")
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise DataError(f"{where}: {what} {name} has shape {tuple(shapes[name])}, "
                            f"the model needs {tuple(shape)}")


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
            found = read(path)
            found.verify()
            return found
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
