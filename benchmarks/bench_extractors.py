"""Questions 1, 4 and 5 of issue 7, measured side by side in one run.

For the paper's four backbones (random-init weights: speed does not depend on
the weights' values), at batch 1 and 32: onnxruntime fp32 against Keras, and the
CPU variants (onnxruntime int8, OpenVINO fp32 and bf16) against onnxruntime
fp32, all interleaved repeat by repeat (``xrayfx.bench``), timed on real
radiographs held out from the int8 calibration set, with cosine similarity of
each variant's embeddings to onnxruntime fp32 on those images.

The int8 variants are made first, each in a child process (quantising takes a
few GB that would otherwise stay in the measuring process).

Example (the run quoted in RESULTS.md; exports reused from --cache-dir)::

    .venv/bin/python benchmarks/bench_extractors.py --cache-dir /tmp/paperexp --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import PAPER_MODELS, calibration_and_held_out, machine_line, md_table, run_child  # noqa: E402

QUANTISE = """
import json, sys
from xrayfx.models.export import export_model
from xrayfx.models.config import model_config
from xrayfx.models.quantize import ensure_int8
c = model_config(sys.argv[1], 'none', 0)
v = ensure_int8(export_model(c, sys.argv[2]), calibration=sys.argv[3])
print(json.dumps({'file': v.path.name, 'seconds': v.sidecar['seconds'], 'peak_rss_mb': v.sidecar['peak_rss_mb'],
                  'n_images': v.sidecar['calibration']['n_images']}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    ap.add_argument("--precisions", default="fp32,int8,bf16")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="Skip the Keras baseline.")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from xrayfx.bench import plan_bench, render_table, run_bench, write_json
    from rich.console import Console

    console = Console(width=160)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calibration, held_out = calibration_and_held_out(out / "manifests")
    plan = plan_bench(args.models, args.runtimes, "cpu", args.precisions, args.batch_sizes, args.repeats, 2,
                      None if args.no_baseline else "keras")
    quantised = {}
    if any(p == "int8" for _, _, p in plan.combos):
        for m in plan.models:
            console.print(f"int8 variant of {m} (child process)…")
            quantised[m] = run_child(QUANTISE, m, args.cache_dir, str(calibration))
            console.print(f"  {quantised[m]}")
    doc = run_bench(plan, weights="none", seed=0, cache_dir=args.cache_dir, data=held_out, calibration=calibration,
                    log=console.print)
    doc["quantisation"] = quantised
    doc["machine_line"] = machine_line()
    write_json(doc, out / "bench_extractors.json")
    console.print(render_table(doc))
    console.print(summary_markdown(doc))
    return 0


def summary_markdown(doc: dict) -> str:
    """The tables RESULTS.md quotes: ORT vs Keras, and each CPU variant vs ORT fp32 (ratios from this one run)."""
    recs = doc["records"]
    by = {(r["model"], r["runtime"], r["precision"], r["batch_size"]): r for r in recs}
    models = list(dict.fromkeys(r["model"] for r in recs))
    sizes = sorted({r["batch_size"] for r in recs})
    rows = []
    for m in models:
        for b in sizes:
            r = by.get((m, "onnxruntime", "fp32", b))
            if r and r.get("ratio_vs_baseline"):
                rows.append([m, b, f"{r['images_per_s']['median']:.1f}", f"{r['baseline_images_per_s']:.1f}",
                             f"**{r['ratio_vs_baseline']:.2f}×**", f"{r['latency_ms']['p50']:.0f}",
                             f"{r['baseline_detail']['latency_ms']['p50']:.0f}", f"{r['gflops']:.0f}",
                             f"{r['roofline_fraction']:.0%}"])
    parts = []
    if rows:
        parts.append(md_table(["backbone", "batch", "onnxruntime img/s", "Keras img/s", "ratio", "ORT p50 ms",
                               "Keras p50 ms", "ORT GFLOP/s", "of matmul"], rows))
    rows = []
    for m in models:
        for b in sizes:
            ref = by.get((m, "onnxruntime", "fp32", b))
            for (runtime, precision) in (("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16")):
                r = by.get((m, runtime, precision, b))
                if not (r and ref):
                    continue
                cos = r.get("cosine_vs_fp32") or {}
                rows.append([m, b, f"{runtime} {precision}", f"{r['images_per_s']['median']:.1f}",
                             f"{ref['images_per_s']['median']:.1f}",
                             f"**{r['images_per_s']['median'] / ref['images_per_s']['median']:.2f}×**",
                             f"{cos.get('min', float('nan')):.5f}", f"{cos.get('mean', float('nan')):.5f}",
                             f"{r['peak_rss_mb']:.0f}"])
    if rows:
        parts.append(md_table(["backbone", "batch", "variant", "img/s", "ORT fp32 img/s", "speed-up",
                               "cos min", "cos mean", "peak MiB"], rows))
    mm = doc["machine"]["matmul"]["cpu/fp32"]
    start, end = mm.get("start", mm), mm.get("end", mm)
    parts.append(
        f"Machine matrix-product rate: {mm['gflops']} GFLOP/s ({mm['how']}); numpy {start['numpy']['gflops']} / "
        f"{end['numpy']['gflops']}, onnxruntime MLAS {start['onnxruntime']['gflops']} / "
        f"{end['onnxruntime']['gflops']} GFLOP/s (before / after). Load average (1, 5, 15 min) before "
        f"{doc['machine'].get('loadavg_start')}, after {doc['machine'].get('loadavg_end')}. "
        f"{doc.get('machine_line', '')}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--summarise":
        print(summary_markdown(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit(0)
    sys.exit(main())
