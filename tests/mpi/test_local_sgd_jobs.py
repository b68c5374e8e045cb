"""`mpinn train` with local SGD (strategy "local_sgd") on 1 to 3 ranks."""

import json
import signal

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC, MPINN
from .test_allreduce_jobs import SMALL_JOB
from .test_stopping import JOB as STOP_JOB
from .test_stopping import signal_after_first_checkpoint, start, stopped_and_resumed


def final(directory):
    return checkpoint.read(directory / "final.h5")


def records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def synchronisations(epochs, steps, every, warmup=0):
    """How many times local_sgd averages the parameters: every `every` steps after the
    warm-up, and at an epoch's end where they stepped apart since."""
    count, done = 0, 0
    for _ in range(epochs):
        apart = False
        for _ in range(steps):
            done += 1
            if done > warmup:
                apart = (done - warmup) % every != 0
                count += not apart
        count += apart
    return count


def small_job(tmp_path, name):
    (tmp_path / f"{name}.toml").write_text(SMALL_JOB.format(directory=tmp_path / name))
    return f"{name}.toml"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("settings", [["strategy.sync_every=1"],
                                      ["strategy.sync_every=5", "strategy.warmup_steps=1000"]],
                         ids=["sync-every-step", "all-warm-up"])
def test_synchronous_steps_equal_allreduce_bit_for_bit(tmp_path, launch, settings):
    """With sync_every = 1, or while warming up, a step is one gradient Allreduce."""
    assert launch(2, "train", small_job(tmp_path, "allreduce"), "-q").returncode == 0
    sets = [arg for setting in ["strategy.name='local_sgd'", *settings]
            for arg in ("--set", setting)]
    run = launch(2, "train", small_job(tmp_path, "local"), "-q", *sets)
    assert run.returncode == 0, run.stderr
    a, b = final(tmp_path / "allreduce"), final(tmp_path / "local")
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
    for slot in a.optimizer:
        for name, value in a.optimizer[slot].items():
            np.testing.assert_array_equal(b.optimizer[slot][name], value, err_msg=name)
    assert records(tmp_path / "local")[-1]["synchronisations"] == 0


@pytest.mark.timeout(300)
def test_local_steps_train_the_default_job_within_a_point_of_allreduce(tmp_path, launch):
    """Every 4 steps (1437 samples in batches of 32: 45 steps, 11 synchronisations and the
    epoch's end), and every 4 steps after 90 synchronous ones."""
    accuracy = {}
    for name, settings in {"allreduce": [], "every-4": ["strategy.sync_every=4"],
                           "warm": ["strategy.sync_every=4", "strategy.warmup_steps=90"]}.items():
        strategy = "allreduce" if name == "allreduce" else "local_sgd"
        sets = [arg for setting in [f"run.name='{name}'", f"strategy.name='{strategy}'",
                                    *settings] for arg in ("--set", setting)]
        run = launch(2, "train", "-q", *sets)
        assert run.returncode == 0, run.stderr
        *epochs, report = records(tmp_path / "runs" / name)
        accuracy[name] = epochs[-1]["val_accuracy"]
        if strategy == "local_sgd":
            warmup = 90 if name == "warm" else 0
            assert report["synchronisations"] == synchronisations(30, 45, 4, warmup)
    assert accuracy["allreduce"] >= 0.95
    assert accuracy["every-4"] >= accuracy["allreduce"] - 0.01, accuracy
    assert accuracy["warm"] >= accuracy["allreduce"] - 0.01, accuracy


