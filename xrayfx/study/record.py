"""The run record: what fit-head writes as ``config.json`` and every reader (predict, report, evaluate) reads.

:class:`RunRecord` is the typed view of a run's ``config.json``. It is built
once, by :func:`xrayfx.study.runs.load_run`, after the run's files (config.json
included, through ``run.sha256``) have been checked against their hashes; no
reader looks keys up on the raw dictionary or guesses alternatives. A run of
another format version is refused with the version and the fix (re-run
fit-head); a missing key or a value of the wrong type is one RunError naming
the key.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrayfx.exceptions import RunError
from xrayfx.util import sha256_bytes, sha256_file
from xrayfx.extraction.augment import JITTER_VERSION, jitter_group_name
from xrayfx.util import library_versions

#: Version of the run folder layout and of config.json; 2 added run.sha256, typed decision and per-fold parts.
RUN_FORMAT_VERSION = 2
VERSION_KEY = "xrayfx_run_version"


@dataclass(frozen=True)
class HeadEntry:
    """One trained head of a run: its fold (None for holdout), folder inside the run, persist record."""

    fold: int | None
    folder: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """The recorded decision: ``predicted = positive`` iff ``p_<positive> >= threshold``."""

    threshold: float
    rule: str
    positive: str
    negative: str
    fold_thresholds: tuple[float | None, ...]
    note: str | None


@dataclass(frozen=True)
class RunRecord:
    """Typed ``config.json`` of a run (format :data:`RUN_FORMAT_VERSION`); ``raw`` keeps the whole dict."""

    format_version: int
    run_id: str
    labels: tuple[str, str]
    positive: str
    negative: str
    model: dict[str, Any]
    backbone: str
    runtime: str
    precision: str
    cache_dir: str
    data_path: str
    data_sha256: str
    split_kind: str
    head_name: str
    heads: tuple[HeadEntry, ...]
    balance: str
    decision: Decision
    files: dict[str, str]
    raw: dict[str, Any]

    @property
    def is_kfold(self) -> bool:
        """True for a k-fold run (one head per fold)."""
        return self.split_kind == "kfold"

    @classmethod
    def from_dict(cls, config: Any, where: Path) -> "RunRecord":
        """Validate a run's config dict; RunError (one line, the key and the fix) on anything unexpected."""
        if not isinstance(config, dict):
            _bad(where, "a JSON object", config)
        version = config.get(VERSION_KEY)
        if version != RUN_FORMAT_VERSION:
            raise RunError(
                f"{where} is a run of format version {version!r}; this xrayfx reads version {RUN_FORMAT_VERSION}. "
                "Fix: re-run fit-head with this xrayfx to make a new run."
            )
        labels = _get(config, "labels", list, where)
        if len(labels) != 2 or not all(isinstance(v, str) for v in labels):
            _bad(where, "labels as two strings", labels)
        dec = _get(config, "decision", dict, where)
        threshold = _number(dec, "decision.threshold", where)
        positive = _get(dec, "positive", str, where, "decision.positive")
        negative = _get(dec, "negative", str, where, "decision.negative")
        if {positive, negative} != set(labels):
            _bad(where, f"decision.positive/negative to be the labels {labels}", [positive, negative])
        folds = dec.get("fold_thresholds", [])
        if not isinstance(folds, list) or not all(v is None or _is_number(v) for v in folds):
            _bad(where, "decision.fold_thresholds as a list of numbers", folds)
        head = _get(config, "head", dict, where)
        entries = _get(head, "heads", list, where, "head.heads")
        heads = tuple(_head_entry(e, where) for e in entries)
        if not heads:
            _bad(where, "at least one entry in head.heads", entries)
        split = _get(config, "split", dict, where)
        data = _get(config, "data", dict, where)
        balance = _get(config, "balance", dict, where)
        return cls(
            format_version=int(version),
            run_id=_get(config, "run_id", str, where),
            labels=(labels[0], labels[1]),
            positive=positive,
            negative=negative,
            model=_get(config, "model", dict, where),
            backbone=_get(config, "backbone", str, where),
            runtime=_get(config, "runtime", str, where),
            precision=_get(config, "precision", str, where),
            cache_dir=_get(config, "cache_dir", str, where),
            data_path=_get(data, "path", str, where, "data.path"),
            data_sha256=_get(data, "sha256", str, where, "data.sha256"),
            split_kind=_get(split, "kind", str, where, "split.kind"),
            head_name=_get(head, "name", str, where, "head.name"),
            heads=heads,
            balance=_get(balance, "method", str, where, "balance.method"),
            decision=Decision(threshold, _get(dec, "rule", str, where, "decision.rule"), positive, negative,
                              tuple(None if v is None else float(v) for v in folds), dec.get("note")),
            files=dict(_get(config, "files", dict, where)),
            raw=config,
        )

    def fold_threshold(self, fold: int | None) -> float | None:
        """The threshold a fold's head uses on its own test rows (None: validation gave none)."""
        if fold is None or fold < 0:
            return self.decision.threshold
        values = self.decision.fold_thresholds
        return values[fold] if fold < len(values) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(where: Path, expected: str, got: Any) -> None:
    shown = repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise RunError(f"Expected {expected} in {where}; got {shown}. Fix: re-run fit-head (the record is damaged).")


