"""Training runs on disk: one folder per run, every file hashed, resolved by path or id.

A run lives in ``<cache>/runs/<run-id>/`` and holds

* ``config.json`` — everything that fixes the run (backbone fingerprint, runtime,
  precision, preprocessing, weights, data path and sha256, split, head, balance,
  augmentation, seeds, library versions) and, under ``files``, the sha256 of
  every other file of the run. Its typed view is :class:`xrayfx.study.record.RunRecord`.
* ``run.sha256`` — the sha256 of ``config.json``, written last, so that an edited
  config.json (e.g. its ``decision.threshold``) fails the integrity check too.
* ``split.csv`` — the split (:func:`xrayfx.study.splits.write_split`).
* the head — ``head.keras`` + ``head.json`` (paper head) or ``head.skops``
  (classical heads), written by :func:`xrayfx.study.heads.persist.save_head`; a k-fold
  run has one per fold in ``fold-<f>/``.
* ``history.csv`` — per-epoch loss and accuracy (header only for heads that do
  not train in epochs); ``fold-<f>/history.csv`` for k-fold runs.
* ``predictions.csv`` — one row per validation and test image (per fold).
* ``metrics.json`` — the run's own metrics; ``summary.txt`` — the same, for people.

A run is built in a hidden sibling folder and renamed into place when complete,
so an interrupted run leaves no half-written run behind. Nothing in a run is a
pickle. :func:`load_run` checks every recorded sha256 before anything is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xrayfx.exceptions import IntegrityError, RunError, UsageError
from xrayfx.study.record import RUN_FORMAT_VERSION, VERSION_KEY, RunRecord
from xrayfx.util import atomic_write_json, atomic_write_text, read_json, sha256_file, verify_sha256

RUNS_DIR = "runs"
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.txt"
SEAL_FILE = "run.sha256"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass
class Run:
    """A finished run: its folder, its typed record, its ``config.json`` and its ``metrics.json``."""

    path: Path
    config: dict[str, Any]
    record: RunRecord
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The run's id (its folder name)."""
        return str(self.config.get("run_id", self.path.name))

    def file(self, name: str) -> Path:
        """The path of one recorded file of the run (``config["files"]`` key)."""
        if name not in self.config.get("files", {}):
            raise RunError(
                f"Run {self.path} records no file {name!r}; expected one of "
                f"{', '.join(sorted(self.config.get('files', {})))}. The run is incomplete: rerun fit-head."
            )
        return self.path / name


def runs_root(cache_dir: str | Path) -> Path:
    """``<cache_dir>/runs``."""
    return Path(cache_dir) / RUNS_DIR


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe folder name, else raise UsageError."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise UsageError(
            f"Expected --run-id to be 1-128 letters, digits, '.', '_', '+' or '-' (starting with a letter "
            f"or digit); got {run_id!r}. Fix: choose a plain name such as 'mobilenet-paper-1'."
        )
    return run_id


