"""Run folders of the ``energymask`` command line: what ``train`` writes, ``evaluate`` reads.

A run folder holds::

    run.json          format, status, data, model, callbacks and training settings,
                      test metrics, the SHA-256 of model.ckpt
    model.ckpt        the final Lightning checkpoint (weights and the callbacks' layer states)
    last.ckpt         the resumable checkpoint, rewritten at the end of every epoch
    logs/metrics.csv  the CSVLogger log
    evaluation.json   written by ``energymask evaluate`` (the latest call)
    evaluations/      every ``evaluate`` call's results, numbered, never replaced
    figures/*.png     written by ``energymask plot``
    .lock             held (``flock``) by the process writing the folder

What the folder guarantees (docs/reliability.md): one run per folder
(:func:`claim` refuses a folder that holds a run unless ``overwrite``, and a
folder another process holds), every file replaced atomically (:func:`write_atomic`,
:func:`save_figure`; checkpoints through
:class:`~energymask.lightning_modules.app.trainer.AtomicCheckpointIO`, which uses
:func:`atomic_replace`), and a checkpoint that is the one training wrote
(:func:`check_checkpoint`).

This module is the folder only: it imports neither torch nor Lightning. What a
run's settings build (model, data, the trained module) is :mod:`.building`'s.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMAT = "energymask-run/1"
#: The resumable checkpoint of a run folder, rewritten at the end of every epoch.
LAST_CHECKPOINT = "last.ckpt"
RUN_FILE = "run.json"
CHECKPOINT = "model.ckpt"
METRICS = "logs/metrics.csv"
EVALUATION = "evaluation.json"
LOCK = ".lock"
#: What a run writes into its folder: any of them means the folder holds a run.
EVALUATIONS = "evaluations"
RUN_CONTENTS = (RUN_FILE, CHECKPOINT, LAST_CHECKPOINT, "logs", EVALUATION, EVALUATIONS, "figures",
                "metrics.json", "report.md")


def prepare_out(path: str | Path) -> Path:
    """Create the folder ``path`` and check that a file can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".energymask-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {str(path)!r} is not writable "
                              f"({err.strerror or err})") from err
    return path


def failed_at_start(path: Path) -> bool:
    """True when ``path`` holds a run that failed before its first epoch ended.

    ``train`` records such a failure in ``run.json`` (``"status": "failed"``) and
    leaves no resumable checkpoint: nothing was trained, so the folder may be reused.
    """
    try:
        spec = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(spec, dict) and spec.get("status") == "failed"
            and not (path / LAST_CHECKPOINT).exists())


def holds_run(path: Path) -> list[str]:
    """The names of :data:`RUN_CONTENTS` present in the folder ``path``."""
    return [name for name in RUN_CONTENTS if (path / name).exists()]


