"""Job files: strict validation with one-line messages naming the key and the value."""

from pathlib import Path

import pytest

from mpinn import ConfigError
from mpinn.building import build_model, build_optimizer
from mpinn.config import default_job_text, differences, load_job, parse_job, stored_job, toml_value
from mpinn.dist import LocalComm
from mpinn.runner import prepare

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """
[model]
layers = [{ type = "dense", units = 3, activation = "softmax" }]
[training]
loss = "sparse_categorical_crossentropy"
"""


def test_jobs_digits_toml_is_the_embedded_default_job():
    assert (ROOT / "jobs" / "digits.toml").read_text() == default_job_text()
    assert load_job(ROOT / "jobs" / "digits.toml").sections == load_job(None).sections


def test_defaults_fill_in_and_the_job_is_read_only():
    job = parse_job(MINIMAL)
    assert job["training.epochs"] == 10 and job["strategy.name"] == "allreduce"
    assert job["optimizer.learning_rate"] == 0.001
    with pytest.raises(TypeError):
        job.sections["training"]["epochs"] = 3


def test_overrides_are_parsed_as_toml_and_recorded():
    job = parse_job(MINIMAL, overrides=["training.epochs=5", "model.backend=numpy",
                                        "optimizer.momentum=0.9", "optimizer.name='sgd'"])
    assert job["training.epochs"] == 5 and job["model.backend"] == "numpy"
    assert job.extras("optimizer") == {"momentum": 0.9}
    assert build_optimizer(job).momentum == 0.9
    resolved = parse_job(job.text, "stored")  # the text holds every override, resolved
    assert resolved.sections == job.sections and resolved.text == parse_job(job.text).text
    assert "# --set training.epochs=5" in job.text  # and says where they came from


def test_the_resolved_text_round_trips_any_string_and_key():
    names = ["tab\there", 'quote " and \\ backslash', "new\nline", "del\x7f", "é ✓ 𝄞",
             "\x00nul"]
    for name in names:
        job = parse_job(MINIMAL + '[strategy]\n"odd key" = 1\n',
                        overrides=[f"run.name={toml_value(name)}"])
        again = parse_job(job.text)
        assert again["run.name"] == name and again.extras("strategy") == {"odd key": 1}


def test_a_string_key_takes_the_text_that_toml_would_read_as_a_number():
    job = parse_job(MINIMAL, overrides=["run.name=nan", "data.dataset=inf", "run.directory=1"])
    assert (job["run.name"], job["data.dataset"], job["run.directory"]) == ("nan", "inf", "1")


def test_older_stored_jobs_read_as_they_were_meant():
    older = MINIMAL.replace("[training]", "[run]\nseed = 7\n[data]\nvalidation_split = 0.2\n"
                            "[training]") + "\n# --set overrides:\n# model.dtype=float64\n"
    job = stored_job(older, "old.h5")
    assert job["model.dtype"] == "float64"  # the override comment applies
    assert job["data.split_seed"] == 7  # older versions drew the hold-out with run.seed
    assert stored_job(parse_job(MINIMAL).text, "new.h5")["data.split_seed"] == 0
    without_data = stored_job(MINIMAL.replace("[training]", "[run]\nseed = 5\n[training]"), "o")
    assert without_data["data.split_seed"] == 5


def test_dates_and_times_round_trip():
    job = parse_job(MINIMAL, overrides=["data.since=2024-01-01", "data.at=1979-05-27T07:32:00Z",
                                        "data.clock=07:32:00"])
    assert parse_job(job.text).extras("data") == job.extras("data")


def test_a_validation_set_replaces_the_hold_out():
    job = parse_job(MINIMAL, overrides=['data.validation={ path = "val.npz" }'])
    assert job["data.validation_split"] == 0.0 and job["data.validation"] == {"path": "val.npz"}
    with pytest.raises(ConfigError, match="data.validation and data.validation_split are "
                                          "alternatives"):
        parse_job(MINIMAL, overrides=['data.validation={ path = "val.npz" }',
                                      "data.validation_split=0.1"])
    with pytest.raises(ConfigError, match="data.validation.split_seed: give only"):
        parse_job(MINIMAL, overrides=["data.validation={ split_seed = 3 }"])


def test_differences_name_each_key_and_both_values():
    one = parse_job(MINIMAL, "a.toml")
    other = parse_job(MINIMAL, "b.toml", ["optimizer.learning_rate=0.01", "training.epochs=9"])
    assert differences(one, other, ignore={"training.epochs"}) == [
        "optimizer.learning_rate is 0.001 here but 0.01 in b.toml"]


