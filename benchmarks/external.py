"""Internal test vs `xrayfx evaluate` on patient-grouped hold-outs made from ../shared/data/cxr.

Two settings, each trained on part of the patients of two sources:

* ``paper``: Cohen COVID-19 (adults) vs Mooney normals (children), the paper's confounded setting;
* ``adult``: Cohen COVID-19 vs NIH normals (adults).

For each setting this script writes, under WORK/manifests/:

* ``<setting>-train.csv`` — what fit-head trains, validates and tests on (its own internal split);
* ``<setting>-holdout.csv`` — new patients of the same two sources (never seen by fit-head), plus
  Cohen's normals (15 images, never trained on), so that one source (Cohen) holds both classes and the
  hold-out has a within-source AUROC that no source shortcut can win;
* ``<setting>-outside.csv`` — the other setting's normals (NIH adults for ``paper``, Mooney
  children for ``adult``): one class, so only specificity is defined.

Hold-out patients are drawn per source by a seeded hash of the split group, so both settings hold
out the same Cohen patients; patients with a Cohen normal image are always held out (whole).
Groups follow patient ids, byte-identical files and near-duplicate images
(:mod:`xrayfx.study.groups`), so cohen-97/cohen-178 cannot straddle train and hold-out.

Then, unless ``--manifests-only``: ``xrayfx fit-head`` for every model (mobilenet with the shared
weights, efficientnet-lite0 with ImageNet weights) and head (paper, logreg), ``xrayfx evaluate
--run RUN --data MANIFEST --name holdout|outside`` and ``xrayfx report RUN``, and a table of the
internal test and each evaluation from the runs' ``metrics.json`` files.

    PYTHONPATH=$PWD python benchmarks/external.py --manifests-only
    PYTHONPATH=$PWD python benchmarks/external.py --work /tmp/xrayfx-external
    PYTHONPATH=$PWD python benchmarks/external.py --work /tmp/xrayfx-external --table-only \\
        --results benchmarks/results/external.json

The table adds, for each hold-out, the AUROC within every source that holds both classes (Cohen),
with a patient-bootstrap interval, and each run's report sentences on its confound and ablation.
Results and commands: benchmarks/external.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx import metrics as M
from xrayfx.data.neardup import hash_cache_path, near_duplicate_pairs, perceptual_hashes
from xrayfx.study.splits import group_codes
from xrayfx.study.groups import cross_group_pairs, merge_linked_groups
from xrayfx.util import sha256_file

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr"
MOBILENET_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
#: setting -> (source, label) pairs it trains on, the (source, label) of its outside set, and the
#: (source, label) added whole to its hold-out (never trained on: Cohen's normals).
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"train": (("cohen", "covid"), ("mooney", "normal")), "outside": ("nih", "normal"),
              "holdout_extra": ("cohen", "normal")},
    "adult": {"train": (("cohen", "covid"), ("nih", "normal")), "outside": ("mooney", "normal"),
              "holdout_extra": ("cohen", "normal")},
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


def untrained(setting: str, what: str, rows: list[dict[str, str]], groups: list[str], pick: tuple[str, str],
              train_groups: set[str]) -> list[dict[str, str]]:
    """Rows of one (source, label) whose split group has no training row; says how many were left out."""
    found = [(r, g) for r, g in zip(rows, groups) if (r["source"], r["label"]) == pick]
    kept = [r for r, g in found if g not in train_groups]
    if len(kept) < len(found):
        print(f"{setting}: {len(found) - len(kept)} {what} image(s) share a patient or near-duplicate group "
              "with training rows and were left out")
    return kept


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
        # patients with a row of the hold-out extra (Cohen's normals) are held out whole
        forced = {g for r, g in zip(rows, groups) if (r["source"], r["label"]) == spec["holdout_extra"]}
        train = [r for r, g in picked if not (g in forced or held_out(g, seed, fraction))]
        hold = [r for r, g in picked if g in forced or held_out(g, seed, fraction)]
        train_groups = {g for r, g in picked if not (g in forced or held_out(g, seed, fraction))}
        outside = untrained(setting, "outside", rows, groups, spec["outside"], train_groups)
        hold += untrained(setting, "hold-out extra", rows, groups, spec["holdout_extra"], train_groups)
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


def _pair(ci: Any) -> list[float] | None:
    """An interval as [low, high] from a list or a {lo, hi} dict; None when absent or open."""
    if isinstance(ci, dict):
        ci = [ci.get("lo"), ci.get("hi")]
    return None if not ci or None in ci else [float(ci[0]), float(ci[1])]


def _with_ci(v: Any, ci: Any) -> str:
    pair = _pair(ci)
    return _num(v) + (f" [{pair[0]:.2f}, {pair[1]:.2f}]" if v is not None and pair else "")


def internal_test(run: Path) -> dict[str, Any]:
    """The internal test part at the run's shipped threshold, from RUN/metrics.json (a hold-out run)."""
    test = json.loads((run / "metrics.json").read_text()).get("test") or {}
    youden = test.get("youden") or {}
    report = youden.get("report") or {}
    out: dict[str, Any] = {"n": test.get("n"), "auroc": test.get("auroc"), "auroc_ci": _pair(test.get("auroc_ci")),
                           "threshold": youden.get("threshold"), "confusion": youden.get("confusion")}
    for key in ("sensitivity", "specificity"):
        out[key] = (report.get(key) or {}).get("value", youden.get(key))
        out[f"{key}_ci"] = _pair(report.get(key))
    return out


