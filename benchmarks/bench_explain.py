"""Speed of occlusion maps (`xrayfx explain`): images/s per backbone, with the 8×8 grid and the deletion test.

Each backbone is exported (mobilenet with the shared ImageNet weights, efficientnet-lite0 with its packaged
ImageNet weights, the paper's backbones random-init: speed does not depend on the weights' values) and scored
by a logistic-regression head fitted on a few real embeddings, so the timing covers exactly what explain does
per image: decode, N²+1 occluded copies resized and embedded in one batch, the deletion test's copies in a
second batch, the head. The load average is recorded before and after.

Example: .venv/bin/python benchmarks/bench_explain.py --cache-dir /tmp/explain-bench --images 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench_common import MOBILENET_WEIGHTS, PAPER_MODELS, md_table, shared_rows  # noqa: E402


def scorer_for(model: str, cache_dir: Path, fit_paths: list[str]):
    """A RunScorer over a fresh export of ``model`` and a logreg head fitted on ``fit_paths`` (covid vs normal)."""
    from sklearn.linear_model import LogisticRegression

    from xrayfx.models.config import model_config
    from xrayfx.models.export import export_model
    from xrayfx.inference.runtimes import make_extractor
    from xrayfx.study.explain import RunScorer, decoded, network_batch

    weights = str(MOBILENET_WEIGHTS) if model == "mobilenet" else ("imagenet" if model == "efficientnet-lite0"
                                                                   else "none")
    config = model_config(model, weights=weights)
    exported = export_model(config, cache_dir)
    extractor = make_extractor(exported, "onnxruntime", "fp32", "cpu")
    batch = network_batch([decoded(p, config.preprocessing) for p, _ in fit_paths], config.preprocessing)
    head = LogisticRegression(max_iter=2000).fit(extractor(batch), [label for _, label in fit_paths])
    return RunScorer(run_id=f"bench-{model}", extractor=extractor, heads={-1: head}, classes=["covid", "normal"],
                     positive="covid", negative="normal", threshold=0.5, preprocessing=config.preprocessing,
                     backbone=model, runtime="onnxruntime", precision="fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet,efficientnet-lite0," + ",".join(PAPER_MODELS))
    ap.add_argument("--images", type=int, default=32, help="images explained per backbone (mobilenet, lite0)")
    ap.add_argument("--paper-images", type=int, default=4, help="images explained per paper backbone")
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/xrayfx-bench-explain"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/explain.json"))
    args = ap.parse_args()

    from xrayfx.study.explain import explain_images

    rows = shared_rows()
    covid = [r["path"] for r in rows if r["label"] == "covid"]
    normal = [r["path"] for r in rows if r["label"] == "normal"]
    fit = [(p, "covid") for p in covid[:8]] + [(p, "normal") for p in normal[:8]]
    held = [p for pair in zip(covid[100:], normal[500:]) for p in pair]
    results = []
    for model in args.models.split(","):
        n = args.paper_images if model in PAPER_MODELS else args.images
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        scorer = scorer_for(model, args.cache_dir, fit)
        setup = time.perf_counter() - t0
        explain_images(scorer, held[:1], grid=args.grid)  # warm-up
        res = explain_images(scorer, held[:n], grid=args.grid)
        load1 = os.getloadavg()
        copies = n * (args.grid ** 2 + 1 + (res.draws + 1) * (args.grid ** 2 // 4 - 1))
        results.append({
            "model": model, "images": n, "grid": args.grid, "draws": res.draws, "seconds": round(res.seconds, 2),
            "images_per_s": round(n / res.seconds, 3), "copies_embedded": copies,
            "copies_per_s": round(copies / res.seconds, 1), "setup_s": round(setup, 1),
            "loadavg_start": load0[0], "loadavg_end": load1[0],
            "summary": res.summary(),
        })
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(md_table(["backbone", "images", "grid", "seconds", "images/s", "copies/s", "load avg start/end"],
                   [[r["model"], r["images"], f"{r['grid']}×{r['grid']}", r["seconds"], r["images_per_s"],
                     r["copies_per_s"], f"{r['loadavg_start']:.1f} / {r['loadavg_end']:.1f}"] for r in results]))


if __name__ == "__main__":
    main()
