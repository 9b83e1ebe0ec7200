"""Is lower precision harmless? Fidelity, downstream AUROC and speed with real weights (issues 7 and 14).

Backbones with real ImageNet weights: MobileNet alpha 0.25 (../shared/weights)
and EfficientNet-Lite0 (the installed package's weights). Data: the Cohen COVID-19
radiographs against the NIH normals of ../shared/data/cxr, split by patient
(``make_holdout_split``, 30 % test). For each variant:

* embedding cosine similarity to onnxruntime fp32 on the held-out (test)
  radiographs, minimum and mean;
* the AUROC, with its patient-bootstrap 95 % interval, of one logistic-regression
  head trained on the fp32 embeddings of the training part and scored on the
  variant's test embeddings (the same head: only the embeddings change), whether
  it lies inside fp32's interval, and how many test decisions at 0.5 flip;
* its speed against onnxruntime fp32 at batch 32, measured side by side in this
  run: every variant and fp32 are timed once per repeat, in rotating order, and
  the ratio of the medians is reported (the machine is shared: absolute numbers
  move, ratios measured together much less).

int8 variants: the default recipe (``xrayfx.models.quantize.DEFAULT_INT8_RECIPE``:
MinMax ranges, per-channel weights, bias correction) and, with ``--recipes all``
(the default), one change at a time: no bias correction (the recipe before issue
14), Entropy and Percentile calibration, 256 calibration images instead of 64,
``reduce_range``, and depthwise / first+last convolutions kept in float. They are
calibrated on the first radiographs of the training part (never the test part).
fp16 is a GPU precision: with no GPU here its embeddings come from onnxruntime's
CPU provider running the fp16 graph, which checks the conversion, not a GPU's
arithmetic (its speed is not a GPU's either).

Example::

    .venv/bin/python benchmarks/bench_precision.py --cache-dir /tmp/xb --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import MOBILENET_WEIGHTS, machine_line, md_table, shared_rows  # noqa: E402

#: int8 recipes: name -> (Int8Recipe fields changed from the default, calibration images).
INT8_RECIPES = {
    "int8": ({}, 64),
    "int8 no bias correction": ({"bias_correction": False}, 64),
    "int8 Entropy": ({"method": "Entropy"}, 64),
    "int8 Percentile": ({"method": "Percentile"}, 64),
    "int8 256 images": ({}, 256),
    "int8 reduce_range": ({"reduce_range": True}, 64),
    "int8 depthwise in float": ({"keep_float": ("depthwise",)}, 64),
    "int8 first+last conv in float": ({"keep_float": ("first-conv", "last-conv")}, 64),
}
OTHER_VARIANTS = (("onnxruntime", "fp16"), ("openvino", "fp32"), ("openvino", "bf16"))
BATCH = 32


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(fn, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def speed_ratios(fns: dict, batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each function, timed once per repeat in rotating order; fp32 first key."""
    for fn in fns.values():
        fn(batch)  # warm-up
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            fns[k](batch)
            times[k].append(time.perf_counter() - t0)
    ref = float(np.median(times[keys[0]]))
    return {k: ref / float(np.median(v)) for k, v in times.items()}


def build_variants(exported, images, ids, train, recipes: list[str], log) -> tuple[dict, dict]:
    """Extractors of every variant (fp32 first) and what made each int8 one."""
    import dataclasses

    import onnxruntime as ort

    from xrayfx.models.quantize import DEFAULT_INT8_RECIPE, ensure_fp16, quantize_int8
    from xrayfx.inference.runtimes import make_extractor

    fns = {"onnxruntime fp32": make_extractor(exported, "onnxruntime", "fp32", "cpu")}
    made = {}
    for name in recipes:
        changes, n_cal = INT8_RECIPES[name]
        recipe = dataclasses.replace(DEFAULT_INT8_RECIPE, **changes)
        cal = train[:n_cal]
        t0 = time.perf_counter()
        variant = quantize_int8(exported, images[cal], [ids[i] for i in cal], recipe=recipe, log=log)
        fns[f"onnxruntime {name}"] = make_extractor(exported, "onnxruntime", "int8", "cpu", model_path=variant.path)
        made[f"onnxruntime {name}"] = {"file": variant.path.name, "recipe": recipe.settings(),
                                       "calibration_images": len(cal), "seconds": round(time.perf_counter() - t0, 1)}
    fp16 = ensure_fp16(exported)
    for runtime, precision in OTHER_VARIANTS:
        if precision == "fp16":
            session = ort.InferenceSession(str(fp16.path), providers=["CPUExecutionProvider"])
            fns["onnxruntime fp16"] = lambda x, s=session: s.run(None, {"image": x})[0]  # noqa: E731
        else:
            fns[f"{runtime} {precision}"] = make_extractor(exported, runtime, precision, "cpu")
    return fns, made


