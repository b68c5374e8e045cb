"""Checkpoints: exact resume, model.save / load_model, safe reading of damaged files."""

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpinn
from mpinn import DataError, Dense, Dropout, Sequential, checkpoint
from mpinn.data import load_digits
from mpinn.errors import NonFiniteError, StorageError

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


def test_a_metric_added_on_resume_keeps_every_checkpoint_readable(tmp_path):
    (tmp_path / "job.toml").write_text(JOB.format(directory=tmp_path / "run", every_steps=0))
    assert run(["train", "job.toml", "-q", "--set", "training.epochs=2", "--set",
                "training.metrics=[]"], tmp_path).returncode == 0
    resumed = run(["train", "job.toml", "-q", "--resume", "auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = checkpoint.read(tmp_path / "run" / "final.h5")
    assert len(final.history["loss"]) == len(final.history["accuracy"]) == 4
    assert np.isnan(final.history["accuracy"][:2]).all()  # not measured then
    assert not np.isnan(final.history["accuracy"][2:]).any()
    assert all(checkpoint.read(path) for path in checkpoint.list_checkpoints(tmp_path / "run"))


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
        with h5py.File(good, "r") as file:  # corrupt the middle of the kernel's data
            offset = file["params/dense_0/kernel"].id.get_chunk_info(0).byte_offset
        raw = bytearray(data)
        for i in range(offset + 100, offset + 140):
            raw[i] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif kind == "not-hdf5":
        target.write_text("hello, I am not a checkpoint\n")
    return target


def crafted(good, target, *edits):
    """A copy of `good` changed through plain h5py by each `edit(file)`."""
    shutil.copyfile(good, target)
    with h5py.File(target, "a") as file:
        for edit in edits:
            edit(file)
    return target


def checksummed(data) -> dict:
    """create_dataset arguments for a dataset stored as mpinn stores one."""
    return {"data": data, "chunks": np.shape(data), "fletcher32": True}


def replaced(name, **dataset):
    def edit(file):
        del file[name]
        file.create_dataset(name, **dataset)
    return edit


def added(name, **dataset):
    return lambda file: file.create_dataset(name, **dataset)


def linked(name, target):
    def edit(file):
        file[name] = target
    return edit


def with_attr(name, value, node="/"):
    def edit(file):
        file[node].attrs[name] = value
    return edit


def without(name, node="/"):
    def edit(file):
        del file[node].attrs[name]
    return edit


def removed(name):
    def edit(file):
        del file[name]
    return edit


def virtual(file):
    layout = h5py.VirtualLayout(shape=(10,), dtype="f4")
    layout[:] = h5py.VirtualSource("elsewhere.h5", "x", shape=(10,))
    file.create_virtual_dataset("params/dense_1/extra", layout)


def twice_as_large_as_the_file(file):
    half = Path(file.filename).stat().st_size // 4 * 3 // 4  # float32 values, 3/4 of it
    for name in ("params/big/a", "params/big/b"):
        file.create_dataset(name, shape=(half,), dtype="f4", chunks=(1024,), fletcher32=True)


KERNEL, BIAS = "params/dense_0/kernel", "params/dense_1/bias"
F4 = np.float32
REFUSALS = {
    # links, places and names
    "external-link": (linked("params/dense_1/extra", h5py.ExternalLink("/etc/passwd", "/x")),
                      "refused: params/dense_1/extra is an external link to another file"),
    "soft-link": (linked("params/dense_1/extra", h5py.SoftLink("/params/dense_0/kernel")),
                  "refused: params/dense_1/extra is a soft link"),
    "virtual": (virtual, "refused: params/dense_1/extra is a virtual dataset"),
    "extra-group": (lambda file: file.create_group("extra"),
                    "refused: /extra is not part of an mpinn checkpoint (it holds /params, "
                    "/optimizer, /data, /rng, /history, /strategy)"),
    "tensor-too-high": (added("params/loose", **checksummed(np.zeros(3, F4))),
                        "refused: params/loose is a dataset where mpinn writes "
                        "params/<layer>/<name>"),
    "tensor-too-deep": (added("params/dense_0/more/kernel", **checksummed(np.zeros(3, F4))),
                        "refused: params/dense_0/more is a group where mpinn writes "
                        "params/<layer>/<name>"),
    "optimizer-too-high": (added("optimizer/adam/dense_0", **checksummed(np.zeros(3, F4))),
                           "refused: optimizer/adam/dense_0 is a dataset where mpinn writes "
                           "optimizer/<transform>/<slot>/<layer>/<name>"),
    "dataset-in-data": (added("data/epoch", **checksummed(np.zeros(1))),
                        "refused: data/epoch is inside /data, which holds attributes only"),
    "strategy-too-deep": (added("strategy/outer/anchor", **checksummed(np.zeros(3, F4))),
                          "refused: strategy/outer is a group where mpinn writes "
                          "strategy/<name>"),
    "strategy-other-float": (added("strategy/residual", **checksummed(np.zeros(3))),
                             "refused: strategy/residual is float64, the checkpoint's dtype"),
    "group-in-rng": (lambda file: file.create_group("rng/dropout_0"),
                     "refused: rng/dropout_0 is inside /rng, which holds attributes only"),
    "named-datatype": (linked("params/dense_0/type", np.dtype("f4")),
                       "refused: params/dense_0/type is a datatype where mpinn writes"),
    "unprintable-name": (added("params/dense_0/ker\nnel", **checksummed(np.zeros(3, F4))),
                         "refused: the name 'params/dense_0/ker\\nnel' is not one mpinn "
                         "writes (empty, too long or unprintable)"),
    "long-name": (added("params/dense_0/" + "k" * 300, **checksummed(np.zeros(3, F4))),
                  "is not one mpinn writes (empty, too long or unprintable)"),
    "missing-group": (removed("rng"), "incomplete checkpoint (missing /rng)"),
    # storage: the bytes in this file, chunked, with the Fletcher-32 checksum alone
    "contiguous": (replaced(KERNEL, data=np.zeros((64, 16), F4)),
                   "refused: params/dense_0/kernel is not stored in checksummed chunks"),
    "no-checksum": (replaced(KERNEL, data=np.zeros((64, 16), F4), chunks=(64, 16)),
                    "refused: params/dense_0/kernel has no Fletcher-32 checksum"),
    "compressed": (replaced(KERNEL, **checksummed(np.zeros((64, 16), F4)), compression="gzip"),
                   "refused: params/dense_0/kernel passes through HDF5 filters [1, 3]; mpinn "
                   "writes only the Fletcher-32 checksum (3)"),
    "oversized-chunks": (replaced("history/loss", shape=(1,), maxshape=(None,), dtype="f8",
                                  chunks=(2**20,), fletcher32=True),
                         "refused: history/loss has chunks (1048576,) larger than its shape "
                         "(1,)"),
    "text-dataset": (added("params/dense_1/note", data="text"),
                     "refused: params/dense_1/note is not stored in checksummed chunks"),
    # types and sizes
    "integer-tensor": (replaced(BIAS, **checksummed(np.zeros(10, np.int32))),
                       "refused: params/dense_1/bias is int32; mpinn writes tensors as float32 "
                       "or float64"),
    "other-float": (replaced(BIAS, **checksummed(np.zeros(10))),
                    "refused: params/dense_1/bias is float64, the checkpoint's dtype "
                    "(attribute 'dtype') is float32"),
    "history-float32": (replaced("history/loss", **checksummed(np.zeros(1, F4))),
                        "refused: history/loss is float32 of shape (1,); mpinn writes a "
                        "history as float64 values in one dimension"),
    "history-2d": (replaced("history/loss", **checksummed(np.zeros((1, 1)))),
                   "refused: history/loss is float64 of shape (1, 1)"),
    "history-past-epoch": (with_attr("epoch", 0), with_attr("epoch", 0, "data"),
                           "refused: the history's accuracy holds 1 epochs, more than the 0 "
                           "done"),
    "huge-tensor": (replaced(KERNEL, shape=(10**6, 10**6), dtype="f4", chunks=(64, 16),
                             fletcher32=True),
                    "refused: params/dense_0/kernel asks for 4,000,000,000,000 bytes (shape "
                    "(1000000, 1000000)), more than the whole file holds"),
    "huge-history": (replaced("history/loss", shape=(2**40,), dtype="f8", chunks=(1024,),
                              fletcher32=True),
                     "refused: history/loss asks for 8,796,093,022,208 bytes"),
    "larger-than-the-file": (twice_as_large_as_the_file,
                             "with the datasets before it), more than the whole file holds"),
    # attributes: read by name, type and range checked
    "wrong-format": (with_attr("format", "something.else"),
                     "not an mpinn checkpoint (format 'something.else', expected "
                     "'mpinn.checkpoint')"),
    "no-format": (without("format"), "not an mpinn checkpoint (no attribute 'format')"),
    "format-version": (with_attr("format_version", 3), "checkpoint format version 3 is not 2"),
    "format-version-text": (with_attr("format_version", "2"),
                            "refused: attribute 'format_version' is '2', expected an integer"),
    "epoch-float": (with_attr("epoch", 1e9),
                    "refused: attribute 'epoch' is 1000000000.0, expected an integer from 0 "
                    "to 9007199254740991"),
    "data-epoch-float": (with_attr("epoch", 1e9, "data"),
                         "refused: attribute 'epoch' of /data is 1000000000.0, expected an "
                         "integer"),
    "epoch-bool": (with_attr("epoch", True), "refused: attribute 'epoch' is True, expected"),
    "epoch-array": (with_attr("epoch", [1, 2]),
                    "refused: attribute 'epoch' is not a single value"),
    "step-negative": (with_attr("step", -1), "refused: attribute 'step' is -1, expected"),
    "iterations-huge": (with_attr("iterations", 2**60),
                        "refused: attribute 'iterations' is 1152921504606846976, expected"),
    "epoch-past-iterations": (with_attr("epoch", 10**6),
                              "refused: attribute 'epoch' is 1000000, more than the 7 "
                              "optimizer steps ('iterations')"),
    "data-position": (with_attr("step", 1, "data"),
                      "refused: /data is at epoch 1, step 1, the root attributes at epoch 1, "
                      "step 0"),
    "seed-float": (with_attr("seed", 0.5, "data"), "refused: attribute 'seed' of /data is 0.5"),
    "world-size-zero": (with_attr("world_size", 0),
                        "refused: attribute 'world_size' is 0, expected an integer from 1"),
    "dtype-float16": (with_attr("dtype", "float16"),
                      "refused: attribute 'dtype' is 'float16', expected 'float32' or "
                      "'float64'"),
    "strategy-two-lines": (with_attr("strategy", "allreduce\nps"),
                           "refused: attribute 'strategy' is 'allreduce\\nps', expected one "
                           "printable line"),
    "config-escapes": (with_attr("config", "[run]\n\x1b[2J"),
                       "refused: attribute 'config' is '[run]\\n\\x1b[2J', expected printable "
                       "text"),
    "missing-iterations": (without("iterations"),
                           "incomplete checkpoint (missing attribute 'iterations')"),
    "missing-seed": (without("seed", "data"),
                     "incomplete checkpoint (missing attribute 'seed' of /data)"),
    "rng-not-json": (with_attr("dropout_0", "{", "rng"),
                     "refused: attribute 'dropout_0' of /rng is '{', expected a JSON object"),
    "rng-list": (with_attr("dropout_0", "[1]", "rng"), "expected a JSON object"),
    "rng-deep": (with_attr("dropout_0", "[" * 100_000, "rng"), "expected a JSON object"),
    "rng-long": (with_attr("dropout_0", json.dumps({"x": "a" * 2**20}), "rng"),
                 "expected a JSON object of at most 1,048,576 characters"),
    "rng-name": (with_attr("drop\nout_0", "{}", "rng"),
                 "refused: the RNG state name 'drop\\nout_0' is not one mpinn writes"),
    "run-id-two-lines": (with_attr("run_id", "run\n1"),
                         "refused: attribute 'run_id' is 'run\\n1', expected printable text "
                         "of 1 to 64 characters"),
    "run-id-long": (with_attr("run_id", "r" * 65), "refused: attribute 'run_id' is 'rrr"),
    "run-id-empty": (with_attr("run_id", ""), "refused: attribute 'run_id' is '', expected"),
    "run-id-number": (with_attr("run_id", 7), "refused: attribute 'run_id' is 7, expected"),
    "run-id-array": (with_attr("run_id", ["a", "b"]),
                     "refused: attribute 'run_id' is not a single value"),
    # what only the model can tell
    "missing-dataset": (removed(BIAS), "parameters do not fit the model (missing dense_1/bias)"),
    "wrong-shape": (replaced(BIAS, **checksummed(np.zeros(7, F4))),
                    "parameters dense_1/bias has shape (7,), the model needs (10,)"),
}


@pytest.mark.parametrize("kind", ["truncated", "flipped", "not-hdf5"])
def test_damaged_checkpoints_are_refused_with_one_line(tmp_path, good_checkpoint, kind):
    path = damaged(kind, good_checkpoint, tmp_path / f"{kind}.h5")
    with pytest.raises(DataError) as info:
        checkpoint.restore(small_model(), checkpoint.read(path))
    expected = "not an HDF5 file" if kind == "not-hdf5" else "damaged checkpoint ("
    assert str(info.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", REFUSALS)
def test_crafted_checkpoints_are_refused_with_one_line(tmp_path, good_checkpoint, kind):
    *edits, message = REFUSALS[kind]
    path = crafted(good_checkpoint, tmp_path / f"{kind}.h5", *edits)
    with pytest.raises(DataError) as info:
        checkpoint.restore(small_model(), checkpoint.read(path))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


SECRET = b"TOP-SECRET-HOST-FILE!..."  # 24 bytes


def test_external_storage_never_reaches_the_model(tmp_path, good_checkpoint):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET * 200)
    path = crafted(good_checkpoint, tmp_path / "external.h5", replaced(
        KERNEL, shape=(64, 16), dtype="f4", external=[(str(secret), 0, 64 * 16 * 4)]))
    with h5py.File(path, "r") as file:  # what an unchecked reader would load
        assert SECRET in file[KERNEL][()].tobytes()
    model = small_model()
    model.build()
    before = model.params.data.copy()
    with pytest.raises(DataError) as info:
        checkpoint.restore(model, checkpoint.read(path))
    assert str(info.value) == (f"{path}: refused: params/dense_0/kernel stores its bytes in "
                               "another file (external storage)")
    with pytest.raises(DataError, match="external storage"):
        mpinn.load_model(path)
    np.testing.assert_array_equal(model.params.data, before)
    assert SECRET not in model.params.data.tobytes()


def mutated(rng: random.Random, data: bytes) -> bytes:
    """`data` with a few bits flipped, a span overwritten, or its end cut off."""
    raw = bytearray(data)
    kind = rng.choice(["flip", "span", "cut"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == "span":
        start = rng.randrange(len(raw))
        end = min(len(raw), start + rng.randint(1, 64))
        raw[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    else:
        del raw[rng.randrange(len(raw)):]
    return bytes(raw)


@pytest.mark.timeout(120)
def test_any_damage_is_one_data_error_or_nothing(tmp_path, good_checkpoint):
    """Fuzzing: whatever the bytes, reading, verifying and restoring raise DataError (one
    line naming the file) or succeed; h5py's own errors never escape."""
    rng, data = random.Random(0), good_checkpoint.read_bytes()
    path, refused = tmp_path / "fuzzed.h5", 0
    for trial in range(400):
        path.write_bytes(mutated(rng, data))
        try:
            found = checkpoint.read(path)
            found.verify()
            checkpoint.restore(small_model(), found)
        except DataError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            refused += 1
        except Exception as exc:  # noqa: BLE001 - any other kind is the failure sought
            pytest.fail(f"trial {trial}: {type(exc).__name__} escaped: {exc}")
    assert refused > 100  # the damage did reach the structure and the tensors


# ---------------------------------------------------------------------- restoring
@pytest.mark.parametrize("state", [
    {}, {"bit_generator": "MT19937", "state": {}},
    {"bit_generator": "PCG64", "state": {"state": 2**200, "inc": 1}, "has_uint32": 0,
     "uinteger": 0},
], ids=["empty", "other-generator", "out-of-range"])
def test_an_rng_state_the_backend_refuses_is_a_data_error(tmp_path, good_checkpoint, state):
    path = crafted(good_checkpoint, tmp_path / "rng.h5",
                   with_attr("dropout_0", json.dumps(state), "rng"))
    found = checkpoint.read(path)
    with pytest.raises(DataError) as info:
        checkpoint.restore(small_model(), found)
    assert str(info.value).startswith(f"{path}: the RNG state of layer dropout_0 is not one "
                                      "the numpy backend accepts (")


def test_rng_states_of_another_backend_are_left_alone(tmp_path, good_checkpoint):
    path = crafted(good_checkpoint, tmp_path / "elsewhere.h5", with_attr("backend", "other"),
                   with_attr("dropout_0", json.dumps({"draws": 12}), "rng"))
    model = small_model()
    checkpoint.restore(model, checkpoint.read(path))
    expected = small_model()
    expected.build()
    assert (model.layers[1].rng.bit_generator.state
            == expected.layers[1].rng.bit_generator.state)


def test_names_and_shapes_are_checked_before_any_tensor_is_read(tmp_path, good_checkpoint):
    flipped = damaged("flipped", good_checkpoint, tmp_path / "flipped.h5")
    path = crafted(flipped, tmp_path / "both.h5", replaced(BIAS, **checksummed(np.zeros(7, F4))))
    with pytest.raises(DataError, match=r"dense_1/bias has shape \(7,\)"):
        checkpoint.restore(small_model(), checkpoint.read(path))


def test_a_file_replaced_after_reading_is_not_read_from(tmp_path, good_checkpoint):
    path = tmp_path / "ckpt.h5"
    shutil.copyfile(good_checkpoint, path)
    found = checkpoint.read(path)
    other = small_model(seed=9)
    other.build()
    checkpoint.save(path, other)
    with pytest.raises(DataError, match="the file changed after it was checked"):
        checkpoint.restore(small_model(), found)


def test_load_model_needs_the_stored_job(tmp_path, good_checkpoint):
    for config in (None, "", "  \n"):
        edit = without("config") if config is None else with_attr("config", config)
        path = crafted(good_checkpoint, tmp_path / "nojob.h5", edit)
        assert checkpoint.read(path).attrs["config"] == (config or "")
        with pytest.raises(DataError) as info:
            mpinn.load_model(path)
        assert str(info.value) == (f"{path}: holds no job description (attribute 'config'), "
                                   "so the model cannot be rebuilt")


def test_load_model_refuses_a_stored_job_larger_than_its_tensors(tmp_path, good_checkpoint):
    with h5py.File(good_checkpoint, "r") as file:
        job = file.attrs["config"].replace("units = 16", "units = 100000000")
    path = crafted(good_checkpoint, tmp_path / "wide.h5", with_attr("config", job))
    with pytest.raises(DataError) as info:  # before 4 GB of parameters are allocated
        mpinn.load_model(path)
    assert str(info.value) == (f"{path}: the stored job's model has 7,500,000,010 parameters, "
                               "the stored tensors 1,210")


# ------------------------------------------------------------------------- writing
def test_a_strategys_tensors_round_trip_and_each_rank_reads_its_row(tmp_path):
    model = small_model()
    model.build(64)
    rows = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    path = checkpoint.save(tmp_path / "ckpt.h5", model, world_size=3,
                           strategy_state={"residual_by_rank": rows,
                                           "momentum": np.ones(4, np.float32)})
    found = checkpoint.read(path)
    assert found.shapes["strategy"] == {"residual_by_rank": (3, 5), "momentum": (4,)}
    assert found.verify() == 2 + 4 + 2 * 4  # strategy, params, adam's two slots
    np.testing.assert_array_equal(found.strategy_tensor("residual_by_rank", row=1), rows[1])
    np.testing.assert_array_equal(found.strategy_tensor("momentum"), np.ones(4))
    with h5py.File(path) as file:
        assert file["strategy/residual_by_rank"].chunks == (1, 5)  # a rank reads its own
    with pytest.raises(NonFiniteError, match="strategy state momentum holds NaN"):
        checkpoint.save(path, model, strategy_state={"momentum": np.full(4, np.nan, "f4")})
    assert checkpoint.read(path).shapes["strategy"]["momentum"] == (4,)  # left as it was


def test_non_finite_tensors_are_never_written(tmp_path):
    path = tmp_path / "ckpt.h5"
    model = small_model()
    x, y = load_digits()
    model.fit(x[:100], y[:100], epochs=1, verbose=0)
    model.save(path)
    before = path.read_bytes()
    model.params.values["dense_0/kernel"][3, 4] = np.nan
    with pytest.raises(NonFiniteError) as info:
        model.save(path)
    assert str(info.value) == f"cannot write {path}: parameters dense_0/kernel holds NaN"
    assert info.value.exit_code == 3
    model.params.values["dense_0/kernel"][3, 4] = 0.0
    state = model.params.views(model.optimizer.state()["adam/grad_sq_sum"])
    state["dense_1/bias"][2] = -np.inf
    with pytest.raises(NonFiniteError, match="optimizer state adam/grad_sq_sum dense_1/bias "
                                             "holds Inf"):
        model.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.h5"]


def test_the_finite_check_works_on_device_arrays(tmp_path):
    from strict_device import StrictDeviceBackend

    model = Sequential([Dense(4, input_dim=3), Dense(2)], seed=0, backend=StrictDeviceBackend())
    model.compile("adam", "mse")
    model.build()
    checkpoint.save(tmp_path / "device.h5", model)  # no host copy of a whole buffer
    model.params.values["dense_1/bias"][1] = np.inf
    with pytest.raises(NonFiniteError, match="parameters dense_1/bias holds Inf"):
        checkpoint.save(tmp_path / "device.h5", model)


def test_large_finite_values_are_written(tmp_path):
    model = small_model()
    model.build()
    model.params.data[...] = 3e38  # their sum overflows float32: still every value is finite
    checkpoint.save(tmp_path / "large.h5", model)
    np.testing.assert_array_equal(checkpoint.read(tmp_path / "large.h5").params["dense_0/bias"],
                                  model.params.values["dense_0/bias"])


STORAGE_HELPER = """
import json, subprocess, sys
from pathlib import Path

import mpinn
from mpinn import checkpoint
from mpinn.errors import StorageError

directory, case = Path(sys.argv[1]), sys.argv[2]
path = directory / "ckpt.h5"
small = mpinn.Sequential([mpinn.Dense(4, input_dim=3)], seed=0)
small.build()
checkpoint.save(path, small)
before = path.read_bytes()
large = mpinn.Sequential([mpinn.Dense(512, input_dim=512)], seed=0)  # 1 MiB
large.build()
writes = {"full": lambda: checkpoint.save(path, large),
          "full-at-close": lambda: checkpoint.save(path, small, config="x" * 300_000),
          "read-only": lambda: checkpoint.save(path, small)}
if case == "read-only":
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
try:
    writes[case]()
    error = None
except StorageError as exc:
    error = str(exc)
result = {"error": error, "intact": path.read_bytes() == before,
          "files": sorted(p.name for p in directory.iterdir())}
if case != "read-only":  # the failed write holds no space: a small one fits again
    checkpoint.save(path, small)
    result["again"] = checkpoint.read(path).attrs["format"]
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def private_tmpfs(tmp_path_factory):
    """run(case) -> (result, stderr) of STORAGE_HELPER on a 256 KiB tmpfs of its own,
    mounted in a private mount namespace (root only; skips elsewhere)."""
    probe_directory = tmp_path_factory.mktemp("probe")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount -t tmpfs -o size=64k none {probe_directory}"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    helper = tmp_path_factory.mktemp("helper") / "storage_helper.py"
    helper.write_text(STORAGE_HELPER)

    def run(case, directory):
        command = (f"mount -t tmpfs -o size=256k none {directory} && "
                   f"exec {sys.executable} {helper} {directory} {case}")
        done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    return run


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case, reason", [
    ("full", "No space left on device"),
    ("full-at-close", "No space left on device"),  # HDF5's last word: "Can't destroy cache"
    ("read-only", "Read-only file system"),
])
def test_a_failed_write_is_one_storage_error_and_keeps_the_previous_file(
        tmp_path, private_tmpfs, case, reason):
    result, stderr = private_tmpfs(case, tmp_path)
    assert result["error"] == f"cannot write {tmp_path / 'ckpt.h5'}: {reason}"
    assert result["intact"] and result["files"] == ["ckpt.h5"]  # no temporary file left
    assert result.get("again", "mpinn.checkpoint") == "mpinn.checkpoint"
    assert stderr == ""  # nothing printed by h5py on the way


def test_a_failed_write_names_the_first_errno_in_the_chain():
    final = RuntimeError("Can't destroy cache (slist already enabled?)")
    assert checkpoint._errno(final) is None
    final.__context__ = RuntimeError("Unable to flush file (file write failed: ..., errno = "
                                     "28, error message = 'No space left on device')")
    assert checkpoint._errno(final) == errno.ENOSPC
    assert checkpoint._errno(OSError(errno.EROFS, "Read-only file system")) == errno.EROFS


def test_an_error_that_is_not_the_file_systems_is_no_storage_error(tmp_path, monkeypatch):
    model = small_model()
    model.build()

    def device_failure(array):
        raise RuntimeError("an illegal memory access was encountered")

    monkeypatch.setattr(model.backend, "to_numpy", device_failure)
    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        checkpoint.save(tmp_path / "ckpt.h5", model)
    assert not isinstance(info.value, StorageError) and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- run ids
def test_a_checkpoint_keeps_its_run_id_and_older_ones_read_without_one(
        tmp_path, good_checkpoint):
    model = small_model()
    model.build()
    path = checkpoint.save(tmp_path / "ckpt.h5", model, run_id="20261201-051000-3fa2")
    assert checkpoint.read(path).attrs["run_id"] == "20261201-051000-3fa2"
    with h5py.File(good_checkpoint) as file:  # as every checkpoint before run ids
        assert "run_id" not in file.attrs
    assert checkpoint.read(good_checkpoint).attrs["run_id"] is None


def test_a_malformed_run_id_is_never_written(tmp_path):
    with pytest.raises(ValueError, match=r"received: run_id='a\\nb'"):
        checkpoint.save(tmp_path / "bad.h5", small_model(), run_id="a\nb")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ latest valid checkpoint
def test_latest_valid_skips_damaged_and_non_finite_checkpoints_and_says_so(
        tmp_path, good_checkpoint):
    good, nan, cut = (tmp_path / checkpoint.NAME_PATTERN.format(iterations=i) for i in (1, 2, 3))
    shutil.copyfile(good_checkpoint, good)
    # written by something that does not check (an older mpinn): h5py keeps the checksum
    crafted(good_checkpoint, nan, lambda file: file[KERNEL].__setitem__((0, 0), np.nan))
    damaged("truncated", good_checkpoint, cut)
    skipped = []
    found = checkpoint.latest_valid(tmp_path, on_skip=lambda *args: skipped.append(args))
    assert found.path == good
    assert skipped[0][0] == cut and skipped[0][1].startswith("damaged checkpoint (")
    assert skipped[1] == (nan, "parameters dense_0/kernel holds NaN")
    assert checkpoint.latest_valid(tmp_path).path == good


def test_verify_finds_inf_in_the_optimizer_state(tmp_path, good_checkpoint):
    name = "optimizer/adam/grad_sum/dense_1/bias"
    path = crafted(good_checkpoint, tmp_path / "inf.h5",
                   lambda file: file[name].__setitem__(3, np.inf))
    with pytest.raises(DataError) as info:
        checkpoint.read(path).verify()
    assert str(info.value) == f"{path}: optimizer state adam/grad_sum dense_1/bias holds Inf"
    assert checkpoint.read(good_checkpoint).verify() == 12


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
    for fragment in ("mpinn.checkpoint v2", "position: after epoch 4,", "dense_0/kernel",
                     "(64, 16)", "adam/grad_sum", "history val_accuracy: 4 epochs",
                     "checksums: verified (12 tensors, all finite)", 'name = "adam"'):
        assert fragment in shown.stdout
    evaluated = run(["evaluate", str(final)], tmp_path)
    assert evaluated.returncode == 0 and evaluated.stdout.startswith(
        "the validation hold-out (0.2 of the data, split_seed 0), 359 samples: loss: ")
    np.save(tmp_path / "x.npy", load_digits().x[:5])
    predicted = run(["predict", str(final), "x.npy", "-o", "out.npy"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out, mpinn.load_model(final).predict(load_digits().x[:5]))
    missing = run(["inspect", "nope.h5"], tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "mpinn: error: nope.h5: no such checkpoint file")


@pytest.mark.parametrize("kind, message", [
    ("flipped", "damaged checkpoint ("), ("nan", "parameters dense_0/kernel holds NaN")])
def test_inspect_reads_every_tensor_and_exits_2_on_a_bad_one(tmp_path, good_checkpoint, kind,
                                                              message):
    path = (damaged("flipped", good_checkpoint, tmp_path / "bad.h5") if kind == "flipped" else
            crafted(good_checkpoint, tmp_path / "bad.h5",
                    lambda file: file[KERNEL].__setitem__((0, 0), np.nan)))
    shown = run(["inspect", str(path)], tmp_path)
    assert shown.returncode == 2 and shown.stdout == ""
    assert shown.stderr.startswith(f"mpinn: error: {path}: {message}")
    assert len(shown.stderr.splitlines()) == 1


def test_python_api_checkpoints_and_metrics_log_reload_as_trained(tmp_path):
    x, y = load_digits()
    model = mpinn.Sequential([mpinn.Rescale(0.5), mpinn.Dense(10, activation="softmax")],
                             seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=3, verbose=0, callbacks=[
        mpinn.ModelCheckpoint(tmp_path / "checkpoints", keep=2),
        mpinn.MetricsLog(tmp_path / "metrics.jsonl", len(x))])
    newest = checkpoint.list_checkpoints(tmp_path / "checkpoints")
    assert len(newest) == 2
    restored = mpinn.load_model(newest[0])  # the model's own job: no job file needed
    assert restored.evaluate(x, y, return_dict=True) == model.evaluate(x, y, return_dict=True)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3] and "time" in lines[0]
