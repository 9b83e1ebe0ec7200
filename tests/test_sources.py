"""Source readers, checks and the paper's composition (xrayfx.data.sources).

Synthetic trees first; then the real Cohen metadata and the shared manifest, read in place.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from conftest import COHEN_METADATA, CXR, CXR_MANIFEST
from xrayfx.exceptions import DataError, UsageError
from xrayfx.data.sources import (
    MANIFEST_COLUMNS,
    age_group,
    cohen_label,
    compose_paper,
    confounding_warnings,
    find_duplicate_files,
    find_label_conflicts,
    kermany_patient_id,
    load_manifest_rows,
    nih_patient_id,
    read_cohen,
    read_kermany,
    read_nih,
    write_manifest,
)
from xrayfx.data.sources.rows import relative_if_possible

COHEN_ORIGIN_PREFIX = "ieee8023/covid-chestxray-dataset@"


def png(path: Path, index: int) -> Path:
    """A 2×2 grey-and-colour PNG whose pixels encode ``index`` (so every placeholder differs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (index % 256, (index // 256) % 256, 7)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def origin_file(row: dict[str, str]) -> str:
    """The original file name of a shared-manifest row (last path part of its origin)."""
    return row["origin"].rsplit("/", 1)[1]


# --------------------------------------------------------------------------------------------
# Cohen: synthetic metadata
# --------------------------------------------------------------------------------------------

COHEN_HEADER = ["patientid", "offset", "sex", "age", "finding", "view", "modality", "folder", "filename",
                "license"]


@pytest.fixture
def tiny_cohen(tmp_path):
    rows = [
        ["1", "0", "M", "65", "COVID-19", "PA", "X-ray", "images", "a.jpg", "CC BY"],
        ["1", "3", "M", "65", "COVID-19, ARDS", "AP Supine", "X-ray", "images", "b.jpg", ""],
        ["2", "", "F", "", "Pneumonia/Viral/COVID-19", "AP", "X-ray", "images", "c.png", ""],
        ["3", "", "F", "12", "No Finding", "PA", "X-ray", "images", "d.jpeg", ""],
        ["4", "", "M", "40", "Streptococcus", "PA", "X-ray", "images", "e.jpg", ""],
        ["5", "", "M", "40", "todo", "PA", "X-ray", "images", "f.jpg", ""],
        ["6", "", "M", "40", "COVID-19", "Axial", "CT", "images", "g.jpg", ""],
        ["7", "", "M", "40", "COVID-19", "L", "X-ray", "images", "h.jpg", ""],
        ["8", "", "M", "40", "COVID-19", "PA", "X-ray", "volumes", "i.nii.gz", ""],
        ["9", "", "M", "40", "COVID-19", "PA", "X-ray", "images", "gone.jpg", ""],
    ]
    write_csv(tmp_path / "metadata.csv", COHEN_HEADER, rows)
    for i, name in enumerate("abcdefgh"):
        png(tmp_path / "images" / f"{name}.{'png' if name == 'c' else 'jpeg' if name == 'd' else 'jpg'}", i)
    return tmp_path


def test_cohen_labels_views_and_patients(tiny_cohen):
    res = read_cohen(tiny_cohen)
    by_file = {r["original_file"]: r for r in res.rows}
    assert set(by_file) == {"images/a.jpg", "images/b.jpg", "images/c.png", "images/d.jpeg"}
    assert [by_file[f"images/{n}"]["label"] for n in ("a.jpg", "b.jpg", "c.png", "d.jpeg")] == \
        ["covid", "covid", "covid", "normal"]
    assert by_file["images/b.jpg"]["view"] == "AP Supine"
    assert by_file["images/a.jpg"]["patient_id"] == by_file["images/b.jpg"]["patient_id"] == "cohen-1"
    assert by_file["images/d.jpeg"]["age_group"] == "pediatric"
    assert by_file["images/c.png"]["age_group"] == "unknown"
    assert by_file["images/a.jpg"]["age_group"] == "adult"
    assert all(r["source"] == "cohen" and Path(r["path"]).is_absolute() for r in res.rows)
    assert res.missing == ["images/gone.jpg"]
    assert res.dropped["modality CT"] == 1 and res.dropped["folder volumes"] == 1
    assert res.dropped["view L"] == 1
    assert res.dropped["finding Streptococcus (other finding)"] == 1
    assert res.dropped["finding todo (not labelled)"] == 1


def test_cohen_keep_other_and_views(tiny_cohen):
    res = read_cohen(tiny_cohen, keep_other=True)
    labels = {r["original_file"]: r["label"] for r in res.rows}
    assert labels["images/e.jpg"] == "streptococcus"
    assert "images/f.jpg" not in labels  # 'todo' is not a finding, even with keep_other
    pa_only = read_cohen(tiny_cohen, views=["pa"])
    assert {r["view"] for r in pa_only.rows} == {"PA"}
    with_lateral = read_cohen(tiny_cohen, views=["PA", "L"])
    assert "images/h.jpg" in {r["original_file"] for r in with_lateral.rows}
    with pytest.raises(UsageError):
        read_cohen(tiny_cohen, views=[])


def test_cohen_label_rules():
    assert cohen_label("COVID-19") == "covid"
    assert cohen_label("Pneumonia/Viral/COVID-19") == "covid"
    assert cohen_label("COVID-19, ARDS") == "covid"
    assert cohen_label("No Finding") == "normal"
    assert cohen_label("SARS") is None
    assert cohen_label("Mycoplasma Bacterial Pneumonia", keep_other=True) == "mycoplasma-bacterial-pneumonia"
    assert cohen_label("todo", keep_other=True) is None


def test_cohen_errors(tmp_path):
    with pytest.raises(DataError, match="metadata.csv"):
        read_cohen(tmp_path)
    write_csv(tmp_path / "metadata.csv", ["patientid", "finding"], [["1", "COVID-19"]])
    with pytest.raises(DataError, match="missing"):
        read_cohen(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        read_cohen(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Cohen: the real 2020-06-22 metadata with placeholder images
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_rows_m() -> list[dict[str, str]]:
    if not CXR_MANIFEST.exists():
        pytest.skip(f"{CXR_MANIFEST} not found: ../shared is laid beside the repo in CI")
    with open(CXR_MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def real_cohen(tmp_path_factory, shared_rows_m):
    """A Cohen checkout: placeholders for the files metadata.csv names, a few deliberately absent."""
    if not COHEN_METADATA.exists():
        pytest.skip(f"{COHEN_METADATA} not found")
    with open(COHEN_METADATA, newline="") as f:
        meta = list(csv.DictReader(f))
    in_manifest = {origin_file(r) for r in shared_rows_m if r["source"] == "cohen"}
    # Deliberately missing: COVID frontal X-rays and one No Finding image outside the shared manifest.
    frontal = [m for m in meta if m["modality"] == "X-ray" and m["folder"] == "images"
               and m["view"] in ("PA", "AP", "AP Supine") and m["filename"] not in in_manifest]
    removed = [m["filename"] for m in frontal if m["finding"] == "COVID-19"][:4]
    removed += [m["filename"] for m in frontal if m["finding"] == "No Finding"][:1]
    assert len(removed) == 5
    root = tmp_path_factory.mktemp("cohen")
    names = sorted({m["filename"] for m in meta if m["folder"] == "images"} - set(removed))
    for i, name in enumerate(names):
        png(root / "images" / name, i)
    return root, meta, removed


def test_cohen_real_metadata_missing_listed(real_cohen):
    root, _, removed = real_cohen
    res = read_cohen(root, metadata=COHEN_METADATA)
    assert sorted(res.missing) == sorted(f"images/{n}" for n in removed)
    kept = {r["original_file"] for r in res.rows}
    assert not kept & set(res.missing)


def test_cohen_real_metadata_matches_shared_manifest(real_cohen, shared_rows_m):
    """Every Cohen row of the independently prepared manifest: same label, view and patient_id."""
    root, _, _ = real_cohen
    res = read_cohen(root, metadata=COHEN_METADATA)
    by_file = defaultdict(list)
    for r in res.rows:
        by_file[r["original_file"]].append(r)
    cohen_rows = [r for r in shared_rows_m if r["source"] == "cohen"]
    assert len(cohen_rows) > 300
    mismatches = []
    for m in cohen_rows:
        assert m["origin"].startswith(COHEN_ORIGIN_PREFIX)
        found = by_file.get(f"images/{origin_file(m)}", [])
        got = [(r["label"], r["view"], r["patient_id"]) for r in found]
        if got != [(m["label"], m["view"], m["patient_id"])]:
            mismatches.append((origin_file(m), got, (m["label"], m["view"], m["patient_id"])))
    assert mismatches == []
    missing_of_manifest = {f"images/{origin_file(m)}" for m in cohen_rows} & set(res.missing)
    assert missing_of_manifest == set()


def test_cohen_real_metadata_no_ct_no_lateral(real_cohen):
    root, meta, _ = real_cohen
    res = read_cohen(root, metadata=COHEN_METADATA)
    by_name = defaultdict(set)
    for m in meta:
        by_name[m["filename"]].add((m["modality"], m["view"], m["folder"]))
    for r in res.rows:
        name = r["original_file"].split("/", 1)[1]
        assert any(mod == "X-ray" and folder == "images" and view == r["view"]
                   for mod, view, folder in by_name[name])
    assert {r["view"] for r in res.rows} <= {"PA", "AP", "AP Supine"}


# --------------------------------------------------------------------------------------------
# Kermany / Mooney
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "patient"), [
    ("IM-0115-0001.jpeg", "mooney-IM-0115"),
    ("IM-0629-0001-0002.jpeg", "mooney-IM-0629"),
    ("NORMAL2-IM-1427-0001.jpeg", "mooney-NORMAL2-IM-1427"),
    ("NORMAL2-IM-0173-0001-0002.jpeg", "mooney-NORMAL2-IM-0173"),
    ("person1_bacteria_1.jpeg", "mooney-person1"),
    ("person1_virus_6.jpeg", "mooney-person1"),
    ("person1946_bacteria_4874.jpeg", "mooney-person1946"),
])
def test_kermany_patient_id(name, patient):
    assert kermany_patient_id(name) == patient
    assert kermany_patient_id(f"chest_xray/train/NORMAL/{name}") == patient


@pytest.mark.parametrize("name", ["scan.jpeg", "IM-0115.jpeg", "personA_bacteria_1.jpeg", "NORMAL-IM-0001-0001.jpeg"])
def test_kermany_patient_id_rejects_unknown(name):
    with pytest.raises(DataError, match="expected a Kermany/Mooney file name"):
        kermany_patient_id(name)


@pytest.fixture
def tiny_kermany(tmp_path):
    base = tmp_path / "chest_xray"
    files = {
        "train/NORMAL/IM-0115-0001.jpeg": 1,
        "train/NORMAL/IM-0629-0001-0002.jpeg": 2,
        "train/NORMAL/IM-0629-0001-0001.jpeg": 3,
        "train/PNEUMONIA/person1_bacteria_1.jpeg": 4,
        "train/PNEUMONIA/person1_virus_6.jpeg": 5,
        "test/NORMAL/NORMAL2-IM-1427-0001.jpeg": 6,
        "test/PNEUMONIA/person100_virus_184.jpeg": 7,
        "val/NORMAL/NORMAL2-IM-1440-0001.jpeg": 8,
        "val/PNEUMONIA/renamed.jpeg": 9,
    }
    for rel, i in files.items():
        png(base / rel, i)
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"x")
    (base / "train" / "NORMAL" / "notes.txt").write_text("x")
    return tmp_path


def test_read_kermany(tiny_kermany):
    res = read_kermany(tiny_kermany)  # finds chest_xray/ below the folder given
    rows = {r["original_file"]: r for r in res.rows}
    assert len(rows) == 8
    r = rows["train/NORMAL/IM-0629-0001-0002.jpeg"]
    assert (r["label"], r["patient_id"], r["split"], r["source"], r["age_group"], r["view"]) == \
        ("normal", "mooney-IM-0629", "train", "mooney", "pediatric", "AP")
    assert rows["train/PNEUMONIA/person1_bacteria_1.jpeg"]["pneumonia_type"] == "bacterial"
    assert rows["train/PNEUMONIA/person1_virus_6.jpeg"]["pneumonia_type"] == "viral"
    assert rows["train/PNEUMONIA/person1_virus_6.jpeg"]["label"] == "pneumonia"
    assert rows["test/NORMAL/NORMAL2-IM-1427-0001.jpeg"]["patient_id"] == "mooney-NORMAL2-IM-1427"
    assert rows["test/NORMAL/NORMAL2-IM-1427-0001.jpeg"]["pneumonia_type"] == ""
    assert rows["val/NORMAL/NORMAL2-IM-1440-0001.jpeg"]["split"] == "val"
    assert res.problems == ["val/PNEUMONIA/renamed.jpeg: unknown file-name pattern, left out"]
    assert res.dropped == {"hidden file or folder": 1, "not an image file": 1}
    same = read_kermany(tiny_kermany / "chest_xray")
    assert [r["path"] for r in same.rows] == [r["path"] for r in res.rows]


def test_read_kermany_errors(tmp_path):
    with pytest.raises(DataError, match="train/, test/ or val/"):
        read_kermany(tmp_path)
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataError, match="expected images"):
        read_kermany(tmp_path)


def test_kermany_patient_id_matches_every_shared_mooney_row(shared_rows_m):
    mooney = [r for r in shared_rows_m if r["source"] == "mooney"]
    assert len(mooney) > 1000
    wrong = [(origin_file(r), r["patient_id"]) for r in mooney
             if kermany_patient_id(origin_file(r)) != r["patient_id"]]
    assert wrong == []


def test_read_kermany_on_shared_mooney_names(tmp_path, shared_rows_m):
    """A tree of every shared mooney file name (empty files): the reader's rows match the manifest."""
    expected = {}
    for r in shared_rows_m:
        if r["source"] != "mooney":
            continue
        split, cls, name = r["origin"].rsplit(":", 1)[1].split("/")[-3:]
        path = tmp_path / "chest_xray" / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        expected[f"{split}/{cls}/{name}"] = (r["label"], r["patient_id"], r["view"], r["age_group"])
    res = read_kermany(tmp_path)
    got = {r["original_file"]: (r["label"], r["patient_id"], r["view"], r["age_group"]) for r in res.rows}
    assert got == expected


# --------------------------------------------------------------------------------------------
# NIH
# --------------------------------------------------------------------------------------------

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]


def nih_entry(name: str, finding: str, pid: str, age: str, view: str = "PA", sex: str = "M") -> list[str]:
    return [name, finding, name[9:12], pid, age, sex, view, "2048", "2500", "0.168", "0.168", ""]


@pytest.fixture
def tiny_nih(tmp_path):
    entries = [
        nih_entry("00000001_000.png", "Cardiomegaly", "1", "58"),
        nih_entry("00000001_001.png", "Cardiomegaly|Emphysema", "1", "58"),
        nih_entry("00000003_000.png", "No Finding", "3", "81", "AP", "F"),
        nih_entry("00000013_005.png", "No Finding", "13", "60"),
        nih_entry("00000099_000.png", "No Finding", "99", "12"),
        nih_entry("00000100_000.png", "No Finding", "100", "033Y"),
        nih_entry("00000200_000.png", "No Finding", "201", "40"),  # id disagrees with the name
    ]
    write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, entries)
    png(tmp_path / "images_001" / "images" / "00000001_000.png", 1)
    png(tmp_path / "images_001" / "images" / "00000001_001.png", 2)
    png(tmp_path / "images_001" / "images" / "00000003_000.png", 3)
    png(tmp_path / "images_002" / "images" / "00000099_000.png", 4)
    png(tmp_path / "images_002" / "00000100_000.png", 5)
    png(tmp_path / "images_002" / "00000200_000.png", 6)
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000099_000.png\n00000100_000.png\n")
    return tmp_path


