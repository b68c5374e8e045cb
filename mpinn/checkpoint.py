"""Model files in HDF5: one dataset per named parameter, written atomically.

Layout: attributes `format`, `format_version`, `mpinn_version` (plus what the caller adds,
e.g. the job as TOML text) on the root; `/params/<layer>/<name>` float datasets.
"""

import os
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import DataError

FORMAT = "mpinn.checkpoint"
FORMAT_VERSION = 1


def save_parameters(path, model, **attrs) -> Path:
    """Write the model's parameters to `path` via a temporary file, fsync and rename, so a
    crash leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with h5py.File(temporary, "w") as file:
        file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "mpinn_version": __version__, **attrs})
        group = file.create_group("params")
        for name, value in sorted(model.params.values.items()):
            group.create_dataset(name, data=model.backend.to_numpy(value), fletcher32=True)
        file.flush()
        os.fsync(file.id.get_vfd_handle())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_parameters(path) -> dict[str, np.ndarray]:
    """The named parameters of a model file."""
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT:
                raise DataError(f"{path}: not an mpinn checkpoint (format attribute missing)")
            found = {}
            file["params"].visititems(
                lambda name, node: found.__setitem__(name, node[()])
                if isinstance(node, h5py.Dataset) else None)
            return found
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
