"""The paper's head: Keras' model.fit (reference) against the fast NumPy trainer, timed side by side.

Data: the shared adult-only composition, Cohen COVID-19 radiographs against the
NIH normals of ../shared/data/cxr, embedded by MobileNet alpha 0.25 with the
shared ImageNet weights (onnxruntime fp32, through an embedding cache under
/tmp by default), split by patient (``make_holdout_split``, 30 % test, 15 % of
the rest validation, seed 0). Both trainers fit the paper's head (its default
settings: 100 epochs, batch 8, SGD 1e-4 / 0.5, dropout of the backbone spec)
on the training part with the validation part evaluated after every epoch,
``--repeats`` times each, alternating which goes first; the medians of the
wall-clock seconds (and of the process CPU seconds, steadier on a shared
machine) are compared. Both heads are scored on the same test part.

The two trainers compute the same math from the same initial weights but draw
shuffles and dropout masks from different random streams, so their histories
are close, not identical: ``history_max_abs_diff`` is the largest difference of
any per-epoch loss/accuracy/val_loss/val_accuracy between them.

Example::

    .venv/bin/python benchmarks/bench_head.py --json benchmarks/results/bench_head.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import MOBILENET_WEIGHTS, machine_line, shared_rows, write_rows  # noqa: E402

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def embeddings(cache_dir: Path):
    """Embeddings, labels and patients of the adult-only composition (extracted once into the cache)."""
    from xrayfx.extraction.pipeline import extract

    rows = [r for r in shared_rows() if (r["source"], r["label"]) in (("cohen", "covid"), ("nih", "normal"))]
    manifest = write_rows(cache_dir / "manifests" / "adult-covid-vs-nih.csv", rows)
    got = extract("mobilenet", manifest, weights=str(MOBILENET_WEIGHTS), cache_dir=cache_dir, progress=False)
    patients = np.array([m.get("patient_id", "") for m in got.metadata])
    return got.ids, got.embeddings, np.asarray(got.labels).astype(str), patients


def fit_once(trainer: str, X, y, val, epochs: int, seed: int):
    from xrayfx.study.heads import make_head
    from xrayfx.models.registry import get_spec

    head = make_head("paper", trainer=trainer, epochs=epochs, seed=seed, dropout=get_spec("mobilenet").dropout)
    w0, c0 = time.perf_counter(), time.process_time()
    head.fit(X, y, validation_data=val)
    return head, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the result here (JSON)")
    ap.add_argument("--cache-dir", default="/tmp/xrayfx-bench-head", help="embedding cache (made if missing)")
    ap.add_argument("--repeats", type=int, default=3, help="fits per trainer (median)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.repeats < 1 or args.epochs < 1:
        ap.error(f"--repeats and --epochs must be >= 1; got {args.repeats}, {args.epochs}")
    from sklearn.metrics import roc_auc_score

    from xrayfx.study.splits import make_holdout_split

    load_start = os.getloadavg()
    ids, X, labels, patients = embeddings(Path(args.cache_dir))
    split = np.asarray(make_holdout_split(ids, labels, patients, test_size=0.3, val_size=0.15, seed=0).split)
    train, val, test = (np.flatnonzero(split == p) for p in ("train", "val", "test"))
    y_test = (labels[test] == "covid").astype(int)
    wall = {"reference": [], "fast": []}
    cpu = {"reference": [], "fast": []}
    heads = {}
    fit_once("fast", X[train], labels[train], None, 1, args.seed)  # imports and Keras warm-up
    for r in range(args.repeats):
        for trainer in (("reference", "fast") if r % 2 == 0 else ("fast", "reference")):
            head, w, c = fit_once(trainer, X[train], labels[train], (X[val], labels[val]), args.epochs, args.seed)
            wall[trainer].append(w)
            cpu[trainer].append(c)
            heads[trainer] = head
            print(f"repeat {r + 1}: {trainer} {w:.2f} s wall, {c:.2f} s CPU", flush=True)
    auroc = {}
    for trainer, head in heads.items():
        proba = head.predict_proba(X[test])[:, list(head.classes_).index("covid")]
        auroc[trainer] = float(roc_auc_score(y_test, proba))
    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(heads["reference"].history_, heads["fast"].history_)
        for k in HISTORY_KEYS
    )
    ref_s, fast_s = float(np.median(wall["reference"])), float(np.median(wall["fast"]))
    doc = {
        "rows": int(len(train)),
        "epochs": args.epochs,
        "reference_seconds": round(ref_s, 3),
        "fast_seconds": round(fast_s, 3),
        "speedup": round(ref_s / fast_s, 2),
        "auroc_reference": round(auroc["reference"], 4),
        "auroc_fast": round(auroc["fast"], 4),
        "history_max_abs_diff": round(float(diff), 4),
        "reference_cpu_seconds": round(float(np.median(cpu["reference"])), 3),
        "fast_cpu_seconds": round(float(np.median(cpu["fast"])), 3),
        "speedup_cpu": round(float(np.median(cpu["reference"]) / np.median(cpu["fast"])), 2),
        "runs_seconds": wall,
        "validation_rows": int(len(val)),
        "test_rows": int(len(test)),
        "test_covid": int(y_test.sum()),
        "final_epoch": {t: heads[t].history_[-1] for t in heads},
        "data": "cohen covid vs nih normal, ../shared/data/cxr; mobilenet (shared weights), onnxruntime fp32",
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "machine_line": machine_line(),
    }
    text = json.dumps(doc, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