def test_read_nih(tiny_nih):
    res = read_nih(tiny_nih)
    rows = {r["original_file"]: r for r in res.rows}
    assert set(rows) == {"00000003_000.png", "00000099_000.png", "00000100_000.png"}
    r = rows["00000003_000.png"]
    assert (r["label"], r["patient_id"], r["view"], r["age_group"], r["sex"], r["split"]) == \
        ("normal", "nih-00000003", "AP", "adult", "F", "test")
    assert rows["00000099_000.png"]["age_group"] == "pediatric"
    assert rows["00000100_000.png"]["age"] == "33" and rows["00000100_000.png"]["split"] == "train_val"
    assert res.missing == ["00000013_005.png"]
    assert res.dropped == {"finding other than No Finding": 2}
    assert len(res.problems) == 1 and res.problems[0].startswith("00000200_000.png")


def test_read_nih_keep_other(tiny_nih):
    res = read_nih(tiny_nih, keep_other=True)
    labels = {r["original_file"]: r["label"] for r in res.rows}
    assert labels["00000001_000.png"] == "cardiomegaly"
    assert labels["00000001_001.png"] == "cardiomegaly+emphysema"


def test_read_nih_errors(tmp_path):
    with pytest.raises(DataError, match="Data_Entry_2017.csv"):
        read_nih(tmp_path)
    write_csv(tmp_path / "Data_Entry_2017.csv", ["Image Index", "Patient ID"], [["00000001_000.png", "1"]])
    with pytest.raises(DataError, match="Finding Labels"):
        read_nih(tmp_path)


