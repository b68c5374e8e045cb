"""Checkpoints in HDF5: everything needed to continue a run exactly, on any world size.

Layout (readable with plain h5py or h5dump):

    /                         attrs: format, format_version, mpinn_version, epoch, step,
                                     iterations, world_size, strategy, backend, dtype,
                                     config (the job as TOML text, may be empty),
                                     run_id (the run's id, kept across resumes; optional)
    /params/<layer>/<name>    parameters, one float dataset each
    /optimizer/<slot>/<layer>/<name>   optimizer state (e.g. adam/grad_sum), laid out like params
    /data                     attrs: epoch, step (global batches done in that epoch), seed
    /rng                      attrs: one JSON text per Dropout layer (generator state)
    /history/<metric>         per-epoch values
    /strategy/<name>          the strategy's own state, where it keeps one (optional; e.g.
                              local_sgd's per-rank parameters, one row per rank)

Written atomically: a temporary file in the same directory, flush and fsync, os.replace,
fsync of the directory. Tensors holding NaN or Inf are never written (NonFiniteError), and
a failed write is one StorageError; either way the previous file is left as it was.

Read only from itself: before any tensor is read, every name must be one mpinn writes, a
hard link to a group or dataset in its place; every dataset must keep its bytes in this
file, in chunks no larger than itself, with a Fletcher-32 checksum and no other filter; all
datasets together must fit in the file's size; and the attributes mpinn writes are read by
name and checked for type and range. HDF5 verifies the checksums as tensors are read, and
only from the file that was checked. Nothing is unpickled.
"""

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__, rundir
from .errors import DataError, NonFiniteError, StorageError

FORMAT = "mpinn.checkpoint"
FORMAT_VERSION = 2
NAME_PATTERN = "ckpt-{iterations:09d}.h5"
NAME_RE = re.compile(r"^ckpt-(\d{9})\.h5$")
TEMPORARY_RE = re.compile(r"^\.(?:ckpt-\d{9}|final)\.h5\.tmp-(\d+)$")
# top-level group -> (name parts of its datasets, 0 for none; what mpinn writes there)
LAYOUT = {
    "params": (3, "params/<layer>/<name>"),
    "optimizer": (5, "optimizer/<transform>/<slot>/<layer>/<name>"),
    "data": (0, "attributes only"),
    "rng": (0, "attributes only"),
    "history": (2, "history/<metric>"),
    "strategy": (2, "strategy/<name>"),
}
REQUIRED_GROUPS = ("params", "data", "rng", "history")
COUNT_LIMIT = 2**53  # epochs, steps and ranks stay exact as floats too
LINE_LIMIT = 256  # characters in a name or a one-line attribute
RUN_ID_LIMIT = 64  # characters in a run id
TEXT_LIMIT = 2**20  # characters in the stored job or in one RNG state
# what h5py raises on a damaged file: mostly OSError, some failures as other built-ins
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
               ArithmeticError)
ERRNO_RE = re.compile(r"errno = (\d+)")


