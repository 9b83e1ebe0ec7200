"""Internal test vs `xrayfx evaluate` on patient-grouped hold-outs made from ../shared/data/cxr.

Two settings, each trained on part of the patients of two sources:

* ``paper``: Cohen COVID-19 (adults) vs Mooney normals (children), the paper's confounded setting;
* ``adult``: Cohen COVID-19 vs NIH normals (adults).

For each setting this script writes, under WORK/manifests/:

* ``<setting>-train.csv`` — what fit-head trains, validates and tests on (its own internal split);
* ``<setting>-holdout.csv`` — new patients of the same two sources (never seen by fit-head);
* ``<setting>-outside.csv`` — the other setting's normals (NIH adults for ``paper``, Mooney
  children for ``adult``): one class, so only specificity is defined.

Hold-out patients are drawn per source by a seeded hash of the split group, so both settings hold
out the same Cohen patients. Groups follow patient ids, byte-identical files and near-duplicate
images (:mod:`xrayfx.study.groups`), so cohen-97/cohen-178 cannot straddle train and hold-out.

Then, unless ``--manifests-only``: ``xrayfx fit-head`` for every model (mobilenet with the shared
weights, efficientnet-lite0 with ImageNet weights) and head (paper, logreg), ``xrayfx evaluate
--run RUN --data MANIFEST --name holdout|outside`` and ``xrayfx report RUN``, and a table of the
internal test and each evaluation from the runs' ``metrics.json`` files.

    PYTHONPATH=$PWD python benchmarks/external.py --manifests-only
    PYTHONPATH=$PWD python benchmarks/external.py --work /tmp/xrayfx-external
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.data.neardup import hash_cache_path, near_duplicate_pairs, perceptual_hashes
from xrayfx.splits import group_codes
from xrayfx.study.groups import cross_group_pairs, merge_linked_groups
from xrayfx.util import sha256_file

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr"
MOBILENET_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
#: setting -> (source, label) pairs it trains on, and the (source, label) of its outside set.
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"train": (("cohen", "covid"), ("mooney", "normal")), "outside": ("nih", "normal")},
    "adult": {"train": (("cohen", "covid"), ("nih", "normal")), "outside": ("mooney", "normal")},
}
MODELS = {"mobilenet": str(MOBILENET_WEIGHTS), "efficientnet-lite0": "imagenet"}
HEADS = ("paper", "logreg")


def read_rows() -> list[dict[str, str]]:
    """Rows of the shared manifest with absolute paths."""
    with open(CXR / "manifest.csv", newline="") as f:
        return [{**r, "path": str(CXR / r["path"])} for r in csv.DictReader(f)]


def split_groups(rows: list[dict[str, str]], cache_dir: Path) -> list[str]:
    """One group key per row: patient ids merged through byte-identical files and near-duplicates."""
    paths = [r["path"] for r in rows]
    image = [sha256_file(p) for p in paths]
    patient = [r.get("patient_id", "") for r in rows]
    hashes = perceptual_hashes(paths, sha256s=image, cache_file=hash_cache_path(cache_dir))
    links = cross_group_pairs(image, patient, hashes)
    merged = merge_linked_groups(image, patient, [(k.row_a, k.row_b) for k in links])
    codes = group_codes(np.array(image), merged)
    key: dict[int, str] = {}
    for c, pid, img in sorted(zip(codes.tolist(), merged.tolist(), image)):
        key.setdefault(c, pid or img)  # the smallest (patient id or image id) of the group names it
    return [key[c] for c in codes.tolist()]


def held_out(group: str, seed: int, fraction: float) -> bool:
    """Seeded, platform-independent draw of a group into the hold-out."""
    return int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) < fraction * 2**32


def check_apart(setting: str, train: list[dict[str, str]], hold: list[dict[str, str]], cache_dir: Path) -> None:
    """Stop unless training and hold-out share no patient id, no file and no near-duplicate image."""
    pids = {r["patient_id"] for r in train if r["patient_id"]} & {r["patient_id"] for r in hold if r["patient_id"]}
    sha_t, sha_h = ([sha256_file(r["path"]) for r in rows] for rows in (train, hold))
    files = set(sha_t) & set(sha_h)
    h_t, h_h = (perceptual_hashes([r["path"] for r in rows], sha256s=sha, cache_file=hash_cache_path(cache_dir))
                for rows, sha in ((train, sha_t), (hold, sha_h)))
    near = near_duplicate_pairs(h_h, h_t)
    print(f"{setting}: train vs hold-out share {len(pids)} patient ids, {len(files)} files, "
          f"{len(near)} near-duplicate pairs")
    if pids or files or near:
        raise SystemExit(f"{setting}: the hold-out overlaps training; fix the grouping before evaluating")


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def make_manifests(work: Path, seed: int, fraction: float) -> dict[str, dict[str, Path]]:
    """Write the train, hold-out and outside manifests of every setting; print their counts."""
    rows = read_rows()
    groups = split_groups(rows, work / "hash-cache")
    out: dict[str, dict[str, Path]] = {}
    for setting, spec in SETTINGS.items():
        picked = [(r, g) for r, g in zip(rows, groups) if (r["source"], r["label"]) in spec["train"]]
        train = [r for r, g in picked if not held_out(g, seed, fraction)]
        hold = [r for r, g in picked if held_out(g, seed, fraction)]
        train_groups = {g for r, g in picked if not held_out(g, seed, fraction)}
        outside_all = [(r, g) for r, g in zip(rows, groups) if (r["source"], r["label"]) == spec["outside"]]
        outside = [r for r, g in outside_all if g not in train_groups]
        if len(outside) < len(outside_all):
            print(f"{setting}: {len(outside_all) - len(outside)} outside image(s) share a group with training "
                  "rows (near-duplicates) and were left out")
        check_apart(setting, train, hold, work / "hash-cache")
        out[setting] = {
            "train": write_csv(work / "manifests" / f"{setting}-train.csv", train),
            "holdout": write_csv(work / "manifests" / f"{setting}-holdout.csv", hold),
            "outside": write_csv(work / "manifests" / f"{setting}-outside.csv", outside),
        }
    print(f"{'manifest':<22} {'images':>7} {'patients':>9}  by source/label")
    for setting, files in out.items():
        for name, path in files.items():
            with open(path, newline="") as f:
                got = list(csv.DictReader(f))
            counts = Counter(f"{r['source']}/{r['label']}" for r in got)
            print(f"{setting + '-' + name:<22} {len(got):>7} {len({r['patient_id'] for r in got}):>9}  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return out


def xrayfx(*args: str) -> int:
    """Run ``python -m xrayfx ARGS`` from the repository root, echoing the command."""
    print("+ xrayfx " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "xrayfx", *args], cwd=ROOT).returncode


def has_evaluate() -> bool:
    return subprocess.run([sys.executable, "-m", "xrayfx", "evaluate", "--help"], cwd=ROOT,
                          capture_output=True).returncode == 0


def run_all(manifests: dict[str, dict[str, Path]], work: Path, models: list[str], heads: list[str]) -> list[Path]:
    """fit-head, evaluate (hold-out and outside) and report for every setting, model and head."""
    cache = work / "cache"
    evaluate = has_evaluate()
    if not evaluate:
        print("xrayfx evaluate is not available in this checkout: runs are trained and reported only")
    runs = []
    for setting, files in manifests.items():
        for model in models:
            for head in heads:
                run = cache / "runs" / f"{setting}-{model}-{head}"
                if not run.exists() and xrayfx("fit-head", "--model", model, "--weights", MODELS[model],
                                               "--data", str(files["train"]), "--head", head, "--cache-dir",
                                               str(cache), "--run-id", run.name) != 0:
                    print(f"fit-head failed for {run.name}; skipped")
                    continue
                runs.append(run)
                if evaluate:
                    for name in ("holdout", "outside"):
                        xrayfx("evaluate", "--run", str(run), "--data", str(files[name]), "--name", name, "--force")
                xrayfx("report", str(run), "--cache-dir", str(cache))
    return runs


def _num(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci")
    if isinstance(ci, dict):
        ci = [ci.get("lo"), ci.get("hi")]
    if not ci or None in ci:
        return ""
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def internal_test(run: Path) -> dict[str, Any]:
    """The internal test part's metrics from RUN/metrics.json, whatever its exact layout."""
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics.get("test") or metrics.get("holdout", {}).get("test") or {}
    test = dict(test) if isinstance(test, dict) else {}
    conf = test.get("confusion") or (test.get("youden") or {}).get("confusion")  # at the shipped threshold
    if "sensitivity" not in test and isinstance(conf, dict) and {"tp", "fn", "tn", "fp"} <= set(conf):
        pos, neg = conf["tp"] + conf["fn"], conf["tn"] + conf["fp"]
        test["sensitivity"] = conf["tp"] / pos if pos else None
        test["specificity"] = conf["tn"] / neg if neg else None
    return test


