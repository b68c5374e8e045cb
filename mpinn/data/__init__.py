"""Datasets: the embedded digits, file loaders, synthetic generators, splitting."""

from .dataset import Dataset, train_test_split
from .digits import load_digits
from .files import load_hdf5, load_mnist, load_npz, read_idx
from .synthetic import make_blobs, make_regression, make_xor

__all__ = [
    "Dataset",
    "load_digits",
    "load_hdf5",
    "load_mnist",
    "load_npz",
    "make_blobs",
    "make_regression",
    "make_xor",
    "read_idx",
    "train_test_split",
]