@dataclass
class Checkpoint:
    """What `read` found: metadata, and the names and shapes of the stored tensors.
    Tensor values are read on demand (`params`, `optimizer`) or straight into a model's
    buffers (`restore`), so that loading allocates nothing twice; only from the very file
    `read` checked (`stamp`), else DataError."""

    path: Path
    attrs: dict
    # group ("params", "optimizer/adam/grad_sum") -> tensor name -> shape
    shapes: dict[str, dict[str, tuple]]
    data: dict = field(default_factory=dict)
    rng: dict[str, dict] = field(default_factory=dict)  # layer -> generator state
    history: dict[str, list[float]] = field(default_factory=dict)
    stamp: tuple = ()  # (device, inode, size, mtime) of the file when it was checked

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
        with _opened(self.path, self.stamp) as file:
            return {name: file[f"{group}/{name}"][()] for name in self.shapes[group]}

    def read_into(self, group: str, targets: dict, to_backend=None) -> None:
        """Read each named tensor of `group` into `targets[name]` (host arrays, or backend
        arrays through `to_backend(host, target)`), checksums verified."""
        with _opened(self.path, self.stamp) as file:
            for name, target in targets.items():
                dataset = file[f"{group}/{name}"]
                if to_backend is None:
                    dataset.read_direct(target)
                else:
                    to_backend(dataset[()], target)

    def strategy_tensor(self, name: str, row: "int | None" = None) -> np.ndarray:
        """The strategy's tensor `name` (see save's `strategy_state`), or its row `row`
        alone, checksums verified."""
        with _opened(self.path, self.stamp) as file:
            dataset = file[f"strategy/{name}"]
            return dataset[()] if row is None else dataset[row]

    def check_strategy_shapes(self, expected: dict) -> None:
        """DataError unless each strategy tensor named in `expected` (name -> one rank's
        shape) that the checkpoint holds has that shape; `<name>_by_rank`: world_size such
        rows."""
        for name, shape in expected.items():
            rows = (self.attrs["world_size"],) if name.endswith("_by_rank") else ()
            stored = self.shapes.get("strategy", {}).get(name)
            if stored is not None and tuple(stored) != (*rows, *shape):
                raise DataError(f"{self.path}: strategy state {name} has shape "
                                f"{tuple(stored)}, the model needs {(*rows, *shape)}")

    def verify(self) -> int:
        """Read every tensor once, so that a damaged one (a bad checksum, NaN or Inf) raises
        DataError now; returns how many were read."""
        count = 0
        with _opened(self.path, self.stamp) as file:
            for group, names in self.shapes.items():
                for name in names:
                    kind = _non_finite(file[f"{group}/{name}"][()])
                    if kind:
                        raise DataError(f"{self.path}: {_described(group)} {name} holds {kind}")
                    count += 1
        return count


def _described(group: str) -> str:
    """ "parameters", "optimizer state adam/grad_sum" or "strategy state", for messages."""
    if group == "params":
        return "parameters"
    if group == "strategy":
        return "strategy state"
    return f"optimizer state {group.removeprefix('optimizer/')}"


# -------------------------------------------------------------------------- writing
def save(path, model, *, epoch: int = 0, step: int = 0, history=None, config: str = "",
         world_size: int = 1, strategy: str = "local", run_id: "str | None" = None,
         strategy_state: "dict | None" = None) -> Path:
    """Write `model` (parameters, optimizer state, RNG states), the run's position and,
    when given, the run's id and the strategy's own tensors (`strategy_state`: name ->
    host or backend array in the model's dtype; a 2-D one is stored a row per chunk).

    NaN or Inf in a tensor raises NonFiniteError before anything is written; a failed
    write raises StorageError. Either way the previous file at `path` is untouched and
    the temporary file is gone."""
    path = Path(path)
    if run_id is not None and not _is_run_id(run_id):
        raise ValueError(f"run_id must be printable text of 1 to {RUN_ID_LIMIT} characters; "
                         f"received: run_id={run_id!r}")
    strategy_state = strategy_state or {}
    _check_finite(path, model, strategy_state)
    iterations = model.optimizer.iterations if model.optimizer else 0
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "mpinn_version": __version__,
             "epoch": epoch, "step": step, "iterations": iterations,
             "world_size": world_size, "strategy": strategy, "backend": model.backend.name,
             "dtype": str(model.dtype), "config": config}
    if run_id is not None:
        attrs["run_id"] = run_id
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write(temporary, model, attrs, history or {}, strategy_state)
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except (OSError, RuntimeError) as exc:  # h5py reports some failed writes as RuntimeError
        number = _errno(exc)
        if number is None and not isinstance(exc, OSError):
            raise  # not the file system's doing (e.g. a device error while copying out)
        reason = os.strerror(number) if number else _first_line(exc)
        raise StorageError(f"cannot write {path}: {reason}") from exc
    finally:
        with contextlib.suppress(OSError):  # e.g. read-only; `prune` removes strays later
            temporary.unlink(missing_ok=True)
    return path