@pytest.mark.parametrize(("value", "patient"), [
    (1281, "nih-00001281"), ("1281", "nih-00001281"), ("00001281", "nih-00001281"),
    ("00001281_000.png", "nih-00001281"), ("images_002/images/00030805_000.png", "nih-00030805"),
])
def test_nih_patient_id(value, patient):
    assert nih_patient_id(value) == patient


@pytest.mark.parametrize("value", ["", "abc", "123456789", "1281_000.png"])
def test_nih_patient_id_rejects(value):
    with pytest.raises(DataError):
        nih_patient_id(value)


def test_nih_patient_id_matches_every_shared_nih_row(shared_rows_m):
    nih = [r for r in shared_rows_m if r["source"] == "nih"]
    assert len(nih) > 300
    assert [r for r in nih if nih_patient_id(origin_file(r)) != r["patient_id"]] == []


def test_read_nih_on_shared_nih_names(tmp_path, shared_rows_m):
    """An index and folders holding every shared nih file name: the reader's patient ids match."""
    nih = [r for r in shared_rows_m if r["source"] == "nih"]
    entries = []
    for i, r in enumerate(nih):
        name = origin_file(r)
        entries.append(nih_entry(name, "No Finding", name.split("_")[0].lstrip("0"), "45"))
        folder = tmp_path / f"images_{i % 3 + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, entries)
    res = read_nih(tmp_path)
    assert res.missing == [] and res.problems == []
    got = {r["original_file"]: (r["label"], r["patient_id"]) for r in res.rows}
    assert got == {origin_file(r): (r["label"], r["patient_id"]) for r in nih}


