"""Checks user arrays against a model before any training step, and converts them.

Every message names the array, the bad value and what the model expects, so that a wrong
file or a wrong output layer is found at the call, not as a shape error deep in a step.
"""

import hashlib

import numpy as np

from .errors import DataError
from .layers import Rescale

PIXEL_SAMPLE_ROWS = 64  # rows that raw_pixel_note looks at, evenly spaced


def array(value):
    """`value` as an array: a backend's own arrays (CuPy's, in GPU memory) stay where they
    are, and everything else becomes a NumPy array."""
    if not isinstance(value, np.ndarray) and hasattr(type(value), "__array_function__"):
        return value
    return np.asarray(value)


def features(x, input_dim: "int | None", name: str = "x", where: str = "the first layer"):
    """`x` as a finite 2-D numeric array of width `input_dim` (when known)."""
    x = array(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{name} must hold numbers, got an array of dtype {x.dtype}")
    if x.ndim == 1 and input_dim in (None, 1):
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        raise DataError(
            f"{name} must be 2-D (samples, features), got shape {x.shape}"
            + (f"; flatten each sample to {input_dim} features" if input_dim else "")
        )
    if input_dim is not None and x.shape[1] != input_dim:
        raise DataError(
            f"{name} has {x.shape[1]} features per sample (shape {x.shape}) but {where} "
            f"expects input_dim={input_dim}"
        )
    if len(x) == 0:
        raise DataError(f"{name} holds no samples")
    if not all_finite(x):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"{name} holds NaN or Inf (first in sample {row})")
    return x


def targets(y, loss, units: int, output_layer: str, samples: int, name: str = "y",
            name_x: str = "x"):
    """`y` checked against the loss and the output layer: class indices for sparse losses,
    otherwise an array shaped (samples, units)."""
    y = array(y)
    if len(y) != samples:
        raise DataError(
            f"{name_x} and {name} have different numbers of samples: {name_x} has {samples}, "
            f"{name} has {len(y)}"
        )
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DataError(f"{name} must hold numbers, got an array of dtype {y.dtype}")
    if not all_finite(y):
        raise DataError(f"{name} holds NaN or Inf")
    if loss.sparse:
        return _class_indices(y, units, output_layer, name)
    if y.ndim == 1 and units == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != units:
        hint = (
            "; integer class labels need loss='sparse_categorical_crossentropy'"
            if y.ndim == 1 and loss.name == "categorical_crossentropy" else ""
        )
        raise DataError(
            f"{name} has shape {y.shape} but the output layer {output_layer} has {units} "
            f"units, so {name} must have shape ({samples}, {units}){hint}"
        )
    if loss.name in ("binary_crossentropy", "categorical_crossentropy") and (
        y.min() < 0 or y.max() > 1
    ):
        bad = y.min() if y.min() < 0 else y.max()
        raise DataError(f"{name} holds {bad} but {loss.name} needs targets in [0, 1]")
    return y


def raw_pixel_note(x, model, name: str = "x") -> "str | None":
    """A one-line note when `x` looks like raw 8-bit pixels and `model` does not start with
    a Rescale layer, naming the fix; else None.

    The heuristic, on at most 64 evenly spaced rows (under a millisecond on 60,000 x 784,
    whatever the number of rows): whole numbers (an integer dtype, or floats without
    fractions), min >= 0 and 127 < max <= 255. Data in [0, 1], standardized data (negative
    values) and small counts or labels (max <= 127; digits' 0-16) stay quiet. Larger counts,
    such as ages, also raise the note; for them the advice holds as well, since inputs in
    the hundreds slow training as much.
    """
    x = array(x)
    if x.dtype.kind not in "iuf" or x.size == 0 or (
        model.layers and isinstance(model.layers[0], Rescale)
    ):
        return None
    sample = model.backend.to_numpy(x[:: -(-len(x) // PIXEL_SAMPLE_ROWS)])
    low, high = sample.min(), sample.max()
    if not (low >= 0 and 127 < high <= 255):  # NaN fails too
        return None
    if x.dtype.kind == "f" and not np.array_equal(sample, np.round(sample)):
        return None
    return (f"{name} looks like raw 0-255 pixels ({x.dtype}, max {int(high)}); add a "
            "rescale layer first: { type = \"rescale\", scale = 0.00392156862745098 } (1/255) "
            "in a job file, mpinn.Rescale(1 / 255) in Python")


def all_finite(array) -> bool:
    """No NaN or Inf in `array`. One pass, no temporary: a NaN or Inf anywhere makes the
    sum non-finite (an overflow of the sum alone falls back to the element-wise check)."""
    if not np.issubdtype(array.dtype, np.floating):
        return True
    return bool(np.isfinite(array.sum())) or bool(np.isfinite(array).all())


def _class_indices(y, units, output_layer, name):
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(
            f"{name} must be class indices of shape (samples,) for "
            f"sparse_categorical_crossentropy, got shape {y.shape}"
        )
    labels = y.astype(np.int64)
    if not np.array_equal(labels, y):
        bad = y[labels != y][0]
        raise DataError(f"{name} holds {bad!r}, not a class index (an integer)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= units:
        bad = low if low < 0 else high
        raise DataError(
            f"label {bad} in {name} is out of range for the output layer {output_layer} "
            f"with {units} units (allowed: 0..{units - 1})"
        )
    return labels


SAMPLED_ROWS = 1024  # rows of an array in its digest, evenly spaced


def array_digest(backend, array) -> str:
    """Shape, dtype and a digest of up to SAMPLED_ROWS evenly spaced rows' bytes ("none"
    for None): cheap, and it tells apart data sets that differ in order or content."""
    if array is None:
        return "none"
    rows = np.unique(np.linspace(0, len(array) - 1, min(len(array), SAMPLED_ROWS),
                                 dtype=np.int64))
    sample = np.ascontiguousarray(backend.to_numpy(array[backend.asarray(rows)]))
    digest = hashlib.blake2b(sample.tobytes(), digest_size=8).hexdigest()
    return f"{list(array.shape)} {array.dtype} {digest}"