def _check_finite(path: Path, model, strategy_state: dict) -> None:
    """NonFiniteError naming the first tensor that holds NaN or Inf: one pass over each
    buffer, and a search by tensor only when that pass finds something."""
    buffers = {"parameters": model.params.data}
    if model.optimizer is not None:
        buffers.update({f"optimizer state {slot}": flat
                        for slot, flat in sorted(model.optimizer.state().items())})
    for what, flat in buffers.items():
        if _surely_finite(flat):
            continue
        for name, tensor in sorted(model.params.views(flat).items()):
            kind = _non_finite(model.backend.to_numpy(tensor))
            if kind:
                raise NonFiniteError(f"cannot write {path}: {what} {name} holds {kind}")
    for name, value in sorted(strategy_state.items()):
        kind = _non_finite(model.backend.to_numpy(value))
        if kind:
            raise NonFiniteError(f"cannot write {path}: strategy state {name} holds {kind}")


def _surely_finite(array) -> bool:
    """Whether every value of a host or device array is finite, by one BLAS pass: the sum
    of squares is NaN or Inf when any value is. False too when that sum overflows (values
    beyond about 1e19 in float32), which `_non_finite` tells apart."""
    return bool(np.isfinite(np.vdot(array, array)))


def _non_finite(values: np.ndarray) -> "str | None":
    """ "NaN" or "Inf" when the host array holds one, else None."""
    if _surely_finite(values):
        return None
    if np.isnan(values).any():
        return "NaN"
    return "Inf" if np.isinf(values).any() else None  # None: the squares merely overflowed


def _write(temporary: Path, model, attrs: dict, history: dict, strategy_state: dict) -> None:
    to_host = model.backend.to_numpy
    # no chunk cache: each tensor reaches the file as it is written, so a full disk is
    # reported there and not when h5py closes a dataset (where it can only print it)
    with h5py.File(temporary, "w", rdcc_nbytes=0) as file:
        file.attrs.update(attrs)
        _write_tensors(file.create_group("params"), model.params.values, to_host)
        if model.optimizer is not None:
            for slot, flat in model.optimizer.state().items():
                _write_tensors(file.create_group(f"optimizer/{slot}"),
                               model.params.views(flat), to_host)
        data = file.create_group("data")
        data.attrs.update({"epoch": attrs["epoch"], "step": attrs["step"], "seed": model.seed})
        rng = file.create_group("rng")
        for layer in model.layers:
            if getattr(layer, "rng", None) is not None:
                rng.attrs[layer.name] = json.dumps(model.backend.rng_state(layer.rng))
        group = file.create_group("history")
        for metric, values in history.items():
            group.create_dataset(metric, data=np.asarray(values, np.float64), fletcher32=True)
        if strategy_state:
            _write_tensors(file.create_group("strategy"), strategy_state, to_host)
        file.flush()
        os.fsync(file.id.get_vfd_handle())


def _write_tensors(group, named: dict, to_host) -> None:
    for name, value in sorted(named.items()):
        value = to_host(value)
        # one chunk per tensor (HDF5 allows up to 4 GiB), or per row of a per-rank one
        # (each rank reads its own): checksummed in one piece
        piece = value.shape if value.ndim < 2 else (1, *value.shape[1:])
        chunks = piece if 0 < math.prod(piece) * value.itemsize < 2**32 else True
        group.create_dataset(name, data=value, fletcher32=True, chunks=chunks)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _errno(exc: BaseException) -> "int | None":
    """The operating system's error number for a failed write, from the exception or one
    it chains: on a full disk HDF5's last word is e.g. "Can't destroy cache", and the
    failed write's "errno = 28" is earlier in the chain."""
    while exc is not None:
        found = ERRNO_RE.search(str(exc))
        if getattr(exc, "errno", None) or found:
            return getattr(exc, "errno", None) or int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


