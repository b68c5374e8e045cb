"""Before the first step the ranks agree that every one of them set up, and the same job.

Each rank sends one small vector in one collective: how its setup ended (fine, bad input,
or an unexpected exception) and a digest of its job's fingerprint (the resolved job,
mpinn's version, the MPI library, the model's layout, the data's shapes and a content
sample, the checkpoint it resumes). Only when something is wrong do the ranks exchange
their messages and fingerprints, so that one of them can say which rank failed, or which
ranks differ on which key.
"""

import hashlib
import json
import sys
import traceback

import numpy as np

from . import __version__
from .dist.watchdog import ranks_text
from .errors import MpinnError
from .inputs import array_digest

FINE, BAD_INPUT, CRASHED = 0, 1, 2


class SetupFailed(Exception):
    """Setup failed on some rank, or the ranks' jobs differ; every rank raises it with the
    same exit code. `message` is what this rank prints (maybe nothing)."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code, self.message = exit_code, message


def fingerprint(prepared, comm) -> dict[str, str]:
    """Everything that must be the same on every rank, key by key, as text."""
    job, model = prepared.job, prepared.model
    found = {"mpinn version": __version__, "MPI library": comm.library,
             "world size": str(comm.size)}
    for section, keys in job.sections.items():
        for key, value in sorted(keys.items()):
            found[f"{section}.{key}"] = json.dumps(value, sort_keys=True)
    found["model parameters"] = " ".join(f"{slot.name}{list(slot.shape)}"
                                         for slot in model.params.slots)
    for part, arrays in (("training data", prepared.train),
                         ("validation data", prepared.validation)):
        for name, array in zip("xy", arrays or (None, None), strict=True):
            found[f"{part} {name}"] = array_digest(model.backend, array)
    resumed = prepared.resumed
    found["resumed checkpoint"] = "none" if resumed is None else (
        f"{resumed.path.name} (epoch {resumed.data.get('epoch')}, step "
        f"{resumed.data.get('step')}, {resumed.attrs['iterations']} optimizer steps)")
    return found


def agree(comm, error: "BaseException | None", found: "dict[str, str] | None",
          tag: str) -> None:
    """Return on every rank if every rank set up the same job; else raise SetupFailed on
    every rank. `error` is this rank's setup failure, `found` its fingerprint."""
    level = FINE if error is None else BAD_INPUT if isinstance(error, MpinnError) else CRASHED
    if level == CRASHED:  # its own traceback, rank-tagged, whatever the others say
        lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
        sys.stderr.write("".join(f"{tag}{line}\n" for line in lines))
        sys.stderr.flush()
    words = _digest_words(found) if level == FINE else np.zeros(4, np.int64)
    vector = np.concatenate([[level], words, -words]).astype(np.int64)
    comm.allreduce_max(vector)
    worst, same = int(vector[0]), np.array_equal(vector[1:5], -vector[5:])
    if worst == FINE and same:
        return
    mine = {"level": level, "error": str(error) if level == BAD_INPUT else "",
            "fingerprint": found or {}}
    reports = [json.loads(data) for data in comm.allgather_bytes(json.dumps(mine).encode())]
    if worst == CRASHED:
        crashed = [rank for rank, report in enumerate(reports) if report["level"] == CRASHED]
        raise SetupFailed(1, "" if comm.rank or level == CRASHED else
                          f"mpinn: setup failed on {ranks_text(crashed)} (see above)")
    if worst == BAD_INPUT:
        raise SetupFailed(MpinnError.exit_code,
                          "" if comm.rank else _errors_text(reports, comm.size))
    raise SetupFailed(MpinnError.exit_code, "" if comm.rank else _difference_text(reports))


def _digest_words(found: dict) -> np.ndarray:
    digest = hashlib.blake2b(json.dumps(found).encode(), digest_size=16).digest()
    return np.frombuffer(digest, np.uint32).astype(np.int64)


def _errors_text(reports: list, size: int) -> str:
    """Each distinct error once, with the ranks that had it unless all did."""
    by_error: dict[str, list[int]] = {}
    for rank, report in enumerate(reports):
        if report["level"] == BAD_INPUT:
            by_error.setdefault(report["error"], []).append(rank)
    return "\n".join(f"mpinn: error: {error}" if len(ranks) == size else
                     f"mpinn: error: on {ranks_text(ranks)}: {error}"
                     for error, ranks in by_error.items())


def _difference_text(reports: list) -> str:
    """The first fingerprint key on which the ranks differ, and who has which value."""
    prints = [report["fingerprint"] for report in reports]
    for key in prints[0]:
        by_value: dict[str, list[int]] = {}
        for rank, found in enumerate(prints):
            by_value.setdefault(found.get(key, "(missing)"), []).append(rank)
        if len(by_value) > 1:
            values = " but ".join(f"{value} on {ranks_text(ranks)}"
                                  for value, ranks in by_value.items())
            return f"mpinn: error: the ranks were given different jobs: {key} is {values}"
    return "mpinn: error: the ranks were given different jobs"
