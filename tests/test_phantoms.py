"""The synthetic phantom set: deterministic, well-formed, with the traps it promises."""

from __future__ import annotations

import csv
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from xrayfx.exceptions import UsageError
from xrayfx.data.phantoms import MANIFEST_COLUMNS, generate_phantoms
from xrayfx.util import sha256_file

EXPECTED_COLUMNS = ["path", "label", "patient_id", "source", "view", "age_group", "synthetic"]


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EXPECTED_COLUMNS
        return list(reader)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, keyed by relative path."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*") if p.is_file()
    }


def pixels(manifest: Path, row: dict[str, str]) -> np.ndarray:
    return np.asarray(Image.open(manifest.parent / row["path"]), dtype=np.float64)


def zone_mean(img: np.ndarray, u: tuple[float, float], y: tuple[float, float]) -> float:
    """Mean over the zone u[0] <= |x| <= u[1], y[0] <= y <= y[1], both sides.

    Coordinates run from -1 to 1 across the image; y grows downwards.
    """
    c = np.linspace(-1.0, 1.0, img.shape[0])
    xx, yy = np.meshgrid(c, c)
    m = (np.abs(xx) >= u[0]) & (np.abs(xx) <= u[1]) & (yy >= y[0]) & (yy <= y[1])
    return float(img[m].mean())


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    """The default set (n=100, seed=0), generated once, with the time it took."""
    out = tmp_path_factory.mktemp("phantoms")
    start = time.perf_counter()
    manifest = generate_phantoms(out, n=100, seed=0)
    seconds = time.perf_counter() - start
    return manifest, read_rows(manifest), seconds


def test_manifest_constant_matches_spec():
    assert list(MANIFEST_COLUMNS) == EXPECTED_COLUMNS


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_phantoms(tmp_path / "a", n=30, seed=7)
    b = generate_phantoms(tmp_path / "b", n=30, seed=7)
    c = generate_phantoms(tmp_path / "c", n=30, seed=8)
    ha, hb, hc = (file_hashes(m.parent) for m in (a, b, c))
    assert a.name == "manifest.csv" and "manifest.csv" in ha and "README.md" in ha
    assert len([k for k in ha if k.endswith(".png")]) == 30
    assert ha == hb

    images_a = {ha[k] for k in ha if k.endswith(".png")}
    images_c = {hc[k] for k in hc if k.endswith(".png")}
    assert not images_a & images_c, "a different seed must give different images"


def test_every_path_exists_and_is_8bit_greyscale(phantom_set):
    manifest, rows, _ = phantom_set
    assert len(rows) == 100
    for row in rows:
        path = manifest.parent / row["path"]
        assert not Path(row["path"]).is_absolute()
        assert path.is_file(), row["path"]
        assert re.fullmatch(rf"images/{row['label']}/{row['patient_id']}-[1-4]\.png", row["path"])
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (256, 256)
            assert "synthetic" in im.info.get("Comment", "").lower()
    assert len({r["path"] for r in rows}) == len(rows)


def test_manifest_values(phantom_set):
    _, rows, _ = phantom_set
    assert {r["label"] for r in rows} == {"covid", "normal"}
    assert {r["source"] for r in rows} == {"phantom-site-a", "phantom-site-b"}
    assert {r["view"] for r in rows} <= {"PA", "AP"}
    assert {r["age_group"] for r in rows} <= {"adult", "pediatric"}
    assert {r["synthetic"] for r in rows} == {"true"}
    assert all(r["patient_id"].startswith("phantom-p") for r in rows)
    covid_share = np.mean([r["label"] == "covid" for r in rows])
    assert 0.25 <= covid_share <= 0.35  # covid_fraction=0.3


def test_patients_have_several_images_and_one_label(phantom_set):
    _, rows, _ = phantom_set
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    sizes = [len(v) for v in by_patient.values()]
    assert max(sizes) <= 4 and min(sizes) >= 1
    assert sum(s >= 2 for s in sizes) >= 5, "some patients must have several images"
    for pid, images in by_patient.items():
        for key in ("label", "source", "age_group"):
            assert len({r[key] for r in images}) == 1, f"{pid} has more than one {key}"
    covid_ids = {r["patient_id"] for r in rows if r["label"] == "covid"}
    normal_ids = {r["patient_id"] for r in rows if r["label"] == "normal"}
    assert covid_ids and normal_ids and not covid_ids & normal_ids