def test_cohen_and_nih_numeric_ids_never_merge(tiny_cohen, tiny_nih):
    rows = read_cohen(tiny_cohen).rows + read_nih(tiny_nih).rows
    ids = {r["patient_id"] for r in rows}
    assert "cohen-3" in ids and "nih-00000003" in ids
    assert find_label_conflicts(rows) == []  # cohen-3 and nih-00000003 are different people


# --------------------------------------------------------------------------------------------
# Manifest writing and reading, checks
# --------------------------------------------------------------------------------------------


def test_write_manifest_relative_paths_and_column_order(tmp_path):
    img = png(tmp_path / "data" / "images" / "a.png", 1)
    rows = [{"finding": "COVID-19", "path": str(img), "label": "covid", "patient_id": "cohen-1",
             "source": "cohen", "view": "PA", "age_group": "adult", "sex": "M"}]
    out = write_manifest(rows, tmp_path / "data" / "manifests" / "m.csv")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        written = list(reader)
        header = reader.fieldnames
    assert header == [*MANIFEST_COLUMNS, "finding", "sex"]
    assert written[0]["path"] == "../images/a.png"
    assert not [p for p in out.parent.iterdir() if p.name != "m.csv"]  # no temp file left
    back = load_manifest_rows(out)
    assert Path(back[0]["path"]) == img