@pytest.mark.parametrize("text, overrides, message", [
    (MINIMAL + "[training2]\n", [], "unknown section [training2]"),
    (MINIMAL.replace("[training]", "[training]\nepoch = 3"), [],
     "unknown key training.epoch; allowed in [training]: epochs,"),
    (MINIMAL.replace("[training]", "[training]\nepochs = 'ten'"), [],
     "training.epochs must be an integer, got 'ten'"),
    (MINIMAL.replace("[training]", "[training]\nbatch_size = -4"), [],
     "training.batch_size must be > 0, got -4"),
    (MINIMAL.replace("[training]", "[training]\nshuffle = 1"), [],
     "training.shuffle must be true or false, got 1"),
    (MINIMAL + "[data]\nvalidation_split = 1.5\n", [],
     "data.validation_split must be in [0, 1), got 1.5"),
    (MINIMAL.replace("[model]", "[model]\ndtype = 'float16'"), [],
     "model.dtype = 'float16' is not allowed; allowed: float32, float64"),
    ("[training]\nloss = 'mse'\n", [], "model.layers is required"),
    (MINIMAL, ["training.epochs=0"], "training.epochs must be > 0, got 0"),
    (MINIMAL, ["training.epoch=3"], "--set 'training.epoch=3': unknown key training.epoch"),
    (MINIMAL, ["epochs"], "expected section.key=value"),
    ("[model\n", [], "not valid TOML"),
    (MINIMAL.replace('type = "dense", ', ""), [], "model.layers[0] must be a table with a"),
])
def test_bad_job_values_are_named(text, overrides, message):
    with pytest.raises(ConfigError) as info:
        parse_job(text, "job.toml", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(("job.toml", "--set"))


@pytest.mark.parametrize("overrides, message", [
    (["model.layers=[{type='conv', units=3}]"],
     "job.toml: model.layers[0]: unknown layer type 'conv'; allowed: dense, dropout"),
    (["model.layers=[{type='dense', units=-3}]"],
     "job.toml: model.layers[0]: Dense: units must be a positive integer. Received: units=-3"),
    (["model.layers=[{type='dense', unit=3}]"],
     "job.toml: model.layers[0]: unknown key unit; allowed: units, activation"),
    (["model.layers=[{type='dense', units=3, activation='swish'}]"],
     "unknown activation 'swish'; allowed:"),
    (["optimizer.betas=0.9"], "job.toml: [optimizer]: unknown key betas; allowed:"),
    (["optimizer.name='lion'"], "optimizer.name = 'lion' is not allowed; allowed: sgd, adam"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate must be > 0, got -0.1"),
    (["optimizer.schedule={name='cosine', decay_steps=0}"],
     "optimizer.schedule: CosineDecay: decay_steps must be a number > 0"),
    (["optimizer.schedule={name='linear'}"], "optimizer.schedule.name = 'linear' is not allowed"),
    (["training.loss='hinge'"], "unknown loss 'hinge'"),
    (["model.backend='tpu'"], "no mpinn.backends plugin named 'tpu'; installed: "),
])
def test_bad_model_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        build_model(parse_job(MINIMAL, "job.toml", overrides))
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset='imagenet'"], "data.dataset: no mpinn.datasets plugin named 'imagenet'"),
    (["data.dataset='npz'", "data.path='missing.npz'"], "data file 'missing.npz' does not exist"),
    (["data.dataset='npz'", "data.file='x.npz'"],
     "unknown key data.file; [data] takes dataset, validation_split, split_seed, validation "
     "and the arguments of dataset 'npz': path, x, y"),
    (["strategy.name='gossip'"], "strategy.name: no mpinn.strategies plugin named"),
    (["strategy.buckets=4"], "[strategy] ('allreduce'): unknown key buckets; allowed: "
                             "compression, powersgd_rank, overlap, bucket_mb"),
    (["data.dataset='regression'"], "not a class index"),
])
def test_bad_data_and_strategy_settings_are_named(overrides, message):
    job = parse_job(MINIMAL, "job.toml", overrides)
    with pytest.raises(Exception) as info:
        prepare(job, LocalComm())
    assert message in str(info.value), str(info.value)


def test_schedule_and_warmup_from_the_job():
    job = parse_job(MINIMAL, overrides=[
        "optimizer.schedule={name='step', step_size=10, factor=0.5, warmup_steps=5}"])
    schedule = build_optimizer(job).learning_rate
    assert schedule(0) == pytest.approx(0.001 / 5)
    assert schedule(5) == pytest.approx(0.001) and schedule(15) == pytest.approx(0.0005)


def test_training_needs_a_loss():
    job = parse_job("[model]\nlayers = [{ type = 'dense', units = 1 }]\n", "job.toml")
    with pytest.raises(ConfigError, match="job.toml: training.loss is required"):
        prepare(job, LocalComm())


@pytest.mark.parametrize("override", ["run.seed=-1", "data.split_seed=-3"])
def test_seeds_are_not_negative(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]} must be >= 0"):
        parse_job(MINIMAL, "job.toml", [override])


def test_a_binary_file_is_no_job_file(tmp_path):
    (tmp_path / "final.h5").write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"final.h5: not a job file \(TOML text\); it holds "
                                          r"binary data at byte 0"):
        load_job(tmp_path / "final.h5")
