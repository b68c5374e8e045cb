"""One directory holds one run, named by an id kept across resumes. `earlier_run` says what
another run left there (final.h5, checkpoints, a metrics log); `move_aside` moves it into
`earlier/<run id>/` so that a new run starts afresh (`mpinn train --start-over`)."""

import json
import os
import re
import secrets
import time
from pathlib import Path

from . import checkpoint
from .errors import DataError, StorageError

FINAL_NAME = "final.h5"
PICTURE_NAME = "curves.png"  # mpinn plot's
EARLIER_NAME = "earlier"
LOG_TAIL_BYTES = 64 * 1024  # what `earlier_run` reads of a metrics log, from its end
SAFE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a run id usable as a name
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def new_run_id() -> str:
    """A new run's id: its UTC start time and 4 random hex digits, e.g.
    "20261201-051000-3fa2" (sorts by time, safe in a file name)."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _run_files(run_directory: Path, checkpoint_directory: Path,
               metrics_log: Path) -> dict[str, list[Path]]:
    """What a run leaves, by kind: final.h5, checkpoints (newest first), temporary
    checkpoint files, a non-empty metrics log, and the picture `mpinn plot` drew of it
    (moved with the run, though alone it is no run)."""
    final, picture = run_directory / FINAL_NAME, run_directory / PICTURE_NAME
    temporary = sorted(path for path in _listed(checkpoint_directory)
                       if checkpoint.TEMPORARY_RE.match(path.name))
    return {"final": [final] if final.is_file() else [],
            "checkpoints": checkpoint.list_checkpoints(checkpoint_directory),
            "temporary": temporary,
            "log": [metrics_log] if metrics_log.is_file() and metrics_log.stat().st_size else [],
            "picture": [picture] if picture.is_file() else []}


def _listed(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


def _log_summary(metrics_log: Path) -> dict:
    """The run id, epoch and time of the last records in the end of a metrics log, each
    where a record holds a well-formed one; whatever the file holds, never more."""
    try:
        with metrics_log.open("rb") as file:
            start = max(file.seek(0, os.SEEK_END) - LOG_TAIL_BYTES, 0)
            file.seek(start)
            lines = file.read(LOG_TAIL_BYTES).decode(errors="replace").split("\n")
    except OSError:
        return {}
    found: dict = {}
    for line in lines[1 if start else 0:]:  # a tail starts inside a line
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        run, epoch, when = record.get("run"), record.get("epoch"), record.get("time")
        if isinstance(run, str) and SAFE_ID_RE.fullmatch(run):
            found["run"] = run
        if type(epoch) is int and 0 < epoch < checkpoint.COUNT_LIMIT:
            found["epochs"] = epoch
        if isinstance(when, str) and TIME_RE.fullmatch(when):
            found["last"] = when
    return found


def earlier_run(run_directory: Path, checkpoint_directory: Path,
                metrics_log: Path) -> "str | None":
    """What another run left in these places, as a phrase for a message ("final.h5,
    3 checkpoints (newest ckpt-000000460.h5) and metrics.jsonl (run 20261201-051000-3fa2,
    3 epochs, last 2026-12-01T05:12:03Z)"), or None when there is nothing (a lock or an
    empty directory is no run)."""
    run_directory, checkpoint_directory = Path(run_directory), Path(checkpoint_directory)
    files = _run_files(run_directory, checkpoint_directory, Path(metrics_log))
    parts = [FINAL_NAME] if files["final"] else []
    if files["checkpoints"]:
        where = "" if checkpoint_directory == run_directory else f" in {checkpoint_directory}"
        parts.append(f"{_counted(len(files['checkpoints']), 'checkpoint')}{where} (newest "
                     f"{files['checkpoints'][0].name})")
    if files["temporary"]:
        parts.append(_counted(len(files["temporary"]), "temporary checkpoint file"))
    for log in files["log"]:
        summary = _log_summary(log)
        details = [f"run {summary['run']}"] if "run" in summary else []
        details += [_counted(summary["epochs"], "epoch")] if "epochs" in summary else []
        details += [f"last {summary['last']}"] if "last" in summary else []
        shown = log.relative_to(run_directory) if log.is_relative_to(run_directory) else log
        parts.append(f"{shown} ({', '.join(details) or f'{log.stat().st_size:,} bytes'})")
    if not parts:
        return None
    *rest, last = parts
    return f"{', '.join(rest)} and {last}" if rest else last


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}{'s' * (count != 1)}"


def _earlier_id(files: dict[str, list[Path]]) -> "str | None":
    """The earlier run's id, from its metrics log or else its newest checkpoint."""
    for log in files["log"]:
        found = _log_summary(log).get("run")
        if found:
            return found
    for newest in files["checkpoints"][:1]:
        try:
            return checkpoint.read(newest).attrs["run_id"]
        except DataError:
            return None
    return None


def move_aside(run_directory: Path, checkpoint_directory: Path,
               metrics_log: Path) -> list[Path]:
    """Move another run's files (those `earlier_run` describes) into `earlier/<id>/` beside
    each: `id` is the earlier run's own, else the UTC time of its newest
    file; a name taken gets a suffix ("-2"), so nothing is overwritten. Returns the
    folders filled."""
    files = _run_files(Path(run_directory), Path(checkpoint_directory), Path(metrics_log))
    moving = [path for paths in files.values() for path in paths]
    if not moving:
        return []
    name = _earlier_id(files)
    if not (name and SAFE_ID_RE.fullmatch(name)):
        newest = max(path.stat().st_mtime for path in moving)
        name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(newest))
    parents = sorted({path.parent for path in moving})
    suffix = 1
    while any((parent / EARLIER_NAME / _numbered(name, suffix)).exists() for parent in parents):
        suffix += 1
    targets = {parent: parent / EARLIER_NAME / _numbered(name, suffix) for parent in parents}
    for path in moving:
        target = targets[path.parent] / path.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(f"cannot move {path} to {target}: {exc.strerror}") from exc
    return list(targets.values())


def _numbered(name: str, suffix: int) -> str:
    return name if suffix == 1 else f"{name}-{suffix}"