SETTINGS = [
    ["strategy.sync_every=7"],
    ["strategy.sync_every=7", "strategy.outer_lr=0.7", "strategy.outer_momentum=0.9",
     "strategy.warmup_steps=20"],
    ["strategy.sync_every=7", "strategy.average_optimizer=true"],
]
SETTING_IDS = ["every-7", "nesterov-outer-step", "average-optimizer"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_a_stop_resumes_exactly(tmp_path, settings):
    """Where the stop lands (180 steps per epoch, a synchronisation every 7) the
    checkpoint keeps each rank's parameters and optimizer state if they differ; the
    resumed run ends bit for bit where an uninterrupted one does."""
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or mpinn is not installed")
    sets = [arg for setting in ["strategy.name='local_sgd'", *settings]
            for arg in ("--set", setting)]
    stopped, a, b = stopped_and_resumed(tmp_path, sets)
    iterations = stopped.attrs["iterations"]
    averaged = "strategy.average_optimizer=true" in settings
    synced = iterations % 180 == 0 or (iterations % 7 == 0 and averaged)
    rows = stopped.shapes.get("strategy", {}).get("params_by_rank")
    assert (rows is None) == synced and (synced or rows[0] == 2), (iterations, rows)
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
    assert "params_by_rank" not in b.shapes.get("strategy", {})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("then", [3, None], ids=["on-3-ranks", "in-one-process"])
def test_a_stop_mid_interval_resumes_on_another_world_size_from_the_mean(tmp_path, launch,
                                                                        then):
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or mpinn is not installed")
    (tmp_path / "run.toml").write_text(STOP_JOB.format(directory=tmp_path / "run"))
    sets = ["--set", "strategy.name='local_sgd'", "--set", "strategy.sync_every=7"]
    parts = start([MPIEXEC, "-n", "2", MPINN, "train", "run.toml", "-q", *sets], tmp_path)
    signal_after_first_checkpoint(parts, tmp_path / "run", signal.SIGTERM)
    stopped = checkpoint.latest_valid(tmp_path / "run")
    iterations = stopped.attrs["iterations"]  # where the stop lands is up to timing
    if iterations % 180:  # mid-epoch: rows, as the optimizer states differ anyway
        rows = stopped.strategy_tensor("params_by_rank")
        assert np.array_equal(rows[0], rows[1]) == (iterations % 7 == 0)
    resumed = launch(then, "train", "run.toml", "-q", "--resume", "auto",
                     "--set", "training.epochs=2", *sets)
    assert resumed.returncode == 0, resumed.stderr
    losses = [record["loss"] for record in records(tmp_path / "run") if "loss" in record]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("setting, message", [
    ("strategy.sync_every=0", "local_sgd: sync_every must be a whole number of at least 1; "
                              "received: sync_every=0"),
    ("strategy.outer_momentum=1", "local_sgd: outer_momentum must be a number in [0, 1); "
                                  "received: outer_momentum=1"),
    ("strategy.average_optimizer='yes'", "local_sgd: average_optimizer must be true or false; "
                                         "received: 'yes'"),
    ("strategy.sync_evry=4", "[strategy] ('local_sgd'): unknown key sync_evry; allowed: "
                             "sync_every, warmup_steps"),
    ("strategy.replica='nodes'", "unknown local_sgd replica 'nodes'; allowed: node, rank"),
])
def test_bad_settings_are_one_line_and_exit_2_on_every_rank(tmp_path, launch, setting, message):
    run = launch(2, "train", "-q", "--set", "strategy.name='local_sgd'", "--set", setting)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_a_checkpoint_every_n_steps_resumes_exactly(tmp_path, launch, settings):
    """checkpoint.every_steps = 10 with a synchronisation every 7 steps: step 170 is
    mid-interval; resumed from it, training ends where the run that wrote it did, and
    the epoch's end (180) needs no rows."""
    for name in ("whole", "again-170", "again-180"):
        (tmp_path / f"{name}.toml").write_text(STOP_JOB.format(directory=tmp_path / name))
    sets = [arg for setting in ["strategy.name='local_sgd'", "checkpoint.every_steps=10",
                                "training.epochs=2", *settings] for arg in ("--set", setting)]
    whole = launch(2, "train", "whole.toml", "-q", *sets)
    assert whole.returncode == 0, whole.stderr
    middle = tmp_path / "whole" / "ckpt-000000170.h5"
    assert checkpoint.read(middle).shapes["strategy"]["params_by_rank"][0] == 2
    end = checkpoint.read(tmp_path / "whole" / "ckpt-000000180.h5")
    assert "params_by_rank" not in end.shapes.get("strategy", {})
    for step, resume in ((170, middle), (180, end.path)):
        again = launch(2, "train", f"again-{step}.toml", "-q", "--resume", str(resume), *sets)
        assert again.returncode == 0, again.stderr
        a, b = final(tmp_path / "whole"), final(tmp_path / f"again-{step}")
        for name, value in a.params.items():
            np.testing.assert_array_equal(b.params[name], value, err_msg=f"{name} from {resume}")


@pytest.mark.timeout(120)
def test_a_finished_run_without_final_h5_writes_it_from_its_last_checkpoint(tmp_path, launch):
    """As after a stop at the last epoch's very end: --resume auto has nothing to train and
    writes final.h5, outer step state included, from the newest checkpoint."""
    sets = ["--set", "strategy.name='local_sgd'", "--set", "strategy.outer_lr=0.7",
            "--set", "strategy.outer_momentum=0.9", "--set", "training.epochs=3"]
    assert launch(2, "train", "-q", *sets).returncode == 0
    names = ("outer_anchor", "outer_momentum")
    trained = {name: final(tmp_path / "runs" / "digits").strategy_tensor(name) for name in names}
    (tmp_path / "runs" / "digits" / "final.h5").unlink()
    again = launch(2, "train", "-q", "--resume", "auto", *sets)
    assert again.returncode == 0, again.stderr
    rewritten = final(tmp_path / "runs" / "digits")
    for name in names:
        np.testing.assert_array_equal(rewritten.strategy_tensor(name), trained[name])



@pytest.mark.timeout(240)
def test_node_replicas_on_one_node_equal_allreduce_bit_for_bit(tmp_path, launch):
    """replica = "node" with every rank on one node: each step sums the node's gradients,
    as allreduce does; the averages every sync_every steps then leave the equal copies
    as they are (on 2 ranks, (a + a) / 2 = a)."""
    assert launch(2, "train", small_job(tmp_path, "allreduce"), "-q",
                  "--set", "strategy.by_node=false").returncode == 0
    run = launch(2, "train", small_job(tmp_path, "local"), "-q", "--set",
                 "strategy.name='local_sgd'", "--set", "strategy.replica='node'",
                 "--set", "strategy.sync_every=3")
    assert run.returncode == 0, run.stderr
    a, b = final(tmp_path / "allreduce"), final(tmp_path / "local")
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
    assert records(tmp_path / "local")[-1]["synchronisations"] > 0
