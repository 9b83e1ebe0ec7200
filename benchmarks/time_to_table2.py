"""Question 3 of issue 7: time from image files to the four-backbone Table 2 report, ours against the paper's way.

**Ours** (every step timed wall-clock, on the paper-sized data drawn by
``xrayfx data paper --manifest ../shared/data/cxr/manifest.csv``, 140 COVID +
939 normal):

1. draw the data set (``xrayfx data paper``);
2. per backbone: export to ONNX (reused when ``--cache-dir`` already holds it;
   its export time is then read from the sidecar, where it was measured when it
   was made), extract every image into an empty embedding cache, and train the
   paper's head (``xrayfx.study.fit.fit_head``: patient-grouped split, SMOTE on the
   training part, 100 epochs at batch 8);
3. build the report of the four runs (``xrayfx.report.build_report``);
4. again with the cache warm (new heads, same embeddings): what a second study
   on the same images costs.

**The paper's way**, measured per backbone in a child process: the Keras model
= the frozen backbone + the paper's head (Dropout on the feature map → global
average pooling → Dense 128 ReLU with L1/L2 activity regularisation 0.001 →
BatchNorm → Dense 2 softmax; SGD lr 1e-4, momentum 0.5), trained end to end with
``model.fit`` on images held in memory at batch 8. One epoch is timed, after one
untimed training step that builds the graph, and multiplied by 100 (the paper's
epochs). An epoch covers the SMOTE-balanced training part (twice the normal
training images; pixel values do not change the time, so real radiographs are
repeated to that count) plus a forward pass over the validation part, the
sizes ``fit_head``'s own split gives. Decoding the images once is timed apart.

The backbones use random-initialised weights (``--weights none``): ImageNet
weights cannot be downloaded on this offline machine. Times do not depend on
weight values; the report's accuracies are therefore meaningless and are not
quoted.

Example (about 15-25 minutes on 2 cores)::

    .venv/bin/python benchmarks/time_to_table2.py --cache-dir /tmp/t2cache --models-from /tmp/paperexp
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import CXR_MANIFEST, PAPER_MODELS, ROOT, machine_line, md_table, run_child  # noqa: E402

PAPER_WAY = r"""
import json, sys, time
import numpy as np
from concurrent.futures import ThreadPoolExecutor
from xrayfx.models.export import build_keras_backbone
from xrayfx.models.config import model_config
from xrayfx.data.images import load_image
from xrayfx.util import import_keras_quietly
model_name, manifest, n_train, n_val = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
keras = import_keras_quietly()
config = model_config(model_name, "none", 0, preprocess="paper")   # the paper scaled pixels to [0, 1]
import csv
with open(manifest, newline="") as f:
    paths = [r["path"] for r in csv.DictReader(f)]
from pathlib import Path
base = Path(manifest).parent
paths = [p if Path(p).is_absolute() else str(base / p) for p in paths]
t0 = time.perf_counter()
with ThreadPoolExecutor(2) as pool:
    pixels = np.stack(list(pool.map(lambda p: load_image(p, config.preprocessing), paths)))
decode_s = time.perf_counter() - t0
x_all = config.preprocessing.apply(pixels.astype(np.float32))
reps = -(-(n_train + n_val) // len(x_all))
x_all = np.concatenate([x_all] * reps)
x_train, x_val = x_all[:n_train], x_all[n_train:n_train + n_val]
rng = np.random.default_rng(0)
y_train = keras.utils.to_categorical(rng.integers(0, 2, n_train), 2)
y_val = keras.utils.to_categorical(rng.integers(0, 2, n_val), 2)
t0 = time.perf_counter()
spec = config.spec
base_model = spec.build_fn()(include_top=False, weights=None, input_shape=(224, 224, 3),
                             **dict(spec.constructor_kwargs))
base_model.trainable = False
reg = keras.regularizers.L1L2(l1=1e-3, l2=1e-3)
inputs = keras.Input((224, 224, 3))
h = base_model(inputs, training=False)
h = keras.layers.Dropout(spec.dropout)(h)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Dense(128, activation="relu", activity_regularizer=reg)(h)
h = keras.layers.BatchNormalization()(h)
out = keras.layers.Dense(2, activation="softmax", activity_regularizer=reg)(h)
model = keras.Model(inputs, out)
model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-4, momentum=0.5), loss="categorical_crossentropy",
              metrics=["accuracy"])
