"""Near-duplicate detection on ../shared/data/cxr: catch rate, false-positive rate, known cases.

(a) Catch rate: a seeded sample of real radiographs is altered the way a copy reaches
    another collection (resized 0.5x and 1.5x, stretched to 224 x 224, JPEG q=75 and q=50,
    gamma and contrast +-10%, brightness +10, all of resize+JPEG+gamma at once; and the
    geometric edits a 1% and a 3% crop and a 2-degree rotation); a variant is caught when
    its hash lies within the threshold of its original's.
(b) False-positive rate: every pair of distinct real images (different patient ids, not
    byte-identical) whose hashes lie within the threshold, over all such pairs; also how
    many images take part in at least one such pair.
(c) Known cases: cohen-78/cohen-201 (byte-identical), cohen-97/178, cohen-137/202 and
    cohen-192/196 (look like the same person): the closest pair of images between the
    two patients and whether it is flagged.

    PYTHONPATH=$PWD python benchmarks/neardup.py --json /tmp/neardup.json [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xrayfx.data.neardup import (
    DEFAULT_MAX_DISTANCE,
    hamming_distance,
    hash_cache_path,
    near_duplicate_pairs,
    perceptual_hash_image,
    perceptual_hashes,
)
from xrayfx.data.images import decode_image, decode_image_bytes
from xrayfx.util import sha256_file

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr"
KNOWN = (("cohen-78", "cohen-201"), ("cohen-97", "cohen-178"), ("cohen-137", "cohen-202"), ("cohen-192", "cohen-196"))
THRESHOLDS = tuple(range(0, 21))


def _grey(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb[..., 0], mode="L")


def _jpeg(img: Image.Image, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return decode_image_bytes(buf.getvalue(), name="variant.jpg")


def _scale(img: Image.Image, f: float) -> Image.Image:
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)


def _gamma(img: Image.Image, g: float) -> Image.Image:
    lut = [round(255 * (v / 255) ** g) for v in range(256)]
    return img.point(lut)


def _contrast(img: Image.Image, c: float) -> Image.Image:
    lut = [min(255, max(0, round(128 + c * (v - 128)))) for v in range(256)]
    return img.point(lut)


def _crop(img: Image.Image, frac: float) -> Image.Image:
    dx, dy = round(img.width * frac), round(img.height * frac)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


#: Edits that move pixels (crops, rotation): reported, but left out of the "no crop" catch rate.
GEOMETRIC = ("crop", "rotate")
VARIANTS = {
    "resize_0.5x": lambda im: np.asarray(_scale(im, 0.5)),
    "resize_1.5x": lambda im: np.asarray(_scale(im, 1.5)),
    "jpeg_q75": lambda im: _jpeg(im, 75),
    "gamma_0.9": lambda im: np.asarray(_gamma(im, 0.9)),
    "gamma_1.1": lambda im: np.asarray(_gamma(im, 1.1)),
    "contrast_0.9": lambda im: np.asarray(_contrast(im, 0.9)),
    "contrast_1.1": lambda im: np.asarray(_contrast(im, 1.1)),
    "stretch_224x224": lambda im: np.asarray(im.resize((224, 224), Image.Resampling.BILINEAR)),
    "jpeg_q50": lambda im: _jpeg(im, 50),
    "brightness_+10": lambda im: np.asarray(im.point(lambda v: min(255, v + 10))),
    "crop_1pct": lambda im: np.asarray(_crop(im, 0.01)),
    "crop_3pct": lambda im: np.asarray(_crop(im, 0.03)),
    "rotate_2deg": lambda im: np.asarray(im.rotate(2, resample=Image.Resampling.BILINEAR)),
    "resize_0.5x+jpeg_q75+gamma_1.1": lambda im: _jpeg(_gamma(_scale(im, 0.5), 1.1), 75),
}


def read_manifest() -> list[dict[str, str]]:
    with open(CXR / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def catch_rates(rows: list[dict[str, str]], hashes: np.ndarray, n_sample: int, seed: int) -> dict:
    """Distance from each sampled original to each of its variants, summarised per threshold."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(rows), size=min(n_sample, len(rows)), replace=False))
    dists: dict[str, list[int]] = {name: [] for name in VARIANTS}
    for i in idx:
        img = _grey(decode_image(CXR / rows[i]["path"]))
        for name, make in VARIANTS.items():
            dists[name].append(hamming_distance(hashes[i], perceptual_hash_image(make(img))))
    out = {}
    for name, d in dists.items():
        arr = np.array(d)
        out[name] = {
            "n": int(arr.size),
            "median_distance": float(np.median(arr)),
            "max_distance": int(arr.max()),
            "caught": {str(t): float(np.mean(arr <= t)) for t in THRESHOLDS},
        }
    every = np.concatenate([np.array(d) for d in dists.values()])
    out["all"] = {"n": int(every.size), "caught": {str(t): float(np.mean(every <= t)) for t in THRESHOLDS}}
    no_crop = np.concatenate([np.array(d) for k, d in dists.items() if not k.startswith(GEOMETRIC)])
    out["all_but_crop"] = {"n": int(no_crop.size), "excluded": list(GEOMETRIC),
                           "caught": {str(t): float(np.mean(no_crop <= t)) for t in THRESHOLDS}}
    return {"n_images": int(idx.size), "seed": seed, "variants": out}


