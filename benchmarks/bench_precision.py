"""Question 4 and 5 of issue 7: is lower precision harmless? Fidelity and downstream AUROC with real weights.

Backbones with real ImageNet weights: MobileNet alpha 0.25 (../shared/weights)
and EfficientNet-Lite0 (the installed package's weights). Data: the Cohen COVID-19
radiographs against the NIH normals of ../shared/data/cxr, split by patient
(``make_holdout_split``, 30 % test). For each variant:

* embedding cosine similarity to onnxruntime fp32 on the held-out (test)
  radiographs, minimum and mean;
* the AUROC, with its patient-bootstrap 95 % interval, of one logistic-regression
  head trained on the fp32 embeddings of the training part and scored on the
  variant's test embeddings (the same head: only the embeddings change), and,
  for reference, of a head retrained on the variant's own training embeddings;
* a verdict: a variant whose AUROC leaves fp32's interval is reported as such.

The int8 variant is calibrated on the first 64 radiographs of the training part
(never on the test part). fp16 is a GPU precision: with no GPU here, its
embeddings come from onnxruntime's CPU provider running the fp16 graph, which
checks the conversion, not a GPU's arithmetic.

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

from _bench_common import MOBILENET_WEIGHTS, machine_line, md_table, shared_rows, write_rows  # noqa: E402

VARIANTS = (
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("onnxruntime", "fp16"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(fn, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def fidelity(model: str, weights: str, rows: list[dict], cache_dir: Path, out: Path, resamples: int) -> dict:
    import onnxruntime as ort

    from xrayfx.export import export_model
    from xrayfx.modelconfig import model_config
    from xrayfx.heads import make_head
    from xrayfx.images import load_image
    from xrayfx.metrics import bootstrap_auroc
    from xrayfx.quantize import ensure_fp16, ensure_int8
    from xrayfx.runtimes import make_extractor
    from xrayfx.splits import make_holdout_split
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
    cal_manifest = write_rows(out / "manifests" / f"{model}-calibration.csv", [rows[i] for i in train[:64]])
    int8 = ensure_int8(exported, calibration=cal_manifest)
    fp16 = ensure_fp16(exported)
    y = (labels == "covid").astype(int)

    embs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for runtime, precision in VARIANTS:
        key = f"{runtime} {precision}"
        if precision == "fp16":
            session = ort.InferenceSession(str(fp16.path), providers=["CPUExecutionProvider"])
            fn = lambda x, s=session: s.run(None, {"image": x})[0]  # noqa: E731
        else:
            fn = make_extractor(exported, runtime, precision, "cpu",
                                model_path=int8.path if precision == "int8" else None)
        t0 = time.perf_counter()
        embs[key] = embed(fn, images)
        seconds[key] = time.perf_counter() - t0

    ref = embs["onnxruntime fp32"]
    head = make_head("logreg").fit(ref[train], labels[train])
    pos = list(head.classes_).index("covid")
    results = {}
    for key, e in embs.items():
        cos = cosine(ref[test], e[test])
        p_same = head.predict_proba(e[test])[:, pos]
        same = bootstrap_auroc(y[test], p_same, patients[test], n_resamples=resamples, seed=0)
        own_head = make_head("logreg").fit(e[train], labels[train])
        p_own = own_head.predict_proba(e[test])[:, list(own_head.classes_).index("covid")]
        own = bootstrap_auroc(y[test], p_own, patients[test], n_resamples=resamples, seed=0)
        results[key] = {
            "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "auroc_same_head": same, "auroc_own_head": own, "embed_seconds": round(seconds[key], 2),
            "prediction_flips": int(np.sum((p_same >= 0.5) != (head.predict_proba(ref[test])[:, pos] >= 0.5))),
        }
    lo, hi = results["onnxruntime fp32"]["auroc_same_head"]["lo"], results["onnxruntime fp32"]["auroc_same_head"]["hi"]
    for key, r in results.items():
        v = r["auroc_same_head"]["value"]
        r["inside_fp32_interval"] = bool(lo <= v <= hi)
    return {
        "model": model, "weights": weights, "n_images": len(rows), "n_train": len(train), "n_test": len(test),
        "n_test_patients": len(set(patients[test])), "n_test_covid": int(y[test].sum()),
        "int8_file": int8.path.name, "int8_calibration_images": int8.sidecar["calibration"]["n_images"],
        "fp16_note": "onnxruntime CPU provider running the fp16 graph (no GPU)",
        "variants": results,
    }


def markdown(doc: dict) -> str:
    rows = []
    for m in doc["models"]:
        for key, r in m["variants"].items():
            s, o = r["auroc_same_head"], r["auroc_own_head"]
            verdict = "reference" if key == "onnxruntime fp32" else (
                "inside" if r["inside_fp32_interval"] else "**LEAVES fp32's interval**")
            rows.append([m["model"], key + (" (CPU-run)" if key.endswith("fp16") else ""),
                         f"{r['cos_min']:.5f}", f"{r['cos_mean']:.5f}",
                         f"{s['value']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]", r["prediction_flips"],
                         f"{o['value']:.4f} [{o['lo']:.4f}, {o['hi']:.4f}]", verdict])
    head = doc["models"][0]
    text = md_table(["backbone", "variant", "cos min", "cos mean", "AUROC, same head [95% CI]", "flips at 0.5",
                     "AUROC, own head [95% CI]", "vs fp32 interval"], rows)
    return (f"{text}\n\nTest part: {head['n_test']} radiographs ({head['n_test_covid']} COVID, "
            f"{head['n_test_patients']} patients) of {head['n_images']}; {doc['resamples']} patient-bootstrap "
            f"resamples. {doc['machine_line']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in shared_rows() if (r["source"], r["label"]) in (("cohen", "covid"), ("nih", "normal"))]
    doc = {"data": "cohen covid vs nih normal, ../shared/data/cxr", "resamples": args.resamples,
           "machine_line": machine_line(), "models": []}
    for model, weights in (("mobilenet", str(MOBILENET_WEIGHTS)), ("efficientnet-lite0", "imagenet")):
        print(f"{model}: embedding {len(rows)} radiographs with {len(VARIANTS)} variants…", flush=True)
        doc["models"].append(fidelity(model, weights, rows, Path(args.cache_dir), out, args.resamples))
    (out / "bench_precision.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