def test_relative_only_below_a_common_folder():
    assert relative_if_possible("/a/b/c.png", "/a/d") == "../b/c.png"
    assert relative_if_possible("/x/c.png", "/a/d") == "/x/c.png"


def test_write_manifest_rejects_empty_and_incomplete(tmp_path):
    with pytest.raises(DataError, match="at least one row"):
        write_manifest([], tmp_path / "m.csv")
    with pytest.raises(UsageError, match="'path' and a 'label'"):
        write_manifest([{"path": "a.png"}], tmp_path / "m.csv")


def test_load_manifest_rows_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_manifest_rows(tmp_path / "none.csv")
    write_csv(tmp_path / "bad.csv", ["file", "label"], [["a.png", "covid"]])
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_manifest_rows(tmp_path / "bad.csv")


def test_find_duplicate_files(tmp_path):
    a = tmp_path / "cohen" / "a.png"
    b = tmp_path / "nih" / "b.png"
    c = tmp_path / "nih" / "c.png"
    d = tmp_path / "nih" / "d.png"
    for p, data in ((a, b"same-bytes"), (b, b"same-bytes"), (c, b"diff-bytes"), (d, b"x")):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    rows = [
        {"path": str(a), "label": "covid", "source": "cohen", "patient_id": "cohen-1"},
        {"path": str(b), "label": "normal", "source": "nih", "patient_id": "nih-00000001"},
        {"path": str(c), "label": "normal", "source": "nih", "patient_id": "nih-00000002"},
        {"path": str(d), "label": "normal", "source": "nih", "patient_id": "nih-00000003"},
        {"path": str(d), "label": "normal", "source": "nih", "patient_id": "nih-00000003"},
        {"path": str(tmp_path / "absent.png"), "label": "normal", "source": "nih", "patient_id": "nih-4"},
    ]
    groups = find_duplicate_files(rows)
    assert len(groups) == 2
    by_paths = {frozenset(g.paths): g for g in groups}
    cross = by_paths[frozenset({str(a), str(b)})]
    assert cross.cross_source and not cross.repeated_path
    assert sorted(cross.labels) == ["covid", "normal"]
    repeated = by_paths[frozenset({str(d)})]
    assert repeated.repeated_path and len(repeated.paths) == 2
    assert find_duplicate_files(rows[2:4]) == []