# -------------------------------------------------------------------------- reading
class _opened:
    """h5py.File(path, "r") whose failures (a bad checksum, a truncated file) become one
    DataError naming the file; with a `stamp`, only the very file that was checked."""

    def __init__(self, path, stamp: tuple = ()):
        self.path, self.stamp = Path(path), stamp

    def __enter__(self):
        try:
            self.file = h5py.File(self.path, "r")
        except READ_ERRORS as exc:
            raise DataError(f"{self.path}: damaged checkpoint ({_first_line(exc)})") from exc
        if self.stamp and _stamp(self.file) != self.stamp:
            self.file.close()
            raise DataError(f"{self.path}: the file changed after it was checked")
        return self.file

    def __exit__(self, kind, exc, traceback):
        self.file.close()
        if isinstance(exc, READ_ERRORS) and not isinstance(exc, DataError):
            raise DataError(f"{self.path}: damaged checkpoint ({_first_line(exc)})") from exc
        return False


def _stamp(file) -> tuple:
    """Which file, in which version, an open h5py File is."""
    status = os.fstat(file.id.get_vfd_handle())
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def read(path) -> Checkpoint:
    """Read and check a checkpoint's structure and metadata; any problem, whatever the
    file holds, is one DataError naming the file. Tensor values are read later, with
    their checksums."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a checkpoint file (a run's model is "
                        f"{path / 'final.h5'})")
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    with _opened(path) as file:
        stamp = _stamp(file)
        _check_format(path, file)
        datasets = _datasets(path, file)
        _check_sizes(path, datasets, size=stamp[2])
        attrs = _root_attrs(path, file)
        _check_dtypes(path, datasets, attrs["dtype"])
        return Checkpoint(path, attrs, _shapes(datasets), data=_data_attrs(path, file, attrs),
                          rng=_rng_states(path, file["rng"]),
                          history=_history(path, datasets, attrs["epoch"]), stamp=stamp)


def _check_format(path: Path, file) -> None:
    if "format" not in file.attrs:
        raise DataError(f"{path}: not an mpinn checkpoint (no attribute 'format')")
    found = _attribute(path, file, "format", _line)
    if found != FORMAT:
        raise DataError(f"{path}: not an mpinn checkpoint (format {found!r}, "
                        f"expected {FORMAT!r})")
    version = _attribute(path, file, "format_version", _integer())
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format version {version} is not {FORMAT_VERSION}")


def _datasets(path: Path, file) -> dict:
    """Every dataset by name, once every link has been found to be one mpinn writes and
    every dataset to be stored and typed as mpinn stores it."""
    names: list[bytes] = []
    file.id.links.visit(names.append)  # names only: h5py cannot pass on errors raised in here
    datasets = {}
    for name in (raw.decode(errors="surrogateescape") for raw in names):
        problem = _bad_name(name) or _bad_link(name, file.get(name, getlink=True))
        if problem is None:
            node = file[name]
            problem = _misplaced(name, node)
            if problem is None and isinstance(node, h5py.Dataset):
                datasets[name] = node
                problem = _badly_stored(name, node) or _badly_typed(name, node)
        if problem:
            raise DataError(f"{path}: refused: {problem}")
    missing = [f"/{group}" for group in REQUIRED_GROUPS if group not in file]
    if missing:
        raise DataError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    return datasets


def _bad_name(name: str) -> "str | None":
    """What is wrong with the last part of `name` (all of it is shown, escaped), or None."""
    if not _is_safe_name(name.rpartition("/")[2]):
        return f"the name {_shown(name)} is not one mpinn writes (empty, too long or unprintable)"
    return None


def _bad_link(name: str, link) -> "str | None":
    """What is wrong with where the link `name` leads, or None for a hard link."""
    if isinstance(link, h5py.ExternalLink):
        return f"{name} is an external link to another file"
    if isinstance(link, h5py.SoftLink):
        return f"{name} is a soft link"
    if not isinstance(link, h5py.HardLink):
        return f"{name} is a {type(link).__name__}"
    return None


def _misplaced(name: str, node) -> "str | None":
    """What is wrong with the place of `node`, or None where mpinn writes such a node."""
    top, *below = name.split("/")
    if top not in LAYOUT:
        return f"/{top} is not part of an mpinn checkpoint (it holds /{', /'.join(LAYOUT)})"
    depth, place = LAYOUT[top]
    if depth == 0 and below:
        return f"{name} is inside /{top}, which holds attributes only"
    expected = h5py.Dataset if len(below) + 1 == depth else h5py.Group
    if not isinstance(node, expected):
        return f"{name} is a {type(node).__name__.lower()} where mpinn writes {place}"
    return None


def _is_safe_name(name: str) -> bool:
    return 0 < len(name) <= LINE_LIMIT and name.isprintable()


def _badly_stored(name: str, dataset) -> "str | None":
    """What mpinn never does in the storage of `dataset`, or None: its bytes must be in
    this file, in chunks no larger than the dataset (what one read allocates), each
    checksummed with Fletcher-32 and no other filter."""
    if dataset.is_virtual:
        return f"{name} is a virtual dataset (its data lives in other datasets or files)"
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        return f"{name} stores its bytes in another file (external storage)"
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return f"{name} is not stored in checksummed chunks, as mpinn stores every dataset"
    pairs = zip(dataset.shape, dataset.chunks, strict=True)
    if any(0 < extent < chunk for extent, chunk in pairs):
        return f"{name} has chunks {dataset.chunks} larger than its shape {dataset.shape}"
    filters = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
    if h5py.h5z.FILTER_FLETCHER32 not in filters:
        return f"{name} has no Fletcher-32 checksum"
    if len(filters) > 1:
        return (f"{name} passes through HDF5 filters {filters}; mpinn writes only the "
                f"Fletcher-32 checksum ({h5py.h5z.FILTER_FLETCHER32})")
    return None


def _badly_typed(name: str, dataset) -> "str | None":
    """What mpinn never writes in the type or shape of `dataset`, or None."""
    dtype = dataset.dtype
    if name.startswith("history/"):
        if dtype.kind != "f" or dtype.itemsize != 8 or dataset.ndim != 1:
            return (f"{name} is {dtype.name} of shape {dataset.shape}; mpinn writes a "
                    "history as float64 values in one dimension")
    elif dtype.kind != "f" or dtype.itemsize not in (4, 8):
        return f"{name} is {dtype.name}; mpinn writes tensors as float32 or float64"
    return None


def _check_sizes(path: Path, datasets: dict, size: int) -> None:
    """Refuse data larger than the file before any of it is read: mpinn writes it
    uncompressed, so a real checkpoint holds at least as many bytes as its datasets."""
    total = 0
    for name, dataset in datasets.items():
        nbytes = math.prod(dataset.shape) * dataset.dtype.itemsize
        total += nbytes
        if total > size:
            together = "" if nbytes > size else f", {total:,} with the datasets before it"
            raise DataError(f"{path}: refused: {name} asks for {nbytes:,} bytes (shape "
                            f"{dataset.shape}{together}), more than the whole file holds "
                            f"({size:,} bytes)")


def _check_dtypes(path: Path, datasets: dict, dtype: str) -> None:
    """Tensors in the checkpoint's own dtype, as `restore` reads them."""
    itemsize = np.dtype(dtype).itemsize
    for name, dataset in datasets.items():
        if not name.startswith("history/") and dataset.dtype.itemsize != itemsize:
            raise DataError(f"{path}: refused: {name} is {dataset.dtype.name}, the "
                            f"checkpoint's dtype (attribute 'dtype') is {dtype}")