def fidelity(model: str, weights: str, rows: list[dict], cache_dir: Path, args) -> dict:
    from xrayfx.models.export import export_model
    from xrayfx.models.config import model_config
    from xrayfx.study.heads import make_head
    from xrayfx.data.images import load_image
    from xrayfx.metrics import bootstrap_auroc
    from xrayfx.study.splits import make_holdout_split
    from xrayfx.util import sha256_file

    config = model_config(model, weights)
    exported = export_model(config, cache_dir)
    ids = [sha256_file(r["path"]) for r in rows]
    labels = np.array([r["label"] for r in rows])
    patients = np.array([r["patient_id"] for r in rows])
    split = make_holdout_split(ids, labels, patients, test_size=0.3, val_size=0.15, seed=0)
    part = np.asarray(split.split)
    train = np.flatnonzero(part != "test")  # train + val: the head has no early stopping to use val for
    test = np.flatnonzero(part == "test")
    with ThreadPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(lambda r: load_image(r["path"], config.preprocessing), rows)))
    recipes = list(INT8_RECIPES) if args.recipes == "all" else ["int8"]
    fns, made = build_variants(exported, images, ids, train, recipes, log=lambda m: print(m, flush=True))
    y = (labels == "covid").astype(int)
    ref_all = embed(fns["onnxruntime fp32"], images)
    head = make_head("logreg").fit(ref_all[train], labels[train])
    pos = list(head.classes_).index("covid")
    ref = ref_all[test]
    p_ref = head.predict_proba(ref)[:, pos]
    speed = speed_ratios(fns, images[test[:BATCH]], args.repeats)
    results = {}
    for key, fn in fns.items():
        e = ref if key == "onnxruntime fp32" else embed(fn, images[test])
        cos = cosine(ref, e)
        p = head.predict_proba(e)[:, pos]
        auroc = bootstrap_auroc(y[test], p, patients[test], n_resamples=args.resamples, seed=0)
        results[key] = {
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "flips": int(np.sum((p >= 0.5) != (p_ref >= 0.5))),
            "auroc": float(auroc["value"]), "auroc_ci": [float(auroc["lo"]), float(auroc["hi"])],
            "speedup_vs_fp32": round(speed[key], 3), **({"int8": made[key]} if key in made else {}),
        }
    lo, hi = results["onnxruntime fp32"]["auroc_ci"]
    for r in results.values():
        r["inside_fp32_interval"] = bool(lo <= r["auroc"] <= hi)
    return {
        "model": model, "weights": weights, "n_images": len(rows), "n_train": len(train), "n_test": len(test),
        "n_test_patients": len(set(patients[test])), "n_test_covid": int(y[test].sum()),
        "speed": f"batch {BATCH}, median of {args.repeats} interleaved repeats, ratio to onnxruntime fp32",
        "fp16_note": "onnxruntime CPU provider running the fp16 graph (no GPU)",
        "variants": results,
    }


def goal_met(r: dict) -> bool:
    """Issue 14's goal for an int8 variant: cosine mean >= 0.99, AUROC inside fp32's interval, >= 1.8x fp32."""
    return r["cos_mean"] >= 0.99 and r["inside_fp32_interval"] and r["speedup_vs_fp32"] >= 1.8


def markdown(doc: dict) -> str:
    rows = []
    for m in doc["models"]:
        for key, r in m["variants"].items():
            verdict = "reference" if key == "onnxruntime fp32" else (
                "inside" if r["inside_fp32_interval"] else "**LEAVES fp32's interval**")
            rows.append([m["model"], key + (" (CPU-run)" if key.endswith("fp16") else ""),
                         f"{r['cos_mean']:.4f}", f"{r['cos_min']:.4f}", r["flips"],
                         f"{r['auroc']:.4f} [{r['auroc_ci'][0]:.4f}, {r['auroc_ci'][1]:.4f}]", verdict,
                         f"{r['speedup_vs_fp32']:.2f}×",
                         ("yes" if goal_met(r) else "no") if "int8" in key else ""])
    head = doc["models"][0]
    text = md_table(["backbone", "variant", "cos mean", "cos min", "flips at 0.5", "AUROC, fp32 head [95% CI]",
                     "vs fp32 interval", "speed vs ORT fp32 (batch 32)", "issue-14 goal"], rows)
    return (f"{text}\n\nTest part: {head['n_test']} radiographs ({head['n_test_covid']} COVID, "
            f"{head['n_test_patients']} patients) of {head['n_images']}; {doc['resamples']} patient-bootstrap "
            f"resamples; speed: {head['speed']}. {doc['machine_line']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="/tmp/xrayfx-bench-precision")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--json", default=None, help="where to write the JSON (default OUT/bench_precision.json)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats (median)")
    ap.add_argument("--recipes", choices=("all", "default"), default="all",
                    help="int8 recipes: the default one only, or all the compared ones")
    ap.add_argument("--models", default="mobilenet,efficientnet-lite0")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in shared_rows() if (r["source"], r["label"]) in (("cohen", "covid"), ("nih", "normal"))]
    doc = {"data": "cohen covid vs nih normal, ../shared/data/cxr", "resamples": args.resamples,
           "machine_line": machine_line(), "models": []}
    weights = {"mobilenet": str(MOBILENET_WEIGHTS), "efficientnet-lite0": "imagenet"}
    for model in args.models.split(","):
        print(f"{model}: embedding {len(rows)} radiographs…", flush=True)
        doc["models"].append(fidelity(model, weights[model], rows, Path(args.cache_dir), args))
    path = Path(args.json) if args.json else out / "bench_precision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
