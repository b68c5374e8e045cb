"""`mpinn train` on 1 to 4 ranks with the allreduce strategy."""

import json

import numpy as np
import pytest

from mpinn import checkpoint

SMALL_JOB = """
[run]
name = "small"
directory = "{directory}"
seed = 7

[data]
dataset = "digits"
validation_split = 0.2

[model]
dtype = "float64"
layers = [
    {{ type = "dense", units = 32, activation = "tanh" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]

[training]
epochs = 2
batch_size = 60
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]

[optimizer]
name = "adam"
learning_rate = 0.003
"""


@pytest.mark.timeout(300)
def test_same_parameters_on_1_2_3_and_4_ranks(tmp_path, launch):
    # 1437 training samples in global batches of 60: the last batch (57) splits unevenly,
    # so this also covers unequal shards and weighting by sample count.
    results = {}
    for ranks in (None, 2, 3, 4):
        directory = tmp_path / f"ranks-{ranks or 1}"
        job = tmp_path / f"job-{ranks or 1}.toml"
        job.write_text(SMALL_JOB.format(directory=directory))
        run = launch(ranks, "train", str(job), "--quiet")
        assert run.returncode == 0, run.stderr
        results[ranks or 1] = checkpoint.read(directory / "final.h5").params
    reference = results[1]
    for ranks in (2, 3, 4):
        assert results[ranks].keys() == reference.keys()
        for name, value in reference.items():
            # float64: only the order of the gradient sums differs between world sizes
            np.testing.assert_allclose(results[ranks][name], value, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} on {ranks} ranks")
    assert not np.allclose(reference["dense_0/kernel"], 0)


@pytest.mark.timeout(180)
def test_default_job_reaches_096_validation_accuracy_on_2_ranks(launch, tmp_path):
    run = launch(2, "train", "--quiet")
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "runs/digits/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 30
    assert records[-1]["world_size"] == 2
    assert records[-1]["val_accuracy"] >= 0.96
    assert records[-1]["samples_per_second"] > 0


@pytest.mark.timeout(60)
def test_injected_exception_on_rank_1_ends_the_job_quickly(launch):
    run = launch(2, "train", "--quiet", "--set", "training.epochs=1000",
                 env={"MPINN_FAIL_AT": "1:20"}, timeout=45)
    assert run.returncode != 0
    assert run.seconds < 15
    assert "[rank 1/2" in run.stderr and "injected failure" in run.stderr


@pytest.mark.timeout(60)
def test_bad_job_file_exits_2_on_every_rank_with_the_message_once(launch, tmp_path):
    job = tmp_path / "bad.toml"
    job.write_text('[training]\nepochs = "ten"\nloss = "mse"\n'
                   '[model]\nlayers = [{ type = "dense", units = 1 }]\n')
    run = launch(2, "train", str(job))
    assert run.returncode == 2
    assert run.stderr == f"mpinn: error: {job}: training.epochs must be an integer, got 'ten'\n"
