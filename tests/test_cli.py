"""Every `mpinn` command through click's CliRunner, --help included."""

import json

import pytest
from click.testing import CliRunner

from mpinn import __version__
from mpinn.cli import cli


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.mark.parametrize("args", [[], ["train"], ["plugins"], ["info"]])
def test_help_everywhere(runner, args):
    result = runner.invoke(cli, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage: mpinn" in result.output


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_plugins_lists_groups_names_and_packages(runner):
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    for fragment in ("mpinn.backends:", "numpy", "mpinn_numpy:NumpyBackend",
                     "mpinn.strategies:", "allreduce", "mpinn.datasets:", "digits",
                     f"[mpinn {__version__}]"):
        assert fragment in result.output


def test_info_reports_versions_mpi_backends_and_blas(runner):
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for fragment in (f"mpinn {__version__}", "numpy ", "mpi4py ", "MPI: ", "; 1 rank(s)",
                     "backend numpy: available", "strategies: allreduce", "BLAS: ",
                     "BLAS settings:", "rank  host  local rank  device  BLAS threads\n0 "):
        assert fragment in result.output


def test_info_describes_each_backend_that_can_run(runner, backend):
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines()
                if line.startswith(f"backend {backend}: "))
    assert line.startswith(f"backend {backend}: available")
    if backend == "cupy":
        assert "GPU 0 of " in line and "CUDA driver " in line and "cuda arrays reach MPI" in line


@pytest.mark.parametrize("setting, route", [("1", "directly"), ("0", "through host buffers")])
def test_info_says_how_device_arrays_reach_mpi(runner, monkeypatch, setting, route):
    from strict_device import StrictDeviceBackend

    class Described(StrictDeviceBackend):
        def describe(self):
            return "a stand-in device"

    monkeypatch.setattr("mpinn.cli.get_backend", lambda name: Described())
    monkeypatch.setenv("MPINN_GPU_AWARE_MPI", setting)
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    assert (f"backend numpy: available; a stand-in device; test-device arrays reach MPI "
            f"{route}") in result.output


def test_train_default_job_with_overrides(runner, tmp_path):
    result = runner.invoke(cli, ["train", "--set", "training.epochs=2",
                                 "--set", "logging.progress='lines'"])
    assert result.exit_code == 0, result.output
    assert "Epoch 2/2" in result.output and "samples/s" in result.output
    assert "on 1 rank(s)" in result.output
    records = [json.loads(line) for line in
               (tmp_path / "runs/digits/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (tmp_path / "runs/digits/final.h5").exists()


def test_train_quiet_prints_nothing(runner):
    result = runner.invoke(cli, ["train", "--quiet", "--set", "training.epochs=1"])
    assert result.exit_code == 0 and result.output == ""


def test_train_bad_input_exits_2_with_one_line(runner, tmp_path):
    result = runner.invoke(cli, ["train", "missing.toml"])
    assert result.exit_code == 2
    assert result.output.strip() == ("mpinn: error: missing.toml: cannot read the job file "
                                     "(No such file or directory)")
    result = runner.invoke(cli, ["train", "--set", "training.batch_size=0"])
    assert result.exit_code == 2
    assert result.output.strip().endswith("training.batch_size must be > 0, got 0")
