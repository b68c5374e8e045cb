"""Dataset loaders on real files written here, and the synthetic generators."""

import gzip

import h5py
import numpy as np
import pytest

from mpinn import DataError, data


def test_embedded_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    raw, _ = data.load_digits(scale=False)
    assert raw.max() == 16 and np.array_equal(raw / 16, x)


def test_train_test_split_is_seeded_and_disjoint():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, 0.2, seed=3)
    assert len(y_test) == 10 and len(y_train) == 40
    assert sorted(np.concatenate([y_train, y_test]).tolist()) == list(range(50))
    np.testing.assert_array_equal(x_test[:, 0] // 2, y_test)
    again = data.train_test_split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], y_test)


def test_npz_loader(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, inputs=np.ones((3, 2)), labels=np.arange(3))
    x, y = data.load_npz(path, x="inputs", y="labels")
    assert x.shape == (3, 2) and y.tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="no array named 'x'; it holds: inputs, labels"):
        data.load_npz(path)
    with pytest.raises(DataError, match="does not exist"):
        data.load_npz(tmp_path / "missing.npz")


def test_npz_loader_never_unpickles(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="not a readable .npz"):
        data.load_npz(path)


def test_hdf5_loader(tmp_path):
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as file:
        file["train/x"] = np.ones((4, 3), dtype=np.float32)
        file["train/y"] = np.arange(4)
        file["note"] = "text"
    x, y = data.load_hdf5(path, x="train/x", y="train/y")
    assert x.shape == (4, 3) and y.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="no array named 'note'; it holds: train/x, train/y"):
        data.load_hdf5(path, x="note", y="train/y")
    not_hdf5 = tmp_path / "plain.h5"
    not_hdf5.write_bytes(b"hello")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        data.load_hdf5(not_hdf5)


def write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(payload)


def test_mnist_idx_loader(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "images.idx3-ubyte.gz", images, 0x08)
    write_idx(tmp_path / "labels.idx1-ubyte", labels, 0x08)
    x, y = data.load_mnist(tmp_path / "images.idx3-ubyte.gz", tmp_path / "labels.idx1-ubyte")
    assert x.shape == (5, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x * 255, images.reshape(5, 784))
    assert y.tolist() == [3, 1, 4, 1, 5]
    write_idx(tmp_path / "floats.idx", np.array([[1.5, -2.0]], dtype=np.float32), 0x0D)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "floats.idx"), [[1.5, -2.0]])


def test_mnist_idx_loader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad.idx: not an IDX file"):
        data.read_idx(bad)
    truncated = tmp_path / "short.idx"
    write_idx(truncated, np.zeros((4, 4), dtype=np.uint8), 0x08)
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(DataError, match="needing 28 bytes, but the file has 25"):
        data.read_idx(truncated)


def test_synthetic_generators_are_seeded():
    x, y = data.make_regression(samples=200, noise=0.0, seed=1)
    np.testing.assert_allclose(y, 1.5 * x + 0.8, atol=1e-6)
    x, y = data.make_xor(repeats=2)
    assert x.shape == (8, 2) and y.ravel().tolist() == [0, 1, 1, 0] * 2
    first, second = data.make_blobs(seed=4), data.make_blobs(seed=4)
    np.testing.assert_array_equal(first.x, second.x)
    assert set(first.y.tolist()) == {0, 1, 2}
