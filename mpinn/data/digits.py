"""The UCI handwritten digits, embedded: 1,797 8x8 images in 10 classes (see
DIGITS_LICENSE.txt). Nothing is downloaded."""

from importlib import resources

import numpy as np

from .dataset import Dataset


def load_digits(scale: bool = True) -> Dataset:
    """x: (1797, 64) pixels, divided by 16 into [0, 1] when `scale`; y: labels 0..9."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as file:
        archive = np.load(file, allow_pickle=False)
        images, labels = archive["images"], archive["labels"]
    x = images.astype(np.float32) / 16 if scale else images.astype(np.float32)
    return Dataset(x, labels.astype(np.int64))