def test_find_label_conflicts():
    rows = [
        {"path": "1", "label": "covid", "patient_id": "cohen-173"},
        {"path": "2", "label": "normal", "patient_id": "cohen-173"},
        {"path": "3", "label": "covid", "patient_id": "cohen-173"},
        {"path": "4", "label": "normal", "patient_id": "nih-00000173"},
        {"path": "5", "label": "covid", "patient_id": ""},
        {"path": "6", "label": "normal"},
    ]
    conflicts = find_label_conflicts(rows)
    assert [(c.patient_id, c.labels) for c in conflicts] == [("cohen-173", (("covid", 2), ("normal", 1)))]


def test_age_group():
    assert [age_group(v) for v in ("17", "18", "", "058Y", "006M", "45.0", None, "n/a")] == \
        ["pediatric", "adult", "unknown", "adult", "pediatric", "adult", "unknown", "unknown"]


# --------------------------------------------------------------------------------------------
# The paper's composition, on the shared manifest
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_abs(shared_rows_m) -> list[dict[str, str]]:
    return load_manifest_rows(CXR_MANIFEST)


def test_load_shared_manifest_paths_exist(shared_abs):
    assert all(Path(r["path"]).is_file() for r in shared_abs)
    assert Path(shared_abs[0]["path"]).is_relative_to(CXR.resolve())


def test_paper_counts_and_sources(shared_abs):
    comp = compose_paper(shared_abs, n_covid=140, n_normal=939, normal_source="kermany", seed=0)
    labels = Counter(r["label"] for r in comp.rows)
    assert labels == {"covid": 140, "normal": 939}
    assert {r["source"] for r in comp.normal} == {"mooney"}
    assert len({r["path"] for r in comp.normal}) == 939
    assert comp.available_covid == sum(r["label"] == "covid" for r in shared_abs)


def test_paper_pa_first(shared_abs):
    covid = [r for r in shared_abs if r["label"] == "covid"]
    n_pa = sum(r["view"] == "PA" for r in covid)
    n_ap = sum(r["view"] == "AP" for r in covid)
    assert n_pa >= 140  # the shared set has enough PA images for the paper's 140
    comp = compose_paper(shared_abs, n_normal=10)
    assert {r["view"] for r in comp.covid} == {"PA"}
    more = compose_paper(shared_abs, n_covid=n_pa + 5, n_normal=10, seed=3)
    assert Counter(r["view"] for r in more.covid) == {"PA": n_pa, "AP": 5}
    most = compose_paper(shared_abs, n_covid=n_pa + n_ap + 2, n_normal=10, seed=3)
    assert Counter(r["view"] for r in most.covid) == {"PA": n_pa, "AP": n_ap, "AP Supine": 2}


