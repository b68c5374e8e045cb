"""`mpinn plot`: a run's learning curves, drawn from its metrics log into a PNG."""

import json
import math
import os
from pathlib import Path

from .errors import DataError, MpinnError, StorageError
from .runs import PICTURE_NAME

LOG_NAME = "metrics.jsonl"  # logging.metrics_log of the default job
# What an epoch line holds besides the loss and metrics (MetricsLog, the runner, stragglers.py)
NOT_CURVES = frozenset({"epoch", "run", "time", "seconds", "samples_per_second", "world_size",
                        "slowest_rank", "slowest_compute_seconds", "compute_seconds_spread"})


def plot_run(source: "str | Path", output: "str | Path | None" = None) -> Path:
    """Draw the loss, each metric (training and validation) and the throughput per epoch of
    one run into a PNG, `output` or curves.png beside the log; returns its path. `source`
    is a run directory or its metrics log; of several runs in one log, the last is drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MpinnError('mpinn plot needs matplotlib: pip install "mpinn[plot]"') from None
    log = Path(source) / LOG_NAME if Path(source).is_dir() else Path(source)
    output = Path(output) if output is not None else log.parent / PICTURE_NAME
    if output.suffix.lower() != ".png":
        raise DataError(f"{output}: mpinn plot writes PNG; give a name ending in .png")
    records = read_log(log)
    runs = list(dict.fromkeys(record.get("run") for record in records))
    records = [record for record in records if record.get("run") == runs[-1]]

    panels = panels_of(records)
    if not panels:
        raise DataError(f"{log}: its epoch lines hold no loss, metric or throughput to plot")
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    # A figure of its own on the Agg canvas: no pyplot, no GUI, no global state touched.
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title(log.absolute().parent, records[-1], len(runs)))
    epochs = [record["epoch"] for record in records]
    grid = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, (name, unit, lines) in zip(grid, panels, strict=False):
        for key, label in lines:
            axes.plot(epochs, [value(record, key) for record in records], marker="o",
                      markersize=3, label=label)
        axes.set(title=name, xlabel="epoch", ylabel=unit)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()
    for axes in grid[len(panels):]:  # the cells left over in the last row
        axes.set_visible(False)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:  # whole or not at all: an earlier picture survives a full disk
        figure.savefig(temporary, format="png")
        os.replace(temporary, output)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output


def read_log(log: Path) -> list[dict]:
    """The epoch lines of the metrics log `log` (but an unfinished last line). A missing or
    empty log, a line that is not a JSON object, or a value that is not a number fails with
    one line naming the file."""
    try:
        text = log.read_text(errors="replace")  # a stray byte fails as that line's JSON
    except OSError as exc:
        raise DataError(f"{log}: cannot read the metrics log: {exc.strerror}") from exc
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # cut short by a job that was killed while writing it
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{log}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: not a JSON object")
        if "epoch" not in record:
            continue  # the strategy's summary of the run
        for key in ["epoch", "samples_per_second", *(key for key in record
                                                      if key not in NOT_CURVES)]:
            found = record.get(key)
            if not (_is_number(found) or found is None and key != "epoch"):
                raise DataError(f"{where}: {key} must be a number. Received: {key}={found!r}")
        records.append(record)
    if not records:
        raise DataError(f"{log}: {'no epoch lines' if text.strip() else 'empty'}; "
                        "is it the metrics log of an mpinn run?")
    return records


def panels_of(records: list[dict]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The panels to draw: (title, y label, [(key, legend label)]) for the loss, each metric
    and the throughput, each with the curves that `records` hold."""
    names = dict.fromkeys(key.removeprefix("val_") for record in records for key in record
                          if key not in NOT_CURVES)
    panels = [(name, name, [(name, "training"), (f"val_{name}", "validation")])
              for name in names]
    panels.append(("throughput", "samples/s", [("samples_per_second", "training")]))
    present = [(name, unit, [(key, label) for key, label in lines
                             if any(key in record for record in records)])
               for name, unit, lines in panels]
    return [panel for panel in present if panel[2]]


def title(directory: Path, last: dict, runs: int) -> str:
    """The run directory, the run id, the world size, and whether earlier runs in the same
    log were left out."""
    parts = [str(directory)]
    if last.get("run") is not None:
        parts.append(f"run {last['run']}")
    if "world_size" in last:
        parts.append(f"{last['world_size']} rank{'' if last['world_size'] == 1 else 's'}")
    heading = " - ".join(parts)
    return heading + (f"\n(the last of {runs} runs in this log)" if runs > 1 else "")


def value(record: dict, key: str) -> float:
    """`record[key]` as a float: NaN, a gap in the curve, where it is null or missing."""
    found = record.get(key)
    return math.nan if found is None else float(found)


def _is_number(found) -> bool:
    return isinstance(found, (int, float)) and not isinstance(found, bool)
