"""`mpinn plot`: learning curves from a run's metrics log, through `plot_run` and the CLI."""

import json
import math
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mpinn.errors import DataError, MpinnError
from mpinn.plot import plot_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The run directory of the default job, trained for real for 3 epochs."""
    from mpinn.runner import run_job

    directory = tmp_path_factory.mktemp("runs") / "digits"
    assert run_job(None, ["training.epochs=3", f"run.directory={directory}"], quiet=True) == 0
    return directory


@pytest.fixture
def figures(monkeypatch):
    """The figures `plot_run` saves, to look into (skips where matplotlib is missing)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def keeping(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keeping)
    return saved


def png_size(path) -> tuple[int, int]:
    """Width and height of the PNG at `path`, read from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_log(path, *records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def epoch(number, run=None, **values):
    record = {"epoch": number, "loss": 1.0 / number, "val_loss": 2.0 / number,
              "seconds": 0.1, "samples_per_second": 1000.0 * number, "world_size": 4}
    return {**record, **({"run": run, "time": "2025-01-01T00:00:00Z"} if run else {}), **values}


def curves(figure) -> dict:
    """{panel title: {legend label: y values}} of a drawn figure."""
    return {axes.get_title(): {line.get_label(): list(line.get_ydata()) for line in axes.lines}
            for axes in figure.axes if axes.get_visible()}


def test_default_job_curves_are_a_png_beside_the_log(trained_run, figures):
    written = plot_run(trained_run)
    assert written == trained_run / "curves.png"
    width, height = png_size(written)
    assert (width, height) == (1350, 350)  # three panels in a row, 4.5 x 3.5 in at 100 dpi
    assert written.stat().st_size > 20_000
    from matplotlib.image import imread

    assert imread(written).shape[:2] == (height, width)
    [figure] = figures
    drawn = curves(figure)
    assert list(drawn) == ["loss", "accuracy", "throughput"]
    assert list(drawn["loss"]) == list(drawn["accuracy"]) == ["training", "validation"]
    assert list(drawn["throughput"]) == ["training"]
    logged = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    assert drawn["loss"]["validation"] == [record["val_loss"] for record in logged]
    assert figure.get_suptitle() == f"{trained_run} - run {logged[0]['run']} - 1 rank"
    assert [axes.get_xlabel() for axes in figure.axes] == ["epoch"] * 3
    assert [axes.get_ylabel() for axes in figure.axes] == ["loss", "accuracy", "samples/s"]


def test_a_last_line_cut_short_by_a_killed_job_is_left_out(tmp_path, figures):
    log = write_log(tmp_path / "metrics.jsonl", epoch(1), epoch(2))
    with log.open("a") as file:
        file.write('{"epoch": 3, "lo')
    plot_run(log)
    assert curves(figures[0])["loss"]["training"] == [1.0, 0.5]


def test_a_log_file_plots_where_asked(tmp_path, figures):
    log = write_log(tmp_path / "elsewhere.jsonl", epoch(1), epoch(2, mae=0.5),
                    {"strategy": "ps", "server_busy_fraction": 0.3})
    output = tmp_path / "out" / "mine.png"
    output.parent.mkdir()
    assert plot_run(log, output) == output
    assert png_size(output) == (1350, 350)  # loss, mae, throughput
    assert not (tmp_path / "curves.png").exists()
    mae = curves(figures[0])["mae"]
    assert list(mae) == ["training"]
    assert math.isnan(mae["training"][0]) and mae["training"][1] == 0.5
    assert figures[0].get_suptitle() == f"{tmp_path} - 4 ranks"


def test_only_the_last_run_of_a_log_is_drawn(tmp_path, figures):
    log = write_log(tmp_path / "metrics.jsonl", epoch(1), epoch(2),
                    epoch(1, run="first"), epoch(2, run="first"),
                    epoch(1, run="second", loss=5.0))
    plot_run(tmp_path)
    [figure] = figures
    assert curves(figure)["loss"] == {"training": [5.0], "validation": [2.0]}
    assert figure.get_suptitle() == (f"{tmp_path} - run second - 4 ranks\n"
                                     "(the last of 3 runs in this log)")
    assert log.with_name("curves.png").exists()


def test_lines_without_a_run_id_are_one_run(tmp_path, figures):
    write_log(tmp_path / "metrics.jsonl", epoch(1), epoch(2), epoch(1), epoch(2))
    plot_run(tmp_path)
    assert curves(figures[0])["loss"]["training"] == [1.0, 0.5, 1.0, 0.5]
    assert "runs in this log" not in figures[0].get_suptitle()


def test_nulls_are_gaps(tmp_path, figures):
    write_log(tmp_path / "metrics.jsonl", epoch(1), epoch(2, loss=None, val_loss=None),
              epoch(3))
    plot_run(tmp_path)
    training = curves(figures[0])["loss"]["training"]
    assert training[0] == 1.0 and math.isnan(training[1]) and training[2] == 1 / 3


@pytest.mark.parametrize("lines, message", [
    (None, "{log}: cannot read the metrics log: No such file or directory"),
    ("", "{log}: empty; is it the metrics log of an mpinn run?"),
    ("\n\n", "{log}: empty; is it the metrics log of an mpinn run?"),
    ('{"strategy": "ps"}\n', "{log}: no epoch lines; is it the metrics log of an mpinn run?"),
    ('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo\n{"epoch": 3}\n', "{log}, line 2: not a "
     "JSON line (Unterminated string starting at)"),
    ('{"epoch": 1}\n\n[1, 2]\n', "{log}, line 3: not a JSON object"),
    ('{"epoch": 1, "loss": "low"}\n', "{log}, line 1: loss must be a number. "
     "Received: loss='low'"),
    ('{"epoch": null, "loss": 1.0}\n', "{log}, line 1: epoch must be a number. "
     "Received: epoch=None"),
    ('{"epoch": 1, "run": "x"}\n', "{log}: its epoch lines hold no loss, metric or throughput "
     "to plot"),
])
def test_bad_logs_fail_with_one_line_naming_the_file(tmp_path, lines, message):
    pytest.importorskip("matplotlib")
    log = tmp_path / "metrics.jsonl"
    if lines is not None:
        log.write_text(lines)
    with pytest.raises(DataError) as raised:
        plot_run(tmp_path)
    assert str(raised.value) == message.format(log=log)
    assert not (tmp_path / "curves.png").exists()


def test_an_unwritable_output_fails_with_one_line(trained_run, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(MpinnError, match=r"^cannot write .*nowhere/curves.png: No such file"):
        plot_run(trained_run, tmp_path / "nowhere" / "curves.png")


def test_without_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MpinnError) as raised:
        plot_run(tmp_path)
    assert str(raised.value) == 'mpinn plot needs matplotlib: pip install "mpinn[plot]"'


def test_draws_without_pyplot(trained_run, tmp_path):
    """No GUI backend and no global figure registry: pyplot is never imported."""
    pytest.importorskip("matplotlib")
    code = (f"import sys; from mpinn.plot import plot_run; "
            f"plot_run({str(trained_run)!r}, {str(tmp_path / 'c.png')!r}); "
            f"assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class TestPlotCommand:
    """`mpinn plot` in mpinn/cli.py (these fail until the command is there)."""

    @pytest.fixture
    def runner(self, tmp_path, monkeypatch):
        pytest.importorskip("matplotlib")
        monkeypatch.chdir(tmp_path)
        return CliRunner()

    def test_help(self, runner):
        from mpinn.cli import cli

        result = runner.invoke(cli, ["plot", "--help"])
        assert result.exit_code == 0 and "Usage: mpinn plot" in result.output

    def test_plots_a_run_directory(self, runner, trained_run):
        from mpinn.cli import cli

        (trained_run / "curves.png").unlink(missing_ok=True)
        result = runner.invoke(cli, ["plot", str(trained_run)])
        assert result.exit_code == 0, result.output
        assert result.output == f"wrote {trained_run / 'curves.png'}\n"
        png_size(trained_run / "curves.png")

    def test_output_option(self, runner, trained_run, tmp_path):
        from mpinn.cli import cli

        result = runner.invoke(cli, ["plot", str(trained_run / "metrics.jsonl"), "-o", "a.png"])
        assert result.exit_code == 0, result.output
        assert result.output == "wrote a.png\n"
        png_size(tmp_path / "a.png")

    def test_bad_input_exits_2_with_one_line(self, runner, tmp_path):
        from mpinn.cli import cli

        result = runner.invoke(cli, ["plot", str(tmp_path)])
        assert result.exit_code == 2
        assert result.output == (f"mpinn: error: {tmp_path / 'metrics.jsonl'}: cannot read the "
                                 "metrics log: No such file or directory\n")


def test_only_png_is_written(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl", epoch(1))
    with pytest.raises(DataError, match=r"k.pdf: mpinn plot writes PNG; give a name ending"):
        plot_run(log, tmp_path / "k.pdf")
    assert not (tmp_path / "k.pdf").exists()