build_s = time.perf_counter() - t0
t0 = time.perf_counter()
model.train_on_batch(x_train[:8], y_train[:8])     # builds the training graph; not counted
model.test_on_batch(x_val[:8], y_val[:8])
warm_s = time.perf_counter() - t0
t0 = time.perf_counter()
model.fit(x_train, y_train, batch_size=8, epochs=1, validation_data=(x_val, y_val), verbose=0, shuffle=True)
epoch_s = time.perf_counter() - t0
print(json.dumps({"decode_s": decode_s, "build_s": build_s, "graph_s": warm_s, "epoch_s": epoch_s,
                  "n_train": n_train, "n_val": n_val, "n_images_decoded": len(paths)}))
"""


def timed(label: str, fn, log: dict) -> object:
    print(f"{label}…", flush=True)
    t0 = time.perf_counter()
    value = fn()
    log[label] = round(time.perf_counter() - t0, 2)
    print(f"  {log[label]:.1f} s", flush=True)
    return value


def link_models(models_from: Path, cache_dir: Path) -> None:
    """Hard-link existing exports into the cache's models/ (the export time then comes from their sidecars)."""
    (cache_dir / "models").mkdir(parents=True, exist_ok=True)
    for src in (models_from / "models").glob("*"):
        if src.suffix in (".onnx", ".json") and "-int8-" not in src.name and "-fp16" not in src.name:
            dst = cache_dir / "models" / src.name
            if not dst.exists():
                dst.hardlink_to(src)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="/tmp/xrayfx-table2")
    ap.add_argument("--models-from", default=None, help="A cache folder whose exports are reused (hard links).")
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--skip-paper-way", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from xrayfx.models.export import export_model
    from xrayfx.models.config import model_config
    from xrayfx.extraction.pipeline import extract
    from xrayfx.report import build_report
    from xrayfx.study.fit import fit_head

    models = args.models.split(",")
    cache = Path(args.cache_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache / "embeddings", ignore_errors=True)
    shutil.rmtree(cache / "runs", ignore_errors=True)
    if args.models_from:
        link_models(Path(args.models_from), cache)
    steps: dict[str, float] = {}
    manifest = out / "manifests" / "paper.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    timed("data paper", lambda: subprocess.run(
        [sys.executable, "-m", "xrayfx", "data", "paper", "--manifest", str(CXR_MANIFEST), "--seed", "0",
         "-o", str(manifest)], check=True, capture_output=True, cwd=ROOT), steps)

    export_s: dict[str, dict] = {}
    runs = []
    split_sizes = {}
    for m in models:
        config = model_config(m, "none", 0)
        had = config.onnx_path(cache).is_file()
        exported = timed(f"{m}: export", lambda: export_model(config, cache), steps)
        export_s[m] = {"reused": had, "seconds": exported.sidecar["export_seconds"] if had else steps[f"{m}: export"]}
        result = timed(f"{m}: extract", lambda: extract(data=manifest, config=config, cache_dir=cache,
                                                         progress=False), steps)
        print(f"  {result.summary()}")
        run = timed(f"{m}: fit-head", lambda: fit_head(
            data=manifest, config=config, cache_dir=cache, head="paper", head_params={"epochs": args.epochs},
            run_id=f"t2-{m}", progress=False, log=None), steps)
        runs.append(run.path)
        parts = _split_sizes(run, manifest)
        split_sizes[m] = parts
    report = timed("report", lambda: build_report(runs, out=cache / "report", ablation=False, log=None), steps)
    warm: dict[str, float] = {}
    for m in models:
        config = model_config(m, "none", 0)
        timed(f"{m}: fit-head (cache warm)", lambda: fit_head(
            data=manifest, config=config, cache_dir=cache, head="paper", head_params={"epochs": args.epochs},
            run_id=f"t2-{m}-warm", progress=False, log=None), warm)

    paper: dict[str, dict] = {}
    if not args.skip_paper_way:
        for m in models:
            n_train, n_val = split_sizes[m]["train_balanced"], split_sizes[m]["val"]
            print(f"{m}: the paper's way, one epoch of {n_train} + {n_val} images (child process)…", flush=True)
            paper[m] = run_child(PAPER_WAY, m, str(manifest), str(n_train), str(n_val))
            paper[m]["extrapolated_s"] = paper[m]["decode_s"] + paper[m]["build_s"] + args.epochs * paper[m]["epoch_s"]
            print(f"  {paper[m]}", flush=True)

    doc = {"models": models, "epochs": args.epochs, "steps_s": steps, "exports": export_s,
           "warm_cache_s": warm, "split_sizes": split_sizes, "paper_way": paper,
           "report": str(report.markdown), "machine_line": machine_line(),
           "weights": "none (random init; times only)"}
    (out / "time_to_table2.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    return 0


def _split_sizes(run, manifest: Path) -> dict:
    """Train/val/test sizes of a run: predictions.csv lists val and test; train is the rest of the data set."""
    import csv
    from collections import Counter

    with open(run.path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(manifest, newline="") as f:
        total = Counter(r["label"] for r in csv.DictReader(f))
    held = Counter(r["label"] for r in rows)
    train = {label: total[label] - held[label] for label in total}
    return {"train": sum(train.values()), "train_by_label": train, "train_balanced": len(train) * max(train.values()),
            "val": sum(1 for r in rows if r["split"] == "val"), "test": sum(1 for r in rows if r["split"] == "test")}


def markdown(doc: dict) -> str:
    s = doc["steps_s"]
    rows = []
    ours_total = s["data paper"] + s["report"]
    ours_exports = 0.0
    paper_total = 0.0
    for m in doc["models"]:
        e = doc["exports"][m]
        ours = s[f"{m}: extract"] + s[f"{m}: fit-head"]
        ours_total += ours
        ours_exports += e["seconds"]
        p = doc["paper_way"].get(m)
        if p:
            paper_total += p["extrapolated_s"]
        rows.append([
            m, f"{e['seconds']:.0f}" + (" (sidecar)" if e["reused"] else ""), f"{s[f'{m}: extract']:.0f}",
            f"{s[f'{m}: fit-head']:.0f}", f"{doc['warm_cache_s'][f'{m}: fit-head (cache warm)']:.0f}",
            f"{p['epoch_s']:.0f}" if p else "-", f"{p['extrapolated_s'] / 60:.0f} min" if p else "-",
        ])
    table = md_table(["backbone", "export s", "extract s", "fit-head s (100 ep.)", "fit-head, cache warm s",
                      "paper: 1 epoch s", f"paper: {doc['epochs']} epochs"], rows)
    lines = [table, ""]
    lines.append(f"Ours, image files to the report: **{(ours_total) / 60:.1f} min** without exports "
                 f"(data {s['data paper']:.0f} s, report {s['report']:.0f} s), "
                 f"{(ours_total + ours_exports) / 60:.1f} min with the four exports.")
    if paper_total:
        lines.append(f"The paper's way: **{paper_total / 3600:.2f} h** for the four backbones "
                     f"({doc['epochs']} × one measured epoch, plus decoding and model building).")
        lines.append(f"Ratio: **{paper_total / ours_total:.0f}×** (without exports), "
                     f"{paper_total / (ours_total + ours_exports):.0f}× (with exports).")
    lines.append(doc["machine_line"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