def test_paper_takes_whole_patients(shared_abs):
    comp = compose_paper(shared_abs, n_covid=140, n_normal=939, seed=5)
    pa_per_patient = Counter(r["patient_id"] for r in shared_abs if r["label"] == "covid" and r["view"] == "PA")
    taken = Counter(r["patient_id"] for r in comp.covid)
    cut = [p for p, n in taken.items() if n != pa_per_patient[p]]
    assert len(cut) <= 1  # only the last patient drawn may be cut short
    normal_per_patient = Counter(r["patient_id"] for r in shared_abs if r["source"] == "mooney")
    taken_n = Counter(r["patient_id"] for r in comp.normal)
    assert len([p for p, n in taken_n.items() if n != normal_per_patient[p]]) <= 1


def test_paper_same_seed_same_rows_other_seed_other_rows(shared_abs):
    a = compose_paper(shared_abs, seed=0).rows
    b = compose_paper(shared_abs, seed=0).rows
    shuffled = list(shared_abs)
    random.Random(1).shuffle(shuffled)
    c = compose_paper(shuffled, seed=0).rows  # the draw does not depend on the input order
    d = compose_paper(shared_abs, seed=1).rows
    assert [r["path"] for r in a] == [r["path"] for r in b] == [r["path"] for r in c]
    assert {r["path"] for r in a if r["label"] == "covid"} != {r["path"] for r in d if r["label"] == "covid"}
    assert {r["path"] for r in a if r["label"] == "normal"} != {r["path"] for r in d if r["label"] == "normal"}


def test_paper_adult_control_and_nih(shared_abs):
    n_adult = sum(r["label"] == "normal" and r["source"] in ("nih", "cohen") for r in shared_abs)
    comp = compose_paper(shared_abs, n_covid=140, n_normal=n_adult, normal_source="nih+cohen")
    assert {r["source"] for r in comp.normal} == {"nih", "cohen"}
    assert {r["age_group"] for r in comp.rows} == {"adult"}
    warnings = confounding_warnings(comp.rows)
    assert not any("coincide" in w for w in warnings)
    assert any(w.startswith("source nih occurs only in class normal") for w in warnings)
    nih_only = compose_paper(shared_abs, n_covid=10, n_normal=50, normal_source="nih")
    assert {r["source"] for r in nih_only.normal} == {"nih"}
    assert len(compose_paper(shared_abs, n_normal=5, normal_source="mooney").normal) == 5


def test_paper_confounding_warning(shared_abs):
    comp = compose_paper(shared_abs)
    (first, *_) = confounding_warnings(comp.rows)
    assert first.startswith("class, source and age group coincide")
    assert "covid = cohen adult" in first and "normal = mooney pediatric" in first


def test_paper_not_enough(shared_abs):
    n_covid = sum(r["label"] == "covid" for r in shared_abs)
    with pytest.raises(DataError, match=f"got {n_covid} available"):
        compose_paper(shared_abs, n_covid=n_covid + 1)
    n_nih = sum(r["label"] == "normal" and r["source"] == "nih" for r in shared_abs)
    with pytest.raises(DataError, match=f"got {n_nih} available"):
        compose_paper(shared_abs, n_normal=n_nih + 1, normal_source="nih")
    with pytest.raises(UsageError, match="--normal-source"):
        compose_paper(shared_abs, normal_source="chexpert")
    with pytest.raises(UsageError, match="≥ 0"):
        compose_paper(shared_abs, n_covid=-1)


def test_duplicates_in_shared_manifest_include_its_repeated_paths(shared_abs):
    """Paths the shared manifest lists more than once must come back as repeated-path groups."""
    repeated = {p for p, n in Counter(r["path"] for r in shared_abs).items() if n > 1}
    groups = find_duplicate_files(shared_abs)
    assert repeated  # the shared manifest lists one Cohen image under four origins
    assert {g.paths[0] for g in groups if g.repeated_path} == repeated
