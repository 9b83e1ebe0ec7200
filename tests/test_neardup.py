"""Near-duplicate detection (xrayfx.data.neardup) and split groups that follow it (xrayfx.study.groups).

Synthetic images first (smooth random fields, altered the way a copy reaches another
collection), then a few real radiographs from ../shared, then one fit-head run.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from conftest import absolute_rows, write_manifest
from xrayfx.data.neardup import (
    DEFAULT_MAX_DISTANCE,
    HASH_METHOD,
    format_hash,
    hamming_distance,
    image_hashes_csv,
    near_duplicate_pairs,
    parse_hash,
    perceptual_hash_image,
    perceptual_hashes,
    read_image_hashes,
)
from xrayfx.exceptions import UsageError
from xrayfx.study.groups import (
    MERGED_ID_SEPARATOR,
    cross_group_pairs,
    link_near_duplicates,
    merge_linked_groups,
    original_patient_ids,
)
from xrayfx.util import sha256_file


def _field(seed: int, size: int = 384) -> np.ndarray:
    """A smooth random grey image (uint8), different for every seed."""
    rng = np.random.default_rng(seed)
    z = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 24)
    z = (z - z.min()) / (z.max() - z.min())
    return (40 + 180 * z).astype(np.uint8)


def _jpeg(a: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def _resize(a: np.ndarray, f: float) -> np.ndarray:
    img = Image.fromarray(a)
    return np.asarray(img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BILINEAR))


VARIANTS = {
    "resize 0.5x": lambda a: _resize(a, 0.5),
    "resize 1.5x": lambda a: _resize(a, 1.5),
    "JPEG q75": _jpeg,
    "gamma 1.1": lambda a: (255 * (a / 255.0) ** 1.1).round().astype(np.uint8),
    "contrast +10%": lambda a: np.clip(128 + 1.1 * (a.astype(float) - 128), 0, 255).astype(np.uint8),
    "contrast -10%": lambda a: np.clip(128 + 0.9 * (a.astype(float) - 128), 0, 255).astype(np.uint8),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_altered_copy_is_a_near_duplicate(variant):
    for seed in range(3):
        original = _field(seed)
        d = hamming_distance(perceptual_hash_image(original), perceptual_hash_image(VARIANTS[variant](original)))
        assert d <= DEFAULT_MAX_DISTANCE, f"seed {seed}: {variant} moved {d} bits"


def test_different_images_are_not_near_duplicates():
    hashes = [perceptual_hash_image(_field(seed)) for seed in range(12)]
    assert near_duplicate_pairs(hashes) == []
    d = [hamming_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(d) > DEFAULT_MAX_DISTANCE


def test_rgb_and_grey_hash_alike_and_bad_shapes_are_refused():
    grey = _field(5)
    assert perceptual_hash_image(np.repeat(grey[..., None], 3, axis=2)) == perceptual_hash_image(grey)
    with pytest.raises(UsageError, match="shape"):
        perceptual_hash_image(np.zeros((2, 2, 2, 2), dtype=np.uint8))


def test_pairs_match_brute_force_within_and_across():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    a[7] = a[3] ^ np.uint64(0b101)  # distance 2
    b = np.concatenate([a[:5] ^ np.uint64(1), rng.integers(0, 2**63, size=10, dtype=np.uint64)])
    for limit in (0, 3, 20):
        within = [(i, j, hamming_distance(a[i], a[j])) for i in range(40) for j in range(i + 1, 40)]
        assert near_duplicate_pairs(a, max_distance=limit) == [p for p in within if p[2] <= limit]
        across = [(i, j, hamming_distance(a[i], b[j])) for i in range(40) for j in range(len(b))]
        assert near_duplicate_pairs(a, b, max_distance=limit) == [p for p in across if p[2] <= limit]
    assert (3, 7, 2) in near_duplicate_pairs(a, max_distance=2)
    with pytest.raises(UsageError, match="max_distance"):
        near_duplicate_pairs(a, max_distance=65)


def test_hashes_are_cached_by_sha256_in_json(tmp_path):
    paths = []
    for seed in range(3):
        p = tmp_path / f"img{seed}.png"
        Image.fromarray(_field(seed)).save(p)
        paths.append(p)
    Image.fromarray(_field(0)).save(tmp_path / "same.png")  # same bytes as img0
    paths.append(tmp_path / "same.png")
    cache = tmp_path / "cache" / "hashes.json"
    first = perceptual_hashes(paths, cache_file=cache)
    assert first.dtype == np.uint64 and first[0] == first[3]
    stored = json.loads(cache.read_text())
    assert stored["method"] == HASH_METHOD and len(stored["hashes"]) == 3
    ids = [sha256_file(p) for p in paths]
    for p in paths:
        p.unlink()  # a cached image is not read again when its sha256 is given
    assert np.array_equal(perceptual_hashes(paths, sha256s=ids, cache_file=cache), first)


def test_image_hash_file_round_trips(tmp_path):
    hashes = np.array([0, 2**64 - 1, 12345], dtype=np.uint64)
    path = tmp_path / "image_hashes.csv"
    path.write_text(image_hashes_csv(["c", "a", "b"], hashes))
    ids, back = read_image_hashes(path)
    assert ids == ["a", "b", "c"] and back.tolist() == [2**64 - 1, 12345, 0]
    assert parse_hash(format_hash(2**64 - 1)) == np.uint64(2**64 - 1)
    with pytest.raises(UsageError, match="16 hex"):
        parse_hash("xyz")


# ---------------------------------------------------------------------------------------------
# Split groups


def test_linked_groups_merge_transitively_and_others_keep_their_ids():
    image = ["i0", "i1", "i2", "i3", "i4", "i5", "i6"]
    patient = ["p1", "p1", "p2", "p3", "", "p4", ""]
    # p1 ~ p2 (rows 1, 2), p2 ~ p3 (rows 2, 3): one group of p1, p2, p3; row 4 (no id) ~ p4
    ids = merge_linked_groups(image, patient, [(1, 2), (3, 2), (4, 5)])
    assert ids[:4].tolist() == ["p1+p2+p3"] * 4
    assert ids[4] == ids[5] == "i4+p4"
    assert ids[6] == ""  # untouched blank row stays blank
    assert original_patient_ids(ids[0]) == ["p1", "p2", "p3"] and MERGED_ID_SEPARATOR == "+"
    assert merge_linked_groups(image, patient, []).tolist() == patient


def test_only_pairs_across_groups_are_links():
    h = np.array([0, 0, 0, 2**32 - 1], dtype=np.uint64)  # row 3: 32 bits away
    links = cross_group_pairs(["a", "b", "c", "d"], ["p1", "p1", "p2", "p3"], h)
    assert [(k.row_a, k.row_b) for k in links] == [(0, 2), (1, 2)]  # (0, 1) is one patient already


def test_real_same_radiograph_under_two_ids_is_linked(shared_rows, tmp_path):
    """cohen-97 and cohen-178 hold the same radiographs; an NIH adult is another person."""
    pick = [r for r in shared_rows if r["patient_id"] in ("cohen-97", "cohen-178")]
    pick += [r for r in shared_rows if r["source"] == "nih"][:4]
    rows = absolute_rows(pick)
    lines: list[str] = []
    found = link_near_duplicates([r["path"] for r in rows], [sha256_file(r["path"]) for r in rows],
                                 [r["patient_id"] for r in rows], cache_dir=tmp_path, log=lines.append)
    linked = {(rows[k.row_a]["patient_id"], rows[k.row_b]["patient_id"]) for k in found.links}
    assert linked and all({a, b} == {"cohen-97", "cohen-178"} for a, b in linked)
    covid = [i for i, r in enumerate(rows) if r["source"] == "cohen"]
    assert set(found.split_ids[covid].tolist()) == {"cohen-178+cohen-97"}
    assert "near-duplicates" in lines[0] and "cohen-97" in lines[0]
    assert (tmp_path / "image_hashes.json").is_file()


def test_fit_head_puts_near_duplicates_in_one_part_and_reports_them(
    shared_rows, tmp_path, mobilenet_config, mobilenet_export, session_cache
):
    from xrayfx.study.fit import fit_head

    covid = [r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"]
    dup = [r for r in covid if r["patient_id"] in ("cohen-97", "cohen-178")]
    others = [r for r in covid if r["patient_id"] not in ("cohen-97", "cohen-178")]
    firsts = list({r["patient_id"]: r for r in reversed(others)}.values())[:24]
    normals = [r for r in shared_rows if r["source"] == "nih"][:30]
    manifest = write_manifest(tmp_path / "m.csv", absolute_rows(dup + firsts + normals))
    lines: list[str] = []
    run = fit_head(data=manifest, config=mobilenet_config, cache_dir=session_cache, run_id="neardup-groups",
                   head="logreg", progress=False, log=lines.append)
    with open(run.path / "split.csv", newline="") as f:
        split = list(csv.DictReader(f))
    merged = [r for r in split if r["patient_id"] == "cohen-178+cohen-97"]
    assert len(merged) == len(dup) and len({r["part"] for r in merged}) == 1
    with open(run.path / "near_duplicates.csv", newline="") as f:
        links = list(csv.DictReader(f))
    assert links and {frozenset((r["patient_id_a"], r["patient_id_b"])) for r in links} == {
        frozenset(("cohen-97", "cohen-178"))}
    ids, _ = read_image_hashes(run.path / "image_hashes.csv")
    assert sorted(ids) == sorted(r["image_id"] for r in split)
    assert any("near-duplicates" in line and "merged" in line for line in lines)


def test_a_long_chain_of_look_alikes_is_reported_not_merged():
    """Copies of one radiograph link a few patients; a chain over many patients is look-alikes, not copies."""
    from xrayfx.study.groups import MAX_MERGED_PATIENTS, merge_linked_groups

    n = MAX_MERGED_PATIENTS + 3
    image = [f"img{i}" for i in range(n)]
    patient = [f"p{i}" for i in range(n)]
    chain = [(i, i + 1) for i in range(n - 1)]
    assert list(merge_linked_groups(image, patient, chain)) == patient
    pair = merge_linked_groups(image, patient, [(0, 1)])
    assert pair[0] == pair[1] == "p0+p1" and list(pair[2:]) == patient[2:]