def _get(node: dict[str, Any], key: str, kind: type, where: Path, name: str | None = None) -> Any:
    if key not in node:
        raise RunError(f"Expected the key {name or key!r} in {where}; it is missing. Fix: re-run fit-head.")
    value = node[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _bad(where, f"{name or key} as {kind.__name__}", value)
    return value


def _number(node: dict[str, Any], name: str, where: Path) -> float:
    key = name.rsplit(".", 1)[-1]
    if key not in node:
        raise RunError(f"Expected the key {name!r} in {where}; it is missing. Fix: re-run fit-head.")
    if not _is_number(node[key]):
        _bad(where, f"{name} as a finite number", node[key])
    return float(node[key])


def _head_entry(entry: Any, where: Path) -> HeadEntry:
    if not isinstance(entry, dict):
        _bad(where, "head.heads entries as objects", entry)
    folder = _get(entry, "folder", str, where, "head.heads[].folder")
    if Path(folder).is_absolute() or ".." in Path(folder).parts:
        _bad(where, "head folders inside the run", folder)
    fold = entry.get("fold")
    if fold is not None and (not isinstance(fold, int) or isinstance(fold, bool)):
        _bad(where, "head.heads[].fold as an integer or null", fold)
    return HeadEntry(fold, folder, _get(entry, "record", dict, where, "head.heads[].record"))


# ---------------------------------------------------------------------------------------------
# Writing


def data_record(dataset: Any) -> dict[str, Any]:
    """Path and sha256 of the data: the manifest's bytes, or a listing of a folder."""
    source = Path(dataset.source).resolve()
    if dataset.kind == "manifest" and source.is_file():
        return {"kind": "manifest", "path": str(source), "sha256": sha256_file(source)}

    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(source)) if p.is_relative_to(source) else str(p)

    listing = "\n".join(f"{rel(r.path)},{r.label or ''},{r.image_id or ''}" for r in dataset.records)
    return {
        "kind": dataset.kind, "path": str(source), "sha256": sha256_bytes(listing.encode("utf-8", "surrogateescape")),
        "sha256_of": "lines 'relative path,label,image id' of every file, in listing order",
    }


def build_config(
    *, run_id: str, extracted: Any, dataset: Any, rows: Any, opts: Any, parts: Any, kind: str,
    split_source: dict[str, Any], test_size: float, val_size: float, split_seed: int, train_seed: int,
    weights_seed: int, allow_leakage: bool, leakage: dict[str, Any], summary: dict[str, Any],
    results: list[Any], decision: dict[str, Any], jparams: Any, runtime: str, precision: str,
    cache_dir: Path, seconds: float, split_sha256: str,
) -> dict[str, Any]:
    """The dict fit-head writes as config.json; :meth:`RunRecord.from_dict` is its typed reader."""

    config = extracted.config
    exported = extracted.exported
    return {
        VERSION_KEY: RUN_FORMAT_VERSION,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
        "model": config.to_dict(),
        "backbone": config.spec.name,
        "fingerprint": config.fingerprint,
        "runtime": runtime,
        "precision": precision,
        "preprocessing": config.preprocessing.to_dict(),
        "weights": config.weights.to_dict(),
        "onnx": {"file": exported.path.name, "sha256": exported.sidecar.get("onnx_sha256")},
        "cache_group": extracted.cache_path.name,
        "cache_dir": str(Path(cache_dir).resolve()),
        "data": {
            **data_record(dataset), "n_rows": len(rows.ids), "left_out_by_label": rows.left_out,
            "duplicates_dropped": rows.duplicates_dropped, "skipped": len(extracted.skipped),
        },
        "labels": list(opts.labels),
        "positive": opts.positive,
        "split": {
            "file": "split.csv", "sha256": split_sha256, "kind": kind, "from": split_source,
            "test_size": None if split_source["file"] or kind == "kfold" else test_size,
            "val_size": val_size, "seed": split_seed, "folds": parts.n_folds or None,
            "grouped_by": parts.grouped_by,
            "columns": "image_id,patient_id,label,fold,part (one row per image per fold)",
            "allow_leakage": allow_leakage, "leakage": leakage, "summary": summary,
        },
        "head": {
            "name": opts.head,
            "params": results[0].record.get("params"),
            "heads": [{"fold": r.fold, "folder": r.folder, "record": r.record, "seconds": round(r.seconds, 3)}
                      for r in results],
        },
        "balance": {"method": opts.balance, "k_neighbors": opts.k_neighbors if opts.balance == "smote" else None,
                    "per_fold": [r.balance for r in results]},
        "augment": {
            "n": opts.augment,
            "params": jparams.to_dict() if opts.augment else None,
            "jitter_version": JITTER_VERSION if opts.augment else None,
            "cache_group": jitter_group_name(extracted.cache_path.name, jparams) if opts.augment else None,
            "applied": "after resizing to the input size; paper head: fresh jitters each epoch; others: once",
            "stats": [r.augment for r in results] if opts.augment else None,
        },
        "seeds": {"weights": weights_seed, "split": split_seed, "train": train_seed},
        "decision": decision,
        "versions": library_versions(),
    }
