"""Helpers shared by the benchmark scripts: paths, real-radiograph subsets, markdown tables.

The scripts read ../shared in place (manifests they write hold absolute paths
into it); nothing from ../shared is copied.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CXR = SHARED / "data" / "cxr"
CXR_MANIFEST = CXR / "manifest.csv"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
PAPER_MODELS = ("inceptionv3", "inceptionresnetv2", "densenet201", "resnet101v2")


def shared_rows() -> list[dict[str, str]]:
    """Rows of ../shared/data/cxr/manifest.csv with absolute paths."""
    if not CXR_MANIFEST.is_file():
        sys.exit(f"{CXR_MANIFEST} not found: the benchmarks read the shared radiographs in place")
    with open(CXR_MANIFEST, newline="") as f:
        return [{**r, "path": str(CXR / r["path"])} for r in csv.DictReader(f)]


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write rows as a manifest CSV, each path relative to the manifest's folder (as xrayfx resolves them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": os.path.relpath(Path(r["path"]).resolve(), base)} for r in rows)
    return path


def calibration_and_held_out(folder: Path, n: int = 64) -> tuple[Path, Path]:
    """Two disjoint manifests of real radiographs from every source: n to calibrate on, n held out."""
    rows = shared_rows()
    step = len(rows) // n
    cal = rows[::step][:n]
    held = rows[step // 2::step][:n]
    return write_rows(folder / "calibration.csv", cal), write_rows(folder / "held_out.csv", held)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Machine, date and versions, for the head of a results section."""
    from xrayfx.bench_measure import cpu_info
    from xrayfx.util import library_versions

    cpu = cpu_info()
    v = library_versions()
    keep = ("python", "onnxruntime", "openvino", "tensorflow", "keras", "numpy")
    return (
        f"{cpu['model']}, {cpu['usable_cpus']} cores ({', '.join(cpu['extensions'])}), "
        f"env {cpu['env'] or '-'}; " + ", ".join(f"{k} {v[k]}" for k in keep if k in v)
        + f"; {time.strftime('%Y-%m-%d')}"
    )


def run_child(code: str, *args: str) -> dict[str, Any]:
    """Run Python code in a child process (memory stays there); it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
