"""`predict`: score images with a run's backbone, preprocessing, head(s) and recorded threshold.

The run is read through :func:`xrayfx.study.runs.load_run` (every file, config.json
included, checked against its sha256) and its typed record
(:class:`xrayfx.study.record.RunRecord`). The decision is the recorded one
(:mod:`xrayfx.study.decision`); a k-fold run predicts with the mean probability
of its K heads and the mean of their K thresholds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.data.manifest import Dataset, ImageRecord, read_manifest_csv
from xrayfx.csvsafe import csv_text
from xrayfx.exceptions import DataError, UsageError
from xrayfx.study.runs import Run, load_run, resolve_run
from xrayfx.study.decision import RULE_ARGMAX, decide, describe
from xrayfx.study.heads.persist import load_head
from xrayfx.util import import_keras_quietly
from xrayfx.data.files import scan_folder, sha256_regular
from xrayfx.data.manifest import load_dataset
from xrayfx.exceptions import ImageDecodeError
from xrayfx.data.images import is_image_path
from xrayfx.models.config import ModelConfig
from xrayfx.models.export import export_model
from xrayfx.extraction.pipeline import extract
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.models.quantize import int8_model_of_run
from xrayfx.util import atomic_write_text

Log = Callable[[str], None]


@dataclass
class PredictResult:
    """What :func:`predict` wrote: the rows and what was skipped."""

    columns: list[str]
    rows: list[list[str]]
    skipped: list[Any]
    threshold: float
    rule: str
    run: Run

    def csv_text(self) -> str:
        """The rows as CSV text with a header."""
        return csv_text(self.columns, self.rows)  # text cells neutralised against formula injection


@dataclass
class Scored:
    """Images scored by a run: the records that were embedded, their paths as given, probabilities."""

    records: list[ImageRecord]
    given: list[str]
    proba: np.ndarray  # columns in the run's label order
    p_pos: np.ndarray
    predicted: list[str]
    extracted: Any
    columns: list[str]  # the inputs' manifest columns (path first)


def proba_in(head: Any, X: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """predict_proba with columns in ``labels`` order."""
    if len(X) == 0:
        return np.zeros((0, len(labels)))
    proba = head.predict_proba(X)
    order = [list(head.classes_).index(c) for c in labels]
    return proba[:, order]


def load_heads(run: Run) -> list[Any]:
    """The run's trained head(s), one per fold, from the folders its record names."""

    record = run.record
    if any(h.record.get("kind") == "paper" for h in record.heads):
        import_keras_quietly()
    return [load_head(run.path / h.folder if h.folder else run.path, h.record) for h in record.heads]


def _manifest_paths(path: Path) -> list[str]:
    """Each row's path exactly as the manifest gives it (read by the one manifest reader)."""
    return [(row.get("path") or "").strip() for row in read_manifest_csv(path)[1]]


def collect(inputs: Sequence[str | Path]) -> tuple[Dataset, list[str]]:
    """Images to score (files, folders searched recursively, CSV manifests), hashed; and each path as given."""
    from concurrent.futures import ThreadPoolExecutor


    if not inputs:
        raise UsageError("Expected at least one IMAGE, FOLDER or MANIFEST to predict; got none.")
    records: list[ImageRecord] = []
    given: list[str] = []
    columns = ["path"]
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            raise DataError(f"Expected an image, folder or manifest at {p}; got nothing there. Fix: check the path.")
        if p.is_dir():
            found, refused = scan_folder(p, is_image_path)  # special files and symlinked folders are listed
            if not found:
                raise DataError(f"Expected image files (PNG, JPEG, DICOM) under {p}; got none.")
            records += [ImageRecord(path=f, label=None) for f in found]
            records += [ImageRecord(path=f, label=None, error=reason) for f, reason in refused]
            given += [str(f) for f in found] + [str(f) for f, _ in refused]
        elif p.suffix.lower() == ".csv":
            ds = load_dataset(p)
            records += ds.records
            given += _manifest_paths(p)
            columns += [c for c in ds.columns if c not in columns]
        else:
            records.append(ImageRecord(path=p, label=None))
            given.append(str(item))

    def hash_one(r: ImageRecord) -> None:
        if r.image_id is not None or r.error is not None:
            return
        try:
            r.image_id = sha256_regular(r.path)  # a FIFO, socket or device is refused, never read
        except ImageDecodeError as exc:
            r.error = exc.reason
        except PermissionError:
            r.error = "permission denied: make the file readable"

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(hash_one, records))
    return Dataset(source=Path(inputs[0]), kind="inputs", records=records, columns=columns), given


def collect_inputs(inputs: Sequence[str | Path]) -> Dataset:
    """Images to predict: image files, folders (searched recursively) and CSV manifests, hashed."""
    return collect(inputs)[0]