@contextlib.contextmanager
def claim(path: str | Path, overwrite: bool = False, resume: bool = False,
          resumable: bool = True) -> Iterator[Path]:
    """Hold the run folder ``path`` for one process; yields the folder.

    The lock (``flock`` on ``path/.lock``) is taken before anything is written and
    released when the block ends, also when the process dies. A folder that holds
    a run is refused unless ``overwrite`` (its run files are then deleted, other
    files are left alone) or ``resume`` (kept as it is); a run that failed before
    its first epoch (:func:`failed_at_start`) is replaced without ``overwrite``.
    ``resumable``: the refusal offers ``--resume`` (``train``; not ``demo``).

    Raises:
        PermissionError: the folder is not writable.
        ValueError: another process holds the folder, or it holds a run.
    """
    path = prepare_out(path)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ValueError(f"run folder {str(path)!r} is in use by another energymask "
                             f"process (pid {holder}, lock {str(path / LOCK)!r}); wait for it "
                             "or choose another --out") from None
        found = holds_run(path)
        if found and not resume and failed_at_start(path):
            overwrite = True  # a start that failed: nothing to keep
        if found and not (overwrite or resume):
            again = "continue it with --resume, or " if resumable else ""
            raise ValueError(f"--out {str(path)!r} already holds a run ({', '.join(found)}); "
                             f"choose another folder, {again}replace it with --overwrite")
        if found and overwrite:
            for name in found:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def atomic_replace(tmp: Path, path: Path) -> None:
    """Move the fully written ``tmp`` over ``path`` in one step (flushed to disk first)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def temporary_path(path: Path) -> Path:
    """A hidden file name next to ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save the Matplotlib figure ``fig`` as a PNG at ``path``, atomically; returns ``path``."""
    tmp = temporary_path(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def keep_evaluation(folder: Path, text: str, protocol: str) -> Path:
    """Write one ``evaluate`` call's results as ``evaluations/NNN-<protocol>.json``.

    Numbered from 001 in the order of the calls; an existing file is never
    replaced, so results of both deletion protocols (or of any two calls) sit
    side by side. Returns the path written.
    """
    kept = folder / EVALUATIONS
    kept.mkdir(exist_ok=True)
    numbers = [int(p.name[:3]) for p in kept.glob("[0-9][0-9][0-9]-*.json")]
    path = kept / f"{max(numbers, default=0) + 1:03d}-{protocol}.json"
    write_atomic(path, text)
    return path


def write_run(path: Path, spec: dict[str, Any]) -> None:
    write_atomic(path / RUN_FILE, json.dumps({"format": FORMAT, **spec}, indent=2) + "\n")


def truncate_log(log: Path, epoch: int) -> None:
    """Drop the rows of ``epoch`` and later from the CSV log (the resumed run rewrites them)."""
    if not log.is_file():
        return
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(r for r in rows if r.get("epoch", "") == "" or int(r["epoch"]) < epoch)
    write_atomic(log, out.getvalue())


def read_run(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(run folder, run.json)`` from a run folder or a checkpoint file inside one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    folder = path if path.is_dir() else path.parent
    what = f"{str(path)!r} is not an energymask run: expected {RUN_FILE}"
    where = "in it" if path.is_dir() else "next to it"
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise ValueError(f"{what} {where} (written by `energymask train`)")
    try:
        spec = json.loads(run_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} with valid JSON, but {str(run_file)!r} is not ({err})") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{what} with \"format\": \"{FORMAT}\", but {str(run_file)!r} has none")
    return folder, spec


def require_entries(folder: Path, spec: dict[str, Any]) -> None:
    """Refuse a ``run.json`` without the ``data``, ``model`` and ``training`` entries."""
    missing = [k for k in ("data", "model", "training") if not isinstance(spec.get(k), dict)]
    if not missing and not isinstance(spec["model"].get("backbone"), str):
        missing = ["model.backbone"]
    if missing:
        raise ValueError(f"{str(folder / RUN_FILE)!r} lacks the entries {missing} that "
                         "`energymask train` writes (edited or written by another program?)")


def sha256(path: Path) -> str:
    """The SHA-256 of the file ``path``, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint(path: Path, expected_sha256: str | None = None) -> None:
    """Refuse a checkpoint that is missing or is not the file ``run.json`` recorded.

    Whether the file is a readable checkpoint at all is
    :func:`~energymask.lightning_modules.checkpoint.read_checkpoint`'s to say.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: its SHA-256 differs from ``expected_sha256`` (changed or damaged).
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if expected_sha256 is not None and (found := sha256(path)) != expected_sha256:
        raise ValueError(f"checkpoint {str(path)!r} is not the one training wrote: its SHA-256 "
                         f"is {found[:12]}..., run.json records {expected_sha256[:12]}... "
                         "(changed, truncated or damaged since)")




__all__ = ["CHECKPOINT", "EVALUATION", "EVALUATIONS", "FORMAT", "LAST_CHECKPOINT", "LOCK",
           "METRICS", "RUN_CONTENTS", "RUN_FILE", "atomic_replace", "check_checkpoint", "claim",
           "require_entries",
           "failed_at_start", "holds_run", "keep_evaluation", "prepare_out", "read_run",
           "save_figure", "sha256", "temporary_path", "truncate_log", "write_atomic", "write_run"]