def table(runs: list[Path]) -> None:
    """AUROC with interval, sensitivity and specificity: internal test, then each evaluation."""
    print(f"\n{'run':<32} {'set':<9} {'n':>5} {'AUROC [95% CI]':>22} {'sens':>6} {'spec':>6}")
    for run in runs:
        t = internal_test(run)
        print(f"{run.name:<32} {'internal':<9} {t.get('n', ''):>5} "
              f"{_num(t.get('auroc')) + _ci(t, 'auroc'):>22} {_num(t.get('sensitivity')):>6} "
              f"{_num(t.get('specificity')):>6}")
        for m_file in sorted((run / "evaluations").glob("*/metrics.json")):
            m = json.loads(m_file.read_text())
            print(f"{'':<32} {m_file.parent.name:<9} {m.get('n', ''):>5} "
                  f"{_num(m.get('auroc')) + _ci(m, 'auroc'):>22} {_num(m.get('sensitivity')):>6} "
                  f"{_num(m.get('specificity')):>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/xrayfx-external", help="manifests, cache and runs go here")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hold-out draw")
    ap.add_argument("--holdout-fraction", type=float, default=0.25, help="share of patient groups held out")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--manifests-only", action="store_true", help="write and count the manifests, then stop")
    args = ap.parse_args()
    work = Path(args.work)
    manifests = make_manifests(work, args.seed, args.holdout_fraction)
    if args.manifests_only:
        return
    runs = run_all(manifests, work, args.models.split(","), args.heads.split(","))
    table(runs)


if __name__ == "__main__":
    main()
