"""Occlusion maps (xrayfx.study.explain), their deletion test, the `explain` command and the report section."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_inprocess
from xrayfx.exceptions import UsageError
from xrayfx.study import explain as X

GRID = 4
MARKER = 16  # side of the corner marker in a 64-pixel image: exactly the top-left cell of a 4x4 grid


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_cells_cover_the_image_once_in_row_major_order():
    boxes = X.cell_boxes(10, 7, 3)
    cover = np.zeros((10, 7), int)
    for t, b, l, r in boxes:
        cover[t:b, l:r] += 1
    assert (cover == 1).all()
    assert boxes[0][:3:2] == (0, 0) and boxes[1][2] > 0 and boxes[3][0] > 0  # cell 1 is to the right, 3 below


def test_positive_mass_inside_the_box():
    overlap = X.box_overlap(4, 0.5, 0.5)
    assert overlap.sum() == pytest.approx(4 * 4 * 0.25) and overlap[0, 0] == 0 and overlap[1, 1] == 1
    maps = np.zeros((3, 4, 4))
    maps[0, 0, 0] = 1.0  # all positive mass in a corner, outside the box
    maps[1, 1, 2] = 0.5  # all inside
    maps[1, 0, 0] = -3.0  # negative cells do not count
    share = X.positive_mass_inside(maps, 0.5, 0.5)
    assert share[0] == 0 and share[1] == 1 and math.isnan(share[2])


def test_curve_area_and_argument_checks():
    assert X.curve_area(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert X.curve_area(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.25)
    for bad in (1, 0, 33, 2.5, True):
        with pytest.raises(UsageError, match="--grid"):
            X.check_grid(bad)
    with pytest.raises(UsageError, match="--fill"):
        X.check_fill("noise")


def test_blur_fill_keeps_brightness_and_removes_detail():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    blurred = X.filler_image(img, "blur", 4)
    assert blurred.shape == img.shape and abs(float(blurred.mean()) - float(img.mean())) < 3
    assert blurred.std() < img.std() / 3
    assert (X.filler_image(img, "mean", 4) == round(float(img.mean()))).all()


# ---------------------------------------------------------------------------------------------
# A run whose label is carried only by a marker in one corner


@pytest.fixture(scope="module")
def marker_run(tmp_path_factory, mobilenet_config, mobilenet_export, session_cache):
    """Phantom radiographs labelled at random; only a block in the top-left cell tells the labels apart."""
    from xrayfx.data.phantoms import generate_phantoms
    from xrayfx.study.fit import fit_head

    root = tmp_path_factory.mktemp("marker")
    manifest = generate_phantoms(root / "phantoms", n=40, seed=3, size=64)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    out_rows = []
    for i, row in enumerate(rows):
        label = "covid" if i % 2 == 0 else "normal"  # independent of the phantom's own label and site
        pixels = np.asarray(Image.open(manifest.parent / row["path"]).convert("L")).copy()
        # the corner holds a block in both classes: white (covid) or the image's mean grey (normal), so
        # occluding the white block with the mean grey turns the image into a normal one
        pixels[:MARKER, :MARKER] = 255 if label == "covid" else round(float(pixels.mean()))
        path = root / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        out_rows.append({"path": str(path), "label": label, "patient_id": f"p{i}"})
    data = root / "marker.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"])
        w.writeheader()
        w.writerows(out_rows)
    run = fit_head(data=data, config=mobilenet_config, cache_dir=session_cache, run_id="explain-marker",
                   head="logreg", test_size=0.3, progress=False, log=None)
    return run, data, out_rows


def test_marker_corner_is_the_top_cell_and_the_deletion_curve_beats_random(marker_run, session_cache):
    run, _, rows = marker_run
    scorer = X.load_run_scorer(run.path, session_cache)
    marked = [r["path"] for r in rows if r["label"] == "covid"][:4]
    res = X.explain_images(scorer, marked, grid=GRID, fill="mean", draws=3)
    assert res.maps.shape == (4, GRID, GRID) and not res.skipped
    for e in res.items:
        assert e.predicted_positive, f"{e.path}: p={e.p}"
        assert int(np.argmax(e.map)) == 0, f"top cell of {e.path} is {int(np.argmax(e.map))}, not the marked corner"
        assert e.order[0] == 0
        assert e.auc_difference > 0.1 and e.informative
        assert e.deletion_top[0] == pytest.approx(e.p) and e.deletion_top.shape == (GRID * GRID // 4 + 1,)
    assert res.summary()["n_informative"] == 4
    share = X.positive_mass_inside(res.maps, 0.6, 0.7)
    assert np.nanmean(share) < 0.42, "the corner lies outside the lung box"


def _test_rows(run):
    with open(run.path / "predictions.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"]


def test_unoccluded_p_is_the_runs_own_prediction(marker_run, session_cache):
    run, _, _ = marker_run
    rows = _test_rows(run)[:3]
    res = X.explain_images(X.load_run_scorer(run.path, session_cache), [r["path"] for r in rows], grid=2)
    assert [e.p for e in res.items] == pytest.approx([float(r["p_covid"]) for r in rows], abs=1e-4)


def test_an_int8_run_is_explained_with_its_int8_extractor(marker_run, mobilenet_export, mobilenet_config, tmp_path):
    from conftest import seed_cache
    from xrayfx.study.fit import fit_head

    # A cache of its own (with the session's export copied in): the int8 variant this registers must not
    # become a second variant of the session cache's model, which other tests expect to have only one of.
    cache = seed_cache(tmp_path / "cache", mobilenet_export)
    _, data, rows = marker_run
    run = fit_head(data=data, config=mobilenet_config, cache_dir=cache, run_id="explain-marker-int8",
                   head="logreg", precision="int8", progress=False, log=None)
    scorer = X.load_run_scorer(run.path, cache)
    assert scorer.precision == "int8" and "int8" in scorer.extractor.path.name
    test = _test_rows(run)[:2]
    res = X.explain_images(scorer, [r["path"] for r in test], grid=2)
    assert [e.p for e in res.items] == pytest.approx([float(r["p_covid"]) for r in test], abs=1e-4)


def test_the_cache_gets_no_rows_from_occluded_copies(marker_run, session_cache):
    from xrayfx.extraction.pipeline import open_cache
    from xrayfx.models.export import export_model
    from xrayfx.models.config import ModelConfig

    run, _, rows = marker_run
    config = ModelConfig.from_dict(run.config["model"])
    cache = open_cache(config, export_model(config, session_cache), session_cache)
    before = len(cache)
    scorer = X.load_run_scorer(run.path, session_cache)
    X.explain_images(scorer, [rows[0]["path"]], grid=2)
    assert len(open_cache(config, export_model(config, session_cache), session_cache)) == before


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_explain_writes_overlays_npz_csv_and_faithfulness(marker_run, tmp_path, capsys):
    run, data, rows = marker_run
    out = tmp_path / "ex"
    code, stdout, stderr = run_cli_inprocess(
        ["explain", "--run", str(run.path), str(data), "--grid", str(GRID), "--max-images", "3", "--out", str(out)],
        capsys)
    assert code == 0, stderr
    assert "maps informative" in stdout
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG" and im.size[0] > 200
    npz = np.load(out / "maps.npz", allow_pickle=False)
    assert npz["maps"].shape == (3, GRID, GRID) and npz["paths"].tolist() == [r["path"] for r in rows[:3]]
    assert str(npz["fill"]) == "mean" and npz["p"].shape == (3,)
    for key in ("auc_top", "auc_random", "auc_difference", "informative", "deletion_top", "deletion_random", "order"):
        assert len(npz[key]) == 3, key
    assert npz["deletion_random"].shape == (3, 3, GRID * GRID // 4 + 1)
    # the map is the drop in p: the marked corner of the first (positive) image lowers p most
    assert int(np.argmax(npz["maps"][0])) == 0
    with open(out / "maps.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[0]["cell_0_0"]) == pytest.approx(float(npz["maps"][0, 0, 0]), rel=1e-6)
    faith = json.loads((out / "faithfulness.json").read_text())
    assert faith["summary"]["n_images"] == 3 and "auc_difference" in faith["summary"]
    for item in faith["images"]:
        assert {"auc_top", "auc_random", "auc_difference", "informative", "positive_mass_inside_lung_box"} <= set(item)


@pytest.mark.parametrize("args, message", [
    (["--grid", "1"], "--grid"),
    (["--fill", "noise"], "--fill"),
    (["--max-images", "0"], "--max-images"),
])
def test_cli_explain_refuses_bad_options(marker_run, tmp_path, capsys, args, message):
    run, data, _ = marker_run
    code, _, stderr = run_cli_inprocess(["explain", "--run", str(run.path), str(data), *args], capsys)
    assert code == 2 and message in stderr


def test_cli_explain_refuses_missing_inputs_and_runs(marker_run, tmp_path, capsys):
    run, _, rows = marker_run
    code, _, stderr = run_cli_inprocess(["explain", "--run", str(run.path), str(tmp_path / "nothing.png")], capsys)
    assert code == 2 and "nothing.png" in stderr
    (tmp_path / "notes.txt").write_text("x")
    code, _, stderr = run_cli_inprocess(["explain", "--run", str(run.path), str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "Expected an image" in stderr
    code, _, stderr = run_cli_inprocess(["explain", "--run", str(tmp_path / "no-run"), rows[0]["path"],
                                         "--cache-dir", str(tmp_path)], capsys)
    assert code == 2 and "--run" in stderr


# ---------------------------------------------------------------------------------------------
# Report section


def test_report_has_the_section_where_the_decision_comes_from(marker_run, session_cache, tmp_path):
    from xrayfx.report import build_report

    run, _, _ = marker_run
    result = build_report([run.path], out=tmp_path / "rep", ablation=False, cache_dir=session_cache,
                          n_resamples=100, explain=2)
    md = result.markdown.read_text()
    assert "## Where the decision comes from" in md and "Deletion test on the sampled test images" in md
    section = result.data["runs"][0]["explain"]
    assert section["ran"] and section["n"] <= 4 and section["sentence"]
    assert {"auc_top", "auc_random", "auc_difference", "n_informative"} <= set(section["summary"])
    names = {f.name for f in result.figures}
    assert {f"{run.run_id}-explain-mean.png", f"{run.run_id}-explain-grid.png"} <= names
    off = build_report([run.path], out=tmp_path / "rep0", ablation=False, cache_dir=session_cache,
                       n_resamples=100, explain=0)
    assert "Where the decision comes from" not in off.markdown.read_text()
    with pytest.raises(UsageError, match="--explain"):
        build_report([run.path], out=tmp_path / "rep1", cache_dir=session_cache, explain=-1)


def test_cli_explain_help_has_an_example(capsys):
    code, out, _ = run_cli_inprocess(["explain", "--help"], capsys)
    assert code == 0 and "Example:" in out and "xrayfx explain --run" in out and "--grid" in out
