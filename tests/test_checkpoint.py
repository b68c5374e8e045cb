"""Checkpoints: exact resume, model.save / load_model, safe reading of damaged files."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpinn
from mpinn import DataError, Dense, Dropout, Sequential, checkpoint
from mpinn.data import load_digits

MPINN = Path(sys.executable).parent / "mpinn"
JOB = """
[run]
name = "resume"
directory = "{directory}"
seed = 3

[data]
dataset = "digits"

[model]
layers = [
    {{ type = "dense", units = 16, activation = "relu" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]

[training]
epochs = 4
batch_size = 50
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]

[optimizer]
name = "adam"
learning_rate = 0.005

[checkpoint]
every_epochs = 1
every_steps = {every_steps}
keep = 50
"""


def small_model(seed=0, backend="numpy"):
    model = Sequential([Dense(16, activation="relu", input_shape=(64,)), Dropout(0.2),
                        Dense(10, activation="softmax")], seed=seed, backend=backend)
    model.compile(mpinn.Adam(0.005), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def assert_same_state(a, b):
    def host(model, flat):
        return model.backend.to_numpy(flat)

    np.testing.assert_array_equal(host(a, a.params.data), host(b, b.params.data))
    for slot, flat in a.optimizer.state().items():
        np.testing.assert_array_equal(host(a, flat), host(b, b.optimizer.state()[slot]),
                                      err_msg=slot)
    assert a.optimizer.iterations == b.optimizer.iterations


def test_save_load_and_continue_is_bit_identical_to_one_run(tmp_path, backend):
    x, y = load_digits()
    whole = small_model(backend=backend)
    whole.fit(x, y, batch_size=64, epochs=4, verbose=0)
    first = small_model(backend=backend)
    first.fit(x, y, batch_size=64, epochs=2, verbose=0)
    first.save(tmp_path / "half.h5")
    second = mpinn.load_model(tmp_path / "half.h5")
    assert second.backend.name == backend
    assert [layer.name for layer in second.layers] == ["dense_0", "dropout_0", "dense_1"]
    np.testing.assert_array_equal(second.predict(x[:20]), first.predict(x[:20]))
    second.fit(x, y, batch_size=64, epochs=4, initial_epoch=2, verbose=0)
    assert_same_state(second, whole)


def test_load_model_keeps_architecture_optimizer_and_schedule(tmp_path):
    schedule = mpinn.schedules.LinearWarmup(
        mpinn.schedules.CosineDecay(0.01, decay_steps=100, alpha=0.1), warmup_steps=5)
    model = Sequential([Dense(4, activation="tanh", input_dim=3,
                              kernel_regularizer=mpinn.regularizers.L2(1e-3)),
                        Dense(1, activation="sigmoid")], seed=5, dtype="float64")
    model.compile(mpinn.SGD(schedule, momentum=0.9, nesterov=True, global_clipnorm=1.0),
                  "binary_crossentropy", metrics=["accuracy"])
    model.fit(np.random.default_rng(0).random((32, 3)), np.arange(32) % 2, epochs=1,
              verbose=0)
    model.save(tmp_path / "m.h5")
    loaded = mpinn.load_model(tmp_path / "m.h5")
    assert loaded.dtype == np.float64 and loaded.seed == 5
    assert loaded.layers[0].kernel_regularizer.l2 == 1e-3
    assert isinstance(loaded.optimizer, mpinn.SGD) and loaded.optimizer.nesterov
    for step in (0, 3, 50, 200):
        assert loaded.optimizer.learning_rate(step) == pytest.approx(schedule(step))
    assert_same_state(loaded, model)


def run(args, cwd, timeout=120):
    return subprocess.run([str(MPINN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


@pytest.mark.parametrize("every_steps", [0, 7], ids=["epoch-checkpoints", "mid-epoch"])
def test_cli_resume_is_bit_identical(tmp_path, every_steps):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for directory in (whole, parts):
        (tmp_path / f"{directory.name}.toml").write_text(
            JOB.format(directory=directory, every_steps=every_steps))
    assert run(["train", "whole.toml", "-q"], tmp_path).returncode == 0
    first = run(["train", "parts.toml", "-q", "--set", "training.epochs=2"], tmp_path)
    assert first.returncode == 0, first.stderr
    if every_steps:  # resume from a checkpoint in the middle of epoch 2 instead
        middle = [p for p in checkpoint.list_checkpoints(parts)
                  if checkpoint.read(p).data["step"] > 0]
        for later in checkpoint.list_checkpoints(parts):
            if later.name > middle[0].name:
                later.unlink()
    resumed = run(["train", "parts.toml", "--resume", "auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = checkpoint.read(whole / "final.h5"), checkpoint.read(parts / "final.h5")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    for slot in a.optimizer:
        for name in a.optimizer[slot]:
            np.testing.assert_array_equal(a.optimizer[slot][name], b.optimizer[slot][name])
    assert a.attrs["iterations"] == b.attrs["iterations"]
    assert len(b.history["loss"]) == 4


def test_resume_auto_with_nothing_to_resume_starts_afresh(tmp_path):
    (tmp_path / "job.toml").write_text(JOB.format(directory=tmp_path / "run", every_steps=0))
    result = run(["train", "job.toml", "--resume", "auto", "--set", "training.epochs=1"],
                 tmp_path)
    assert result.returncode == 0 and "no checkpoint to resume" in result.stdout


# ---------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    model = small_model()
    x, y = load_digits()
    model.fit(x[:200], y[:200], epochs=1, verbose=0)
    model.save(directory / "good.h5")
    return directory / "good.h5"


def damaged(kind, good, target):
    data = good.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":
        target.write_bytes(data)
        with h5py.File(good, "r") as file:  # corrupt the middle of the kernel's data
            offset = file["params/dense_0/kernel"].id.get_chunk_info(0).byte_offset
        raw = bytearray(data)
        for i in range(offset + 100, offset + 140):
            raw[i] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif kind == "not-hdf5":
        target.write_text("hello, I am not a checkpoint\n")
    else:
        target.write_bytes(data)
        with h5py.File(target, "a") as file:
            if kind == "wrong-format":
                file.attrs["format"] = "something.else"
            elif kind == "missing-dataset":
                del file["params/dense_1/bias"]
            elif kind == "wrong-shape":
                del file["params/dense_1/bias"]
                file["params/dense_1/bias"] = np.zeros(7, np.float32)
            elif kind == "external-link":
                file["params/dense_1/extra"] = h5py.ExternalLink("/etc/passwd", "/x")
            elif kind == "object-dtype":
                file.create_dataset("params/dense_1/note", data="text")
    return target


@pytest.mark.parametrize("kind, message", [
    ("truncated", "damaged checkpoint"),
    ("flipped", "damaged checkpoint"),
    ("not-hdf5", "not an HDF5 file"),
    ("wrong-format", "not an mpinn checkpoint"),
    ("missing-dataset", "missing dense_1/bias"),
    ("wrong-shape", "dense_1/bias has shape (7,), the model needs (10,)"),
    ("external-link", "refused: params/dense_1/extra is a ExternalLink"),
    ("object-dtype", "refused: params/dense_1/note has non-numeric type"),
])
def test_damaged_checkpoints_are_refused_with_one_line(tmp_path, good_checkpoint, kind, message):
    path = damaged(kind, good_checkpoint, tmp_path / f"{kind}.h5")
    with pytest.raises(DataError) as info:
        checkpoint.restore(small_model(), checkpoint.read(path))
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_resume_from_a_damaged_file_exits_2(tmp_path, good_checkpoint):
    path = damaged("truncated", good_checkpoint, tmp_path / "bad.h5")
    (tmp_path / "job.toml").write_text(JOB.format(directory=tmp_path / "run", every_steps=0))
    result = run(["train", "job.toml", "--resume", str(path)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"mpinn: error: {path}: damaged checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_evaluate_predict(tmp_path):
    (tmp_path / "job.toml").write_text(JOB.format(directory=tmp_path / "run", every_steps=0))
    assert run(["train", "job.toml", "-q"], tmp_path).returncode == 0
    final = tmp_path / "run" / "final.h5"
    shown = run(["inspect", str(final)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    for fragment in ("mpinn.checkpoint v2", "epoch 4, step 0", "dense_0/kernel",
                     "(64, 16)", "adam/grad_sum", "history val_accuracy: 4 epochs",
                     'name = "adam"'):
        assert fragment in shown.stdout
    evaluated = run(["evaluate", str(final)], tmp_path)
    assert evaluated.returncode == 0 and "validation hold-out (359 samples)" in evaluated.stdout
    np.save(tmp_path / "x.npy", load_digits().x[:5])
    predicted = run(["predict", str(final), "x.npy", "-o", "out.npy"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out, mpinn.load_model(final).predict(load_digits().x[:5]))
    missing = run(["inspect", "nope.h5"], tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "mpinn: error: nope.h5: no such checkpoint file")