def _shapes(datasets: dict) -> dict[str, dict[str, tuple]]:
    """Tensor shapes by group ("params", "optimizer/adam/grad_sum") and name."""
    shapes: dict[str, dict[str, tuple]] = {"params": {}}
    for name, dataset in datasets.items():
        parts = name.split("/")
        if parts[0] != "history":
            cut = 3 if parts[0] == "optimizer" else 1  # optimizer/<transform>/<slot>
            shapes.setdefault("/".join(parts[:cut]), {})["/".join(parts[cut:])] = dataset.shape
    return shapes


def _history(path: Path, datasets: dict, epoch: int) -> dict[str, list[float]]:
    """The per-epoch metrics, each no longer than the epochs done (shorter where a metric
    joined a resumed run, or a run started at a later epoch without its history)."""
    found = {}
    for name, dataset in datasets.items():
        if name.startswith("history/"):
            if len(dataset) > epoch:
                raise DataError(f"{path}: refused: the history's {name[8:]} holds "
                                f"{len(dataset)} epochs, more than the {epoch} done "
                                "(attribute 'epoch')")
            found[name[8:]] = dataset[()].tolist()
    return found


# ------------------------------------------------------------------------ attributes
def _root_attrs(path: Path, file) -> dict:
    """The root attributes mpinn writes, each checked; "config" may be missing (as ""),
    "run_id" too (as None: checkpoints written before runs had ids)."""
    checks = {"format": _line, "format_version": _integer(), "mpinn_version": _line,
              "epoch": _integer(), "step": _integer(), "iterations": _integer(),
              "world_size": _integer(low=1), "strategy": _line, "backend": _line,
              "dtype": _one_of("float32", "float64")}
    attrs = {name: _attribute(path, file, name, check) for name, check in checks.items()}
    attrs["config"] = _attribute(path, file, "config", _job) if "config" in file.attrs else ""
    attrs["run_id"] = (_attribute(path, file, "run_id", _run_id) if "run_id" in file.attrs
                       else None)
    for name in ("epoch", "step"):
        if attrs[name] > attrs["iterations"]:
            raise DataError(f"{path}: refused: attribute {name!r} is {attrs[name]}, more than "
                            f"the {attrs['iterations']} optimizer steps ('iterations')")
    return attrs