def test_sites_differ_in_class_mix(phantom_set):
    _, rows, _ = phantom_set

    def covid_share(site):
        labels = [r["label"] for r in rows if r["source"] == site]
        assert len(labels) >= 10
        return np.mean([lab == "covid" for lab in labels])

    a, b = covid_share("phantom-site-a"), covid_share("phantom-site-b")
    assert a > b + 0.3, (a, b)
    covid_rows = [r for r in rows if r["label"] == "covid"]
    from_a = np.mean([r["source"] == "phantom-site-a" for r in covid_rows])
    assert from_a >= 0.7, "most covid phantoms come from site A"


def test_sites_differ_in_look(phantom_set):
    """Site A is burnt in top right, site B bottom left; site A has the higher contrast."""
    manifest, rows, _ = phantom_set
    top_right, bottom_left, spread = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in rows:
        img = pixels(manifest, r)
        top_right[r["source"]].append(img[5:30, -30:-5].max())
        bottom_left[r["source"]].append(img[-30:-5, 5:70].max())
        spread[r["source"]].append(np.percentile(img, 95) - np.percentile(img, 5))
    # A burn-in marker is a saturated overlay, brighter than anything else in the corner.
    assert min(top_right["phantom-site-a"]) == 255 > max(top_right["phantom-site-b"])
    assert min(bottom_left["phantom-site-b"]) > max(bottom_left["phantom-site-a"])
    assert np.median(spread["phantom-site-a"]) > np.median(spread["phantom-site-b"])


def test_images_have_radiograph_layout(phantom_set):
    """Dark background and lungs, brighter soft tissue, bright spine and abdomen."""
    manifest, rows, _ = phantom_set
    for r in rows[:20]:
        img = pixels(manifest, r)
        background = img[8:30, 8:30].mean()  # top-left corner, beside the neck
        lung = zone_mean(img, (0.25, 0.55), (-0.45, -0.15))
        spine = zone_mean(img, (0.0, 0.04), (-0.45, -0.15))
        abdomen = zone_mean(img, (0.15, 0.4), (0.7, 0.9))
        assert background < lung < spine, r["path"]
        assert lung < abdomen, r["path"]


def test_opacities_separate_classes_in_lower_lateral_zones(phantom_set):
    """Covid phantoms are brighter in the lower, lateral lung zones; not so in the upper ones."""
    manifest, rows, _ = phantom_set
    lower, upper, is_covid = [], [], []
    for r in rows:
        img = pixels(manifest, r)
        reference = zone_mean(img, (0.2, 0.4), (-0.55, -0.3))  # upper medial lung, own image
        lower.append(zone_mean(img, (0.45, 0.7), (0.0, 0.3)) / reference)
        upper.append(zone_mean(img, (0.45, 0.7), (-0.55, -0.3)) / reference)
        is_covid.append(r["label"] == "covid")
    auc_lower = roc_auc_score(is_covid, lower)
    auc_upper = roc_auc_score(is_covid, upper)
    assert auc_lower > 0.9
    assert max(auc_upper, 1.0 - auc_upper) < auc_lower - 0.1


def test_readme_says_synthetic(phantom_set):
    manifest, _, _ = phantom_set
    text = (manifest.parent / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in text.lower()
    assert "not medical data" in text
    assert "clinical" in text
    assert "n = 100, seed = 0" in text


def test_generation_is_fast(phantom_set):
    _, _, seconds = phantom_set
    assert seconds < 20.0


def test_size_and_fraction_are_honoured(tmp_path):
    manifest = generate_phantoms(tmp_path / "s", n=40, seed=3, size=96, covid_fraction=0.5)
    rows = read_rows(manifest)
    assert len(rows) == 40
    assert sum(r["label"] == "covid" for r in rows) == 20
    with Image.open(manifest.parent / rows[0]["path"]) as im:
        assert im.size == (96, 96)


def test_rerun_into_a_phantom_set_replaces_it(tmp_path):
    out = tmp_path / "p"
    generate_phantoms(out, n=20, seed=1)
    manifest = generate_phantoms(out, n=10, seed=2)
    rows = read_rows(manifest)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert on_disk == sorted(r["path"] for r in rows)
    assert len(on_disk) == 10


def test_refuses_a_folder_with_other_files(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        generate_phantoms(out, n=10)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 1},
        {"n": 2.5},
        {"n": True},
        {"seed": -1},
        {"size": 10},
        {"covid_fraction": 0.0},
        {"covid_fraction": 1.0},
        {"covid_fraction": "many"},
    ],
)
def test_bad_arguments_raise_usage_error(tmp_path, kwargs):
    with pytest.raises(UsageError):
        generate_phantoms(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
