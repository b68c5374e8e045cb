"""An MNIST-sized data set from real handwriting, as IDX files the `mnist` dataset reads:
60,000 training and 10,000 test images of 28 x 28 pixels (uint8), labels 0-9.

Each image is one of scikit-learn's 1,797 handwritten digits (8 x 8, shipped with mpinn
as `digits`) enlarged to 20 x 20 by bilinear interpolation, placed at a random offset
within the 28 x 28 frame (the 4-pixel margin MNIST has, moved by up to 3 pixels), with its
stroke intensity scaled and pixel noise added. Training images come from the first
1,500 source digits and test images from the other 297, so no test image shares a source
with a training one. Seeded: the same files every time.

    python benchmarks/mnist_like.py DIRECTORY    # train-images-idx3-ubyte, ... (50 MB)
"""

import argparse
import struct
from pathlib import Path

import numpy as np

from mpinn.data import load_digits

TRAIN, TEST = 60_000, 10_000
SOURCES_FOR_TRAINING = 1500
SIDE, DIGIT = 28, 20


def enlarged(images: np.ndarray) -> np.ndarray:
    """(n, 8, 8) in [0, 1] -> (n, 20, 20) by bilinear interpolation."""
    at = np.linspace(0, 7, DIGIT)
    low = np.minimum(np.floor(at).astype(int), 6)
    weight = at - low
    rows = images[:, low, :] * (1 - weight)[None, :, None] + images[:, low + 1, :] * weight[
        None, :, None]
    return rows[:, :, low] * (1 - weight) + rows[:, :, low + 1] * weight


def generated(sources: np.ndarray, labels: np.ndarray, count: int, seed: int):
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sources), count)
    images = np.zeros((count, SIDE, SIDE), np.float32)
    offsets = rng.integers(1, SIDE - DIGIT, (count, 2))  # 1..7: the centre 4, +-3
    strength = rng.uniform(0.7, 1.0, count).astype(np.float32)
    for index, (row, column) in enumerate(offsets):
        images[index, row:row + DIGIT, column:column + DIGIT] = sources[pick[index]]
    images *= strength[:, None, None]
    images += rng.normal(0, 0.08, images.shape).astype(np.float32)
    pixels = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return pixels, labels[pick].astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, each size as a
    big-endian uint32, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array).tobytes())


def write(directory: Path) -> dict[str, Path]:
    """The four files in `directory` (made if missing), by role."""
    directory.mkdir(parents=True, exist_ok=True)
    x, y = load_digits()
    sources = enlarged(x.reshape(-1, 8, 8) / x.max())
    parts = {"train": generated(sources[:SOURCES_FOR_TRAINING], y[:SOURCES_FOR_TRAINING],
                                TRAIN, seed=1),
             "t10k": generated(sources[SOURCES_FOR_TRAINING:], y[SOURCES_FOR_TRAINING:],
                               TEST, seed=2)}
    paths = {}
    for part, (images, labels) in parts.items():
        paths[f"{part}_images"] = directory / f"{part}-images-idx3-ubyte"
        paths[f"{part}_labels"] = directory / f"{part}-labels-idx1-ubyte"
        write_idx(paths[f"{part}_images"], images)
        write_idx(paths[f"{part}_labels"], labels)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    for role, path in write(parser.parse_args().directory).items():
        print(f"{role}: {path}")


if __name__ == "__main__":
    main()