def _data_attrs(path: Path, file, attrs: dict) -> dict:
    """/data's position (the root's too) and seed."""
    group = file["data"]
    data = {"epoch": _attribute(path, group, "epoch", _integer()),
            "step": _attribute(path, group, "step", _integer()),
            "seed": _attribute(path, group, "seed", _integer(high=2**64))}
    if (data["epoch"], data["step"]) != (attrs["epoch"], attrs["step"]):
        raise DataError(f"{path}: refused: /data is at epoch {data['epoch']}, step "
                        f"{data['step']}, the root attributes at epoch {attrs['epoch']}, "
                        f"step {attrs['step']}")
    return data


def _rng_states(path: Path, group) -> dict[str, dict]:
    """Each Dropout layer's generator state, by layer name."""
    states = {}
    for name in group.attrs:
        if not _is_safe_name(name):
            raise DataError(f"{path}: refused: the RNG state name {_shown(name)} is not one "
                            "mpinn writes (empty, too long or unprintable)")
        states[name] = _attribute(path, group, name, _json_object)
    return states


def _attribute(path: Path, node, name: str, check):
    """The attribute `name` of `node`, read alone and passed through `check`, which gives
    it as a Python value or raises ValueError saying what was expected."""
    where = f"attribute {name!r}" + ("" if node.name == "/" else f" of {node.name}")
    if name not in node.attrs:
        raise DataError(f"{path}: incomplete checkpoint (missing {where})")
    stored = node.attrs.get_id(name)
    if stored.shape != () or stored.get_storage_size() > TEXT_LIMIT:
        raise DataError(f"{path}: refused: {where} is not a single value")
    value = node.attrs[name]
    try:
        return check(value)
    except ValueError as expected:
        raise DataError(f"{path}: refused: {where} is {_shown(value)}, expected "
                        f"{expected}") from None


def _integer(low: int = 0, high: int = COUNT_LIMIT):
    def check(value) -> int:
        if isinstance(value, np.integer) and low <= value < high:
            return int(value)
        raise ValueError(f"an integer from {low} to {high - 1}")
    return check