def cache_dir_of(run_path: Path) -> Path:
    """The cache a run folder ``<cache>/runs/<id>`` sits in (else ``cache``)."""
    return run_path.parent.parent if run_path.parent.name == "runs" else Path("cache")


def score(run: Run, dataset: Dataset, given: list[str], data_cache: Path, options: ExtractionOptions, *,
          log: Log = print) -> Scored:
    """Embed what is missing (run's backbone, preprocessing, runtime, precision) and apply head and threshold.

    ``options`` says how to embed (device, batch, threads…); the runtime and precision are the run's.
    An int8 run embeds with the exact int8 model it was trained with (its recorded cache group)."""

    record = run.record
    heads = load_heads(run)
    model = ModelConfig.from_dict(record.model, source=f"run config {run.path / 'config.json'}")
    model_path = int8_model_of_run(export_model(model, data_cache), run.config) if record.precision == "int8" else None
    options = replace(options, runtime=record.runtime, precision=record.precision, model_path=model_path)
    extracted = extract(data=dataset, config=model, cache_dir=data_cache, options=options, log=log, read_only_ok=True)
    given_of = {id(r): g for r, g in zip(dataset.records, given)}
    bad = {s.image_id for s in extracted.skipped if s.image_id}
    usable = [r for r in dataset.ok if r.image_id not in bad]
    labels = list(record.labels)
    X = np.asarray(extracted.embeddings)
    proba = np.mean([proba_in(h, X, labels) for h in heads], axis=0) if len(usable) else np.zeros((0, 2))
    p_pos = proba[:, labels.index(record.positive)]
    dec = record.decision
    predicted = [dec.positive if d else dec.negative for d in decide(p_pos, dec.threshold)]
    return Scored(usable, [given_of.get(id(r), str(r.path)) for r in usable], proba, p_pos, predicted, extracted,
                  list(dataset.columns))


def refuse_existing(path: str | Path | None, force: bool, flag: str = "-o") -> None:
    """UsageError (exit 2) when ``path`` exists and ``force`` is not set."""
    if path is not None and Path(path).exists() and not force:
        raise UsageError(f"Expected {flag} to name a new file; got {path}, which exists. Fix: choose another "
                         "name, or pass --force to overwrite it.")


def predict(
    run: str | Path,
    inputs: Sequence[str | Path],
    *,
    cache_dir: str | Path | None = None,
    output: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    log: Log | None = print,
    keep_degenerate: bool = False,
) -> PredictResult:
    """Predict images with a run's backbone, preprocessing, head(s) and recorded decision threshold.

    ``run`` is a run folder or a run id under ``<cache_dir>/runs``; every file of
    the run is checked against its recorded sha256 first. Embeddings go through
    the cache of the run's ``cache_dir`` (the folder above ``runs/``). Writes CSV
    ``path,image_id,p_<label>…,predicted,threshold`` followed by a manifest's other
    columns (label, patient_id, source, …); paths are written as given. An
    existing ``output`` is refused (UsageError) unless ``force``.
    """

    log = log or (lambda _m: None)
    refuse_existing(output, force)
    run_path = resolve_run(run, cache_dir or "cache")
    loaded = load_run(run_path, cache_dir or "cache")
    data_cache = Path(cache_dir) if cache_dir is not None else cache_dir_of(run_path)
    dataset, given = collect(inputs)
    options = ExtractionOptions(device=device, batch_size=batch_size, workers=workers, progress=progress,
                                keep_degenerate=keep_degenerate)
    scored = score(loaded, dataset, given, data_cache, options, log=log)
    record, dec = loaded.record, loaded.record.decision
    extra = [c for c in scored.columns if c not in ("path", "image_id")]
    columns = ["path", "image_id", *(f"p_{c}" for c in record.labels), "predicted", "threshold", *extra]
    out_rows = [
        [g, r.image_id, *(repr(float(v)) for v in p), pred, repr(dec.threshold), *(r.get(c) for c in extra)]
        for r, g, p, pred in zip(scored.records, scored.given, scored.proba, scored.predicted)
    ]
    for s in scored.extracted.skipped:
        log(f"skipped {s.path}: {s.reason}")
    log(f"predicted = {record.positive} if p_{record.positive} >= threshold, {describe(dec.rule, dec.threshold)}"
        + (f"; {dec.note}" if dec.rule == RULE_ARGMAX and dec.note else ""))
    result = PredictResult(columns, out_rows, list(scored.extracted.skipped), dec.threshold, dec.rule, loaded)
    if output is not None:
        atomic_write_text(output, result.csv_text())
    return result


def write_stdout(text: str) -> None:
    """Write CSV text to standard output unchanged (no wrapping or markup)."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8", "surrogateescape"))  # non-UTF-8 file names as their bytes
        buffer.flush()
