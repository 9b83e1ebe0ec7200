"""Linear probe: how much COVID-vs-normal signal a backbone's frozen features carry.

Cohen COVID-19 images vs NIH normal adults from ../shared/data/cxr (both adult, different
sources: the probe measures disease *and* source signal together — read it as an upper bound),
a patient-grouped 70/30 split, a standardised logistic regression, test AUROC with a 95%
interval from a patient bootstrap. Also prints the extraction throughput of this run.

    python benchmarks/linear_probe.py --model efficientnet-lite0 --weights imagenet
    python benchmarks/linear_probe.py --model mobilenet --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path


from xrayfx.study.heads import make_head
from xrayfx.metrics import bootstrap_auroc, roc_auc
from xrayfx.extraction.pipeline import extract
from xrayfx.study.splits import make_holdout_split

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr"


def probe_manifest(out: Path, limit: int | None) -> Path:
    """Cohen COVID rows and NIH normal rows of the shared manifest, absolute paths."""
    with open(CXR / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if (r["source"], r["label"]) in (("cohen", "covid"), ("nih", "normal"))]
    if limit:
        covid = [r for r in rows if r["label"] == "covid"][: limit // 2]
        normal = [r for r in rows if r["label"] == "normal"][: limit - len(covid)]
        rows = covid + normal
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "path": str(CXR / r["path"])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="xrayfx-probe-"))
    cache.mkdir(parents=True, exist_ok=True)
    manifest = probe_manifest(cache / "probe.csv", args.limit)
    res = extract(model=args.model, data=manifest, weights=args.weights, cache_dir=cache, progress=True)
    y = res.labels
    patients = res.column("patient_id")
    split = make_holdout_split(res.ids, y, patients, seed=args.seed)
    train, test = split.rows("train"), split.rows("test")
    head = make_head("logreg").fit(res.embeddings[train], y[train])
    p = head.predict_proba(res.embeddings[test])[:, list(head.classes_).index("covid")]
    truth = y[test] == "covid"
    ci = bootstrap_auroc(truth, p, patients[test], n_resamples=2000, seed=args.seed)
    print(f"model {args.model} ({res.config.weights.describe()})")
    print(f"images {len(res.ids)} (covid {int((y == 'covid').sum())}, normal {int((y == 'normal').sum())}); "
          f"test {len(test)} images of {len(set(patients[test]))} patients")
    if res.n_new:
        print(f"extraction: {res.n_new} images in {res.seconds:.1f} s = {res.images_per_s:.1f} images/s (end to end)")
    print(f"linear probe test AUROC {roc_auc(truth, p):.3f} "
          f"(95% CI {ci['lo']:.3f}-{ci['hi']:.3f}, patient bootstrap, {ci['n_resamples']} resamples)")


if __name__ == "__main__":
    main()
