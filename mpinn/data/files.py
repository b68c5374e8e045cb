"""Loaders for data the user brings: .npz archives, HDF5 datasets and MNIST IDX files."""

import gzip
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from .dataset import Dataset


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    return path


def _missing(path, key, holds) -> DataError:
    return DataError(f"{path}: no array named {key!r}; it holds: {', '.join(holds) or 'none'}")


def read_numpy(path, kind: str):
    """What np.load finds in `path` (an array or an archive), never unpickled; a file it
    cannot read is a DataError naming `kind`, the file format expected."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        why = "it is no NumPy file" if "pickle" in str(exc) else str(exc)
        raise DataError(f"{path}: not a readable {kind} ({why})") from exc


def load_npz(path, x: str = "x", y: str = "y") -> Dataset:
    """Arrays `x` and `y` of a NumPy .npz archive (never unpickled)."""
    path = _existing(path)
    archive = read_numpy(path, ".npz archive")
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not a .npz archive but a single array; save x and y "
                        "together with numpy.savez(path, x=..., y=...)")
    with archive:
        for key in (x, y):
            if key not in archive.files:
                raise _missing(path, key, sorted(archive.files))
        try:
            return Dataset(archive[x], archive[y])
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc


def _numeric_datasets(file: h5py.File) -> list[str]:
    names = []

    def visit(name, node):
        if isinstance(node, h5py.Dataset) and node.dtype.kind in "biuf":
            names.append(name)

    file.visititems(visit)
    return names


def load_hdf5(path, x: str = "x", y: str = "y") -> Dataset:
    """Numeric datasets `x` and `y` (paths inside the file) of an HDF5 file."""
    path = _existing(path)
    try:
        with h5py.File(path, "r") as file:
            names = _numeric_datasets(file)
            for key in (x, y):
                if key.strip("/") not in names:
                    raise _missing(path, key, names)
            return Dataset(file[x][()], file[y][()])
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc


IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An array from an IDX file (the MNIST format), gzipped or not."""
    path = _existing(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape}, needing {expected} bytes, "
                        f"but the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(images, labels) -> Dataset:
    """MNIST-style IDX files: images flattened to (n, rows*cols) in [0, 1], labels 0..9."""
    x, y = read_idx(images), read_idx(labels)
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    x = x.reshape(len(x), -1).astype(np.float32)
    if x.max(initial=0) > 1:
        x /= 255
    return Dataset(x, y.astype(np.int64))