def default_run_id(backbone: str, head: str, cache_dir: str | Path, now: float | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<backbone>-<head>``, with ``-2``, ``-3``… if that folder exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{stamp}-{backbone}-{head}"
    root = runs_root(cache_dir)
    candidate, n = base, 1
    while (root / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def resolve_run(run: str | Path, cache_dir: str | Path = "cache") -> Path:
    """The folder of a run given as a path or as an id under ``<cache_dir>/runs``.

    A path that holds ``config.json`` wins; otherwise ``run`` is looked up as an
    id. Raises UsageError (exit code 2) when neither exists.
    """
    given = Path(run).expanduser()
    if (given / CONFIG_FILE).is_file():
        return given
    by_id = runs_root(cache_dir) / str(run)
    if _RUN_ID.match(str(run)) and (by_id / CONFIG_FILE).is_file():
        return by_id
    raise UsageError(_run_not_found(str(run), given, cache_dir))


def _run_not_found(run: str, given: Path, cache_dir: str | Path) -> str:
    """Where a run was looked for, what is there instead, and which --cache-dir or path would find it."""
    looked = f"looked for {given / CONFIG_FILE} and for a run id under {runs_root(cache_dir)}"
    if given.is_dir():
        there = f" {given} exists but holds no {CONFIG_FILE} (a run that never finished, or not a run folder)."
    elif len(given.parts) > 1 or given.is_absolute():
        there = f" There is no folder {given}."
    else:
        there = ""
    parent = given.parent if len(given.parts) > 1 else None
    elsewhere = list_runs(parent.parent) if parent is not None and parent.name == "runs" else []
    known = list_runs(cache_dir)
    if elsewhere and parent is not None:
        hint = (f" Runs under {parent}: {', '.join(elsewhere[-5:])}. Fix: pass one of those folders in full, "
                f"or its id with --cache-dir {parent.parent}.")
    elif known:
        hint = (f" Runs under {runs_root(cache_dir)}: {', '.join(known[-5:])}. Fix: pass the folder that "
                "fit-head printed, or one of these ids.")
    else:
        hint = (f" There are no runs under {runs_root(cache_dir)}. Fix: pass the full run folder that fit-head "
                "printed, or its id with --cache-dir set to the cache it was written in.")
    return (f"Expected --run to be a run folder (holding {CONFIG_FILE}) or a run id; got {run!r}, which is neither: "
            f"{looked}.{there}{hint}")


def list_runs(cache_dir: str | Path) -> list[str]:
    """Ids of the finished runs under ``<cache_dir>/runs``, sorted."""
    root = runs_root(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file())


def load_run(run: str | Path, cache_dir: str | Path = "cache", verify: bool = True) -> Run:
    """Read a run's ``config.json`` and ``metrics.json``, checking every recorded sha256 first.

    Raises :class:`IntegrityError` when a file differs from its recorded hash and
    :class:`RunError` when the folder is incomplete.
    """
    path = resolve_run(run, cache_dir)
    try:
        config = read_json(path / CONFIG_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(
            f"{path / CONFIG_FILE} is not readable JSON ({e}); expected the record fit-head writes. "
            "Fix: rerun fit-head."
        ) from None
    where = path / CONFIG_FILE
    if not isinstance(config, dict) or config.get(VERSION_KEY) != RUN_FORMAT_VERSION:
        RunRecord.from_dict(config, where)  # raises the error that names the version and the fix
    if verify:
        verify_config_seal(path)
    record = RunRecord.from_dict(config, where)
    if verify:
        verify_run_files(path, config)
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {}
    return Run(path=path, config=config, metrics=metrics, record=record)


def verify_config_seal(path: Path) -> None:
    """Check ``config.json`` against the sha256 in ``run.sha256`` (written last by fit-head)."""
    seal = path / SEAL_FILE
    if not seal.is_file():
        raise RunError(
            f"Run {path} has no {SEAL_FILE} (the sha256 of its {CONFIG_FILE}); the run is incomplete. "
            "Fix: re-run fit-head."
        )
    recorded = seal.read_text(encoding="utf-8").split()[0] if seal.read_text(encoding="utf-8").split() else ""
    actual = sha256_file(path / CONFIG_FILE)
    if recorded != actual:
        raise IntegrityError(
            f"{path / CONFIG_FILE} differs from the sha256 recorded in {seal} (expected {recorded[:12]}…, got "
            f"{actual[:12]}…): the run's record was edited after fit-head wrote it, so its threshold and files "
            "cannot be trusted. Fix: restore the original config.json, or re-run fit-head."
        )


def verify_run_files(path: Path, config: dict[str, Any]) -> None:
    """Check every file listed under ``config["files"]`` against its sha256."""
    for name, digest in sorted(config["files"].items()):
        target = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IntegrityError(f"{path / CONFIG_FILE} lists {name!r}, which is not inside the run; refusing it.")
        if not target.is_file():
            raise RunError(
                f"Run {path} is missing {name} (recorded in {CONFIG_FILE}); the run is incomplete. "
                "Fix: rerun fit-head."
            )
        verify_sha256(target, digest, what=f"run file {name} of")


class RunWriter:
    """Builds a run in a hidden folder, hashing each file, and renames it into place on :meth:`finish`."""

    def __init__(self, final: Path):
        self.final = Path(final)
        if self.final.exists():
            raise UsageError(
                f"Run folder {self.final} exists already; expected a new run id. Fix: pass another "
                "--run-id, or leave it out for a timestamped one."
            )
        self.tmp = self.final.with_name(f".{self.final.name}.{os.getpid()}.partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.files: dict[str, str] = {}

    def path(self, name: str) -> Path:
        """Where a file of the run is written while the run is being built."""
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def folder(self, name: str = "") -> Path:
        """A folder of the run (``""`` for the run's own folder), created if needed."""
        p = self.tmp / name if name else self.tmp
        p.mkdir(parents=True, exist_ok=True)
        return p

    def add(self, name: str) -> str:
        """Record the sha256 of a file already written under :meth:`path`; return it."""
        digest = sha256_file(self.tmp / name)
        self.files[name] = digest
        return digest

    def write_text(self, name: str, text: str) -> str:
        """Write a text file of the run atomically and record its sha256."""
        atomic_write_text(self.path(name), text)
        return self.add(name)

    def write_json(self, name: str, obj: Any) -> str:
        """Write a JSON file of the run atomically and record its sha256."""
        atomic_write_json(self.path(name), obj)
        return self.add(name)

    def finish(self, config: dict[str, Any]) -> Path:
        """Write ``config.json`` (with the files' hashes) last and move the run into place."""
        config = {**config, "files": dict(sorted(self.files.items()))}
        atomic_write_json(self.tmp / CONFIG_FILE, config)
        atomic_write_text(self.tmp / SEAL_FILE, f"{sha256_file(self.tmp / CONFIG_FILE)}  {CONFIG_FILE}\n")
        if self.final.exists():
            raise UsageError(
                f"Expected run folder {self.final} to stay free; got one made by another process while this run "
                "was training, so this run was discarded. Fix: rerun with another --run-id."
            )
        os.rename(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Remove the partial folder (after a failure)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