def _text(value) -> "str | None":
    """A string attribute as str (h5py gives variable-length ones as str, fixed-length
    ones as bytes), or None when it is not UTF-8 text."""
    if isinstance(value, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            return value.decode()
        return None
    return value if isinstance(value, str) else None


def _line(value) -> str:
    text = _text(value)
    if text is not None and _is_safe_name(text):
        return text
    raise ValueError(f"one printable line of at most {LINE_LIMIT} characters")


def _is_run_id(text: str) -> bool:
    return 0 < len(text) <= RUN_ID_LIMIT and text.isprintable()


def _run_id(value) -> str:
    text = _text(value)
    if text is not None and _is_run_id(text):
        return text
    raise ValueError(f"printable text of 1 to {RUN_ID_LIMIT} characters")


def _job(value) -> str:
    text = _text(value)
    if text is not None and len(text) <= TEXT_LIMIT and all(
            line.isprintable() for line in text.replace("\t", " ").splitlines()):
        return text
    raise ValueError(f"printable text of at most {TEXT_LIMIT:,} characters")


def _one_of(*allowed: str):
    def check(value) -> str:
        text = _text(value)
        if text in allowed:
            return text
        raise ValueError(" or ".join(map(repr, allowed)))
    return check


def _json_object(value) -> dict:
    text = _text(value)
    try:
        state = json.loads(text) if text is not None and len(text) <= TEXT_LIMIT else None
    except (ValueError, RecursionError):
        state = None
    if isinstance(state, dict):
        return state
    raise ValueError(f"a JSON object of at most {TEXT_LIMIT:,} characters")


def _shown(value, limit: int = 60) -> str:
    """`value` for a one-line message: plain Python, escaped, cut short."""
    text = ascii(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


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
    _restore_rng(model, checkpoint)
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


def _restore_rng(model, checkpoint: Checkpoint) -> None:
    """Dropout generator states, on the backend that saved them (the streams differ
    between backends: on another one each layer keeps its seed's own)."""
    backend = model.backend
    if checkpoint.attrs["backend"] != backend.name:
        return
    for layer in model.layers:
        state = checkpoint.rng.get(layer.name)
        if state is not None and getattr(layer, "rng", None) is not None:
            try:
                backend.set_rng_state(layer.rng, state)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                raise DataError(f"{checkpoint.path}: the RNG state of layer {layer.name} is "
                                f"not one the {backend.name} backend accepts "
                                f"({_first_line(exc)})") from exc


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


def latest_valid(directory, on_skip=None) -> "Checkpoint | None":
    """The newest checkpoint in `directory` that reads cleanly, checksums included, with
    finite tensors (None when there is none). `on_skip(path, reason)` hears of each one
    passed over, the reason a short phrase such as "parameters dense_0/kernel holds NaN"."""
    for path in list_checkpoints(directory):
        try:
            found = read(path)
            found.verify()
            return found
        except DataError as exc:
            if on_skip is not None:
                on_skip(path, str(exc).removeprefix(f"{path}: "))
    return None


def prune(directory, keep: int, written: "Path | None" = None) -> None:
    """Keep the newest `keep` checkpoints, always counting `written` (the one just written,
    finite by construction) among them, even where files of more steps exist (a run resumed
    from an older checkpoint); remove the others and stray temporary files."""
    found = list_checkpoints(directory)
    if written is not None and written in found:
        found.remove(written)
        keep -= 1
    for path in found[max(keep, 0):]:
        path.unlink(missing_ok=True)
    remove_strays(directory)


def remove_strays(directory) -> None:
    """Remove the temporary files of writers that are gone: the pid in the name runs no
    more here (a crash, kill -9); another live job's files are left alone."""
    for path in Path(directory).iterdir():
        found = TEMPORARY_RE.match(path.name)
        if found and not rundir.process_running(int(found.group(1))):
            path.unlink(missing_ok=True)