def false_positives(rows: list[dict[str, str]], hashes: np.ndarray, sha: list[str]) -> dict:
    """Flagged pairs among distinct real images (different patient ids, not byte-identical)."""
    pid = [r["patient_id"] for r in rows]
    n = len(rows)
    n_pairs = n * (n - 1) // 2
    same_pid = sum(c * (c - 1) // 2 for c in _counts(pid).values())
    pairs = near_duplicate_pairs(hashes, max_distance=max(THRESHOLDS))
    distinct = [(i, j, d) for i, j, d in pairs if pid[i] != pid[j] and sha[i] != sha[j]]
    n_distinct_pairs = n_pairs - same_pid  # byte-identical pairs under different ids are too few to matter
    out = {"n_images": n, "n_distinct_pairs": n_distinct_pairs, "by_threshold": {}}
    for t in THRESHOLDS:
        hit = [(i, j, d) for i, j, d in distinct if d <= t]
        imgs = {k for i, j, _ in hit for k in (i, j)}
        out["by_threshold"][str(t)] = {
            "pairs": len(hit),
            "pair_rate": len(hit) / n_distinct_pairs,
            "images_in_a_pair": len(imgs),
            "image_rate": len(imgs) / n,
        }
    out["closest_distinct_pairs"] = [
        {"a": rows[i]["path"], "b": rows[j]["path"], "patient_a": pid[i], "patient_b": pid[j], "distance": d}
        for i, j, d in sorted(distinct, key=lambda p: p[2])[:15]
    ]
    return out


def _counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def known_cases(rows: list[dict[str, str]], hashes: np.ndarray, sha: list[str], threshold: int) -> list[dict]:
    out = []
    for a, b in KNOWN:
        ia = [i for i, r in enumerate(rows) if r["patient_id"] == a]
        ib = [i for i, r in enumerate(rows) if r["patient_id"] == b]
        if not ia or not ib:
            out.append({"patients": [a, b], "found_in_manifest": False})
            continue
        best = min(itertools.product(ia, ib), key=lambda p: hamming_distance(hashes[p[0]], hashes[p[1]]))
        d = hamming_distance(hashes[best[0]], hashes[best[1]])
        out.append({
            "patients": [a, b], "images": [len(ia), len(ib)],
            "closest": [rows[best[0]]["path"], rows[best[1]]["path"]], "distance": d,
            "byte_identical": sha[best[0]] == sha[best[1]], "flagged": d <= threshold,
        })
    return out


def centre(rows: list[dict[str, str]]) -> np.ndarray:
    """Recompute CHEST_CENTRE: the median 8 x 8 low DCT block of the standardised thumbnails."""
    from scipy.fft import dctn

    blocks = []
    for r in rows:
        rgb = decode_image_bytes((CXR / r["path"]).read_bytes(), draft_size=(64, 64))
        grey = Image.fromarray(rgb.astype(np.float32).mean(axis=2), mode="F")
        small = np.asarray(grey.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
        small = (small - small.mean()) / (small.std() + 1e-9)
        blocks.append(dctn(small, type=2, norm="ortho")[:8, :8])
    med = np.median(np.array(blocks), axis=0)
    med[0, 0] = 0.0
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--cache-dir", default=None, help="hash cache folder (default: a fresh temporary one)")
    ap.add_argument("--sample", type=int, default=300, help="real images altered for the catch rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--centre", action="store_true", help="only print CHEST_CENTRE recomputed from the data")
    args = ap.parse_args()
    if args.centre:
        print(np.array2string(centre(read_manifest()), precision=3, separator=", ", suppress_small=True))
        return
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="xrayfx-neardup-"))
    cache.mkdir(parents=True, exist_ok=True)
    rows = read_manifest()
    t0 = time.perf_counter()
    hashes = perceptual_hashes([CXR / r["path"] for r in rows], cache_file=hash_cache_path(cache))
    t_hash = time.perf_counter() - t0
    sha = [sha256_file(CXR / r["path"]) for r in rows]
    result = {
        "default_max_distance": DEFAULT_MAX_DISTANCE,
        "hash_seconds": round(t_hash, 1),
        "catch": catch_rates(rows, hashes, args.sample, args.seed),
        "false_positives": false_positives(rows, hashes, sha),
        "known_cases": known_cases(rows, hashes, sha, DEFAULT_MAX_DISTANCE),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows)} images hashed in {t_hash:.1f} s; default threshold {DEFAULT_MAX_DISTANCE} bits of 64")
    print(f"{'threshold':>9} {'caught':>8} {'no geom':>8} {'worst variant':>28} {'FP pairs':>9} {'FP rate':>10} "
          f"{'FP images':>10}")
    variants = result["catch"]["variants"]
    fp = result["false_positives"]["by_threshold"]
    for t in THRESHOLDS:
        worst = min((v for v in variants if not v.startswith("all")), key=lambda v: variants[v]["caught"][str(t)])
        print(f"{t:>9} {variants['all']['caught'][str(t)]:>8.2%} {variants['all_but_crop']['caught'][str(t)]:>8.2%} "
              f"{worst + ' ' + format(variants[worst]['caught'][str(t)], '.1%'):>28} "
              f"{fp[str(t)]['pairs']:>9} {fp[str(t)]['pair_rate']:>10.2e} {fp[str(t)]['images_in_a_pair']:>10}")
    for k in result["known_cases"]:
        print("known:", json.dumps(k))


if __name__ == "__main__":
    main()