def evaluation(run: Path, name: str) -> dict[str, Any] | None:
    """The headline numbers of RUN/evaluations/NAME/metrics.json, with within-source AUROCs."""
    path = run / "evaluations" / name / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    out = {k: m.get(k) for k in ("n", "n_patients", "n_positive", "n_negative", "threshold", "auroc",
                                 "sensitivity", "specificity", "confusion")}
    for k in ("auroc", "sensitivity", "specificity"):
        out[f"{k}_ci"] = _pair(m.get(f"{k}_ci"))
    out["overlap_n"] = (m.get("overlap") or {}).get("n")
    out["by_source"] = m.get("by_source") or {}
    out["within_source_auroc"] = {src: within_source(run / "evaluations" / name / "predictions.csv", src, m)
                                  for src, s in out["by_source"].items() if s.get("auroc") is not None}
    return out


def within_source(predictions: Path, source: str, m: dict[str, Any]) -> dict[str, Any]:
    """AUROC among one source's scored rows, with a patient-bootstrap interval, from predictions.csv."""
    with open(predictions, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == source and not r["overlap"]
                and r["label"] in (m["positive"], m["negative"])]
    y = np.array([r["label"] == m["positive"] for r in rows])
    p = np.array([float(r[f"p_{m['positive']}"]) for r in rows])
    groups = np.array([r["patient_id"] or r["image_id"] for r in rows], dtype=object)
    ci = M.bootstrap_auroc(y, p, groups, n_resamples=M.DEFAULT_RESAMPLES, seed=0)
    return {"n_positive": int(y.sum()), "n_negative": int((~y).sum()), "auroc": M.roc_auc(y, p),
            "auroc_ci": [ci["lo"], ci["hi"]]}


def report_sentence(run: Path, pattern: str) -> str | None:
    """The first match of ``pattern`` in RUN/report/report.md (None when there is none)."""
    report = run / "report" / "report.md"
    m = re.search(pattern, report.read_text()) if report.is_file() else None
    return m.group(1) if m else None


def confound_sentence(run: Path) -> str | None:
    """The report's first sentence about what the run's AUROC measures."""
    return report_sentence(run, r"(Its test AUROC measures[^:]*:[^.]*\.)")


def ablation_paragraph(run: Path) -> str | None:
    """The report's paragraph on the masked-lung ablation."""
    return report_sentence(run, r"(With the lungs hidden[^\n]*)")


def collect(runs: list[Path]) -> list[dict[str, Any]]:
    """One record per run: internal test, hold-out, outside set and the report's confound sentence."""
    out = []
    for run in runs:
        setting, rest = run.name.split("-", 1)
        model, head = rest.rsplit("-", 1)
        out.append({"run": run.name, "setting": setting, "model": model, "head": head,
                    "internal": internal_test(run), "holdout": evaluation(run, "holdout"),
                    "outside": evaluation(run, "outside"), "confound_sentence": confound_sentence(run),
                    "ablation": ablation_paragraph(run)})
    return out


def table(records: list[dict[str, Any]]) -> str:
    """A Markdown table: internal test, hold-out and outside set of every run."""
    head = ("| setting | backbone | head | threshold | internal test AUROC | internal sens. / spec. "
            "| hold-out AUROC | hold-out sens. / spec. | within-source AUROC (pos/neg) "
            "| outside spec. (AUROC undefined) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in records:
        t, h, o = r["internal"], r["holdout"] or {}, r["outside"] or {}
        within = "; ".join(f"{src} {_with_ci(w['auroc'], w['auroc_ci'])} ({w['n_positive']}/{w['n_negative']})"
                           for src, w in h.get("within_source_auroc", {}).items()) or "—"
        lines.append(
            f"| {r['setting']} | {r['model']} | {r['head']} | {_num(t['threshold'], 3)} "
            f"| {_with_ci(t['auroc'], t['auroc_ci'])} "
            f"| {_with_ci(t['sensitivity'], t['sensitivity_ci'])} / {_with_ci(t['specificity'], t['specificity_ci'])} "
            f"| {_with_ci(h.get('auroc'), h.get('auroc_ci'))} "
            f"| {_with_ci(h.get('sensitivity'), h.get('sensitivity_ci'))} / "
            f"{_with_ci(h.get('specificity'), h.get('specificity_ci'))} "
            f"| {within} | {_with_ci(o.get('specificity'), o.get('specificity_ci'))} |")
    return "\n".join(lines)


def existing_runs(work: Path, models: list[str], heads: list[str]) -> list[Path]:
    """The runs of every setting, model and head that exist under WORK/cache/runs."""
    runs = [work / "cache" / "runs" / f"{s}-{m}-{h}" for s in SETTINGS for m in models for h in heads]
    return [r for r in runs if (r / "metrics.json").is_file()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/xrayfx-external", help="manifests, cache and runs go here")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hold-out draw")
    ap.add_argument("--holdout-fraction", type=float, default=0.25, help="share of patient groups held out")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--manifests-only", action="store_true", help="write and count the manifests, then stop")
    ap.add_argument("--table-only", action="store_true",
                    help="write, train, evaluate and report nothing: tabulate the runs that exist under WORK")
    ap.add_argument("--results", default=None, help="also write every run's numbers to this JSON file")
    args = ap.parse_args()
    work = Path(args.work)
    models, heads = args.models.split(","), args.heads.split(",")
    if not args.table_only:
        manifests = make_manifests(work, args.seed, args.holdout_fraction)
        if args.manifests_only:
            return
        run_all(manifests, work, models, heads)
    records = collect(existing_runs(work, models, heads))
    print("\n" + table(records))
    for r in records:
        print(f"{r['run']}: {r['confound_sentence'] or 'no confound sentence in its report'}")
    if args.results:
        Path(args.results).write_text(json.dumps({"seed": args.seed, "holdout_fraction": args.holdout_fraction,
                                                  "runs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
