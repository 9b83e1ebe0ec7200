"""Question 2 of issue 7: end-to-end extraction against the bare model, side by side.

* **bare**: the onnxruntime fp32 extractor on already decoded, resized uint8
  batches of 32 in memory;
* **end to end**: ``xrayfx.extraction.pipeline.extract`` on the files, into a fresh cache
  (hash every file, decode, resize, normalise and infer, write the zarr
  chunks), timed wall-clock from the call to its return.

Both run on the same images, alternately (bare, end to end, bare, …) so that the
load of this shared machine hits both alike; the ratio is end to end over the
mean of the two bare runs around it. Target: at least 0.90 for DenseNet201 on
the ../shared/data/cxr files.

Full-resolution files are reported too (not targeted): the six ``raw/``
originals (up to 1401 px) repeated, through the same pipeline code
(``_extract_missing``) with a distinct row id per repetition, since
``extract`` embeds identical files once.

Example::

    .venv/bin/python benchmarks/bench_end_to_end.py --model densenet201 --cache-dir /tmp/paperexp
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import CXR, machine_line, md_table, shared_rows, write_rows  # noqa: E402


def fresh_cache(models_from: Path, stem: str) -> Path:
    """A new cache folder whose models/ holds hard links to an existing export (no re-export)."""
    folder = Path(tempfile.mkdtemp(prefix="xrayfx-e2e-"))
    (folder / "models").mkdir()
    for suffix in (".onnx", ".json"):
        src = models_from / "models" / f"{stem}{suffix}"
        try:
            (folder / "models" / src.name).hardlink_to(src)
        except OSError:
            shutil.copy(src, folder / "models" / src.name)
    return folder


def bare_rate(extractor, images: np.ndarray, batch: int = 32) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        extractor(images[i:i + batch])
    return len(images) / (time.perf_counter() - t0)


def decode_all(paths: list[str], prep, workers: int = 2) -> tuple[np.ndarray, float]:
    from xrayfx.data.images import load_image

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        images = np.stack(list(pool.map(lambda p: load_image(p, prep), paths)))
    return images, time.perf_counter() - t0


def decode_ms_one_core(paths: list[str], prep) -> float:
    from xrayfx.data.images import load_image

    times = []
    for p in paths:
        t0 = time.perf_counter()
        load_image(p, prep)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet201")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--cache-dir", default="cache", help="Where the export is (reused, never re-exported here).")
    ap.add_argument("--n", type=int, default=640, help="Radiographs of ../shared/data/cxr per end-to-end pass.")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--raw-repeats", type=int, default=32, help="Repetitions of each of the six raw/ originals.")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from xrayfx.data.manifest import ImageRecord
    from xrayfx.models.export import export_model
    from xrayfx.models.config import model_config
    from xrayfx.extraction.pipeline import _extract_missing, extract, open_cache
    from xrayfx.inference.runtimes import make_extractor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(args.model, args.weights)
    exported = export_model(config, args.cache_dir)
    extractor = make_extractor(exported, "onnxruntime", "fp32", "cpu")
    rows = shared_rows()
    step = max(1, len(rows) // args.n)
    subset = rows[::step][:args.n]
    manifest = write_rows(out / "manifests" / f"e2e-{len(subset)}.csv", subset)
    images, _ = decode_all([r["path"] for r in subset], config.preprocessing)
    extractor(images[:32])  # warm-up

    # ---- small files: the shared radiographs (mostly 224-300 px), alternating bare / end to end
    bare, e2e, inner, ratios = [], [], [], []
    bare.append(bare_rate(extractor, images))
    for k in range(args.passes):
        cache = fresh_cache(Path(args.cache_dir), config.stem)
        try:
            t0 = time.perf_counter()
            result = extract(data=manifest, config=config, cache_dir=cache, progress=False)
            wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        e2e.append(len(result.ids) / wall)
        inner.append(result.images_per_s)
        bare.append(bare_rate(extractor, images))
        ratios.append(e2e[-1] / statistics.mean(bare[-2:]))
        print(f"pass {k + 1}: bare {bare[-2]:.1f}/{bare[-1]:.1f}, end to end {e2e[-1]:.1f} img/s "
              f"(ratio {ratios[-1]:.3f})", flush=True)
    sizes = []
    for r in subset[:200]:
        with Image.open(r["path"]) as im:
            sizes.append(max(im.size))
    small = {
        "n_images": len(subset), "passes": args.passes,
        "bare_images_per_s": [round(b, 2) for b in bare], "end_to_end_images_per_s": [round(v, 2) for v in e2e],
        "end_to_end_inner_images_per_s": [round(v, 2) for v in inner],
        "ratios": [round(r, 4) for r in ratios], "ratio_median": round(statistics.median(ratios), 4),
        "decode_ms_one_core_median": round(decode_ms_one_core([r["path"] for r in subset[:100]],
                                                              config.preprocessing), 2),
        "longer_side_px_median_of_200": int(statistics.median(sizes)),
    }

    # ---- full resolution: the six raw/ originals, repeated, through the pipeline's own loop
    raw = sorted(p for p in (CXR / "raw").iterdir() if p.is_file())
    records = []
    for k in range(args.raw_repeats):
        for p in raw:
            rid = hashlib.sha256(f"{p}#{k}".encode()).hexdigest()
            records.append(ImageRecord(path=p, label="x", image_id=rid))
    raw_images, _ = decode_all([str(r.path) for r in records], config.preprocessing)
    full = {"files": [p.name for p in raw], "n_images": len(records),
            "decode_ms_one_core_median": round(decode_ms_one_core([str(p) for p in raw] * 3, config.preprocessing), 2),
            "decode_ms_one_core_by_file": {p.name: round(decode_ms_one_core([str(p)] * 5, config.preprocessing), 2)
                                           for p in raw},
            "by_workers": {}}
    for workers in (1, 2, 1, 2):
        b0 = bare_rate(extractor, raw_images)
        cache_dir = fresh_cache(Path(args.cache_dir), config.stem)
        try:
            cache = open_cache(config, exported, cache_dir)
            t0 = time.perf_counter()
            _extract_missing(records, extractor, cache, config, 32, workers, False, None)
            rate = len(records) / (time.perf_counter() - t0)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        b1 = bare_rate(extractor, raw_images)
        entry = full["by_workers"].setdefault(workers, {"bare": [], "end_to_end": [], "ratios": []})
        entry["bare"] += [round(b0, 2), round(b1, 2)]
        entry["end_to_end"].append(round(rate, 2))
        entry["ratios"].append(round(rate / statistics.mean([b0, b1]), 4))
        entry["ratio"] = round(statistics.median(entry["ratios"]), 4)
        print(f"full resolution, {workers} decode thread(s): bare {b0:.1f}/{b1:.1f}, pipeline {rate:.1f} img/s",
              flush=True)

    doc = {"loadavg_end": [round(x, 2) for x in os.getloadavg()], "model": args.model, "weights": args.weights, "runtime": "onnxruntime fp32 cpu", "batch_size": 32,
           "workers": 2, "small_files": small, "full_resolution": full, "machine_line": machine_line()}
    (out / f"bench_end_to_end-{args.model}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    s, f = doc["small_files"], doc["full_resolution"]
    rows = [[f"../shared/data/cxr, {s['n_images']} files (median longer side {s['longer_side_px_median_of_200']} px)",
             2, f"{statistics.median(s['bare_images_per_s']):.1f}", f"{statistics.median(s['end_to_end_images_per_s']):.1f}",
             f"**{s['ratio_median']:.3f}**", f"{s['decode_ms_one_core_median']:.1f}"]]
    for w, r in f["by_workers"].items():
        rows.append([f"raw/ originals x{f['n_images'] // len(f['files'])} ({f['n_images']} rows, up to 1401 px)", w,
                     f"{statistics.median(r['bare']):.1f}", f"{statistics.median(r['end_to_end']):.1f}",
                     f"**{r['ratio']:.3f}**",
                     f"{f['decode_ms_one_core_median']:.1f}"])
    return (md_table(["files", "decode threads", "bare img/s", "end-to-end img/s", "end to end / bare",
                      "decode+resize ms/image (1 core)"], rows)
            + f"\n\n{doc['model']} ({doc['weights']} weights), {doc['runtime']}, batch {doc['batch_size']}; "
              f"ratios per pass {s['ratios']} (median quoted); raw/ decode ms by file "
              f"{f['decode_ms_one_core_by_file']}; load average after {doc['loadavg_end']}. {doc['machine_line']}")


if __name__ == "__main__":
    sys.exit(main())
