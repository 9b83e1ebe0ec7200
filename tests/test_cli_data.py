"""`xrayfx data …`: exit codes, messages and the manifests written."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import CXR_MANIFEST, ROOT, run_cli_inprocess as run

COMMANDS = ("cohen", "kermany", "nih", "paper", "sources")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (3, 3), index % 256).save(path)


@pytest.fixture
def cohen_dir(tmp_path):
    root = tmp_path / "covid-chestxray-dataset"
    header = ["patientid", "sex", "age", "finding", "view", "modality", "folder", "filename"]
    rows = [
        ["1", "M", "65", "COVID-19", "PA", "X-ray", "images", "p1-a.jpg"],
        ["1", "M", "65", "COVID-19", "AP", "X-ray", "images", "p1-b.jpg"],
        ["2", "F", "50", "COVID-19, ARDS", "AP Supine", "X-ray", "images", "p2-a.jpg"],
        ["3", "F", "44", "No Finding", "PA", "X-ray", "images", "p3-a.jpg"],
        ["3", "F", "44", "COVID-19", "PA", "X-ray", "images", "p3-b.jpg"],
        ["4", "M", "70", "COVID-19", "PA", "X-ray", "images", "lost-1.jpg"],
        ["5", "M", "70", "COVID-19", "PA", "X-ray", "images", "lost-2.jpg"],
        ["6", "M", "70", "SARS", "PA", "X-ray", "images", "p6-a.jpg"],
    ]
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    for i, name in enumerate(["p1-a.jpg", "p1-b.jpg", "p2-a.jpg", "p3-a.jpg", "p3-b.jpg", "p6-a.jpg"]):
        png(root / "images" / name, i * 10)
    return root


@pytest.fixture
def kermany_dir(tmp_path):
    root = tmp_path / "kermany"
    for i, rel in enumerate([
        "chest_xray/train/NORMAL/IM-0115-0001.jpeg", "chest_xray/train/NORMAL/IM-0117-0001.jpeg",
        "chest_xray/train/NORMAL/NORMAL2-IM-1427-0001.jpeg", "chest_xray/test/NORMAL/IM-0001-0001.jpeg",
        "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg", "chest_xray/val/NORMAL/IM-0629-0001-0002.jpeg",
    ]):
        png(root / rel, 100 + i)
    return root


def test_data_help_lists_commands(capsys):
    code, out, _ = run(["data", "--help"], capsys)
    assert code == 0
    for cmd in COMMANDS:
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_example(cmd, capsys):
    code, out, _ = run(["data", cmd, "--help"], capsys)
    assert code == 0
    assert "Example:" in out and f"xrayfx data {cmd}" in out


def test_data_cohen_writes_manifest_and_lists_missing(cohen_dir, tmp_path, capsys):
    out_csv = cohen_dir / "cohen.csv"
    code, out, err = run(["data", "cohen", str(cohen_dir), "-o", str(out_csv)], capsys)
    assert code == 0, err
    rows = read_rows(out_csv)
    assert Counter(r["label"] for r in rows) == {"covid": 4, "normal": 1}
    assert {r["path"] for r in rows} >= {"images/p1-a.jpg", "images/p3-a.jpg"}  # relative to the manifest
    assert all((out_csv.parent / r["path"]).is_file() for r in rows)
    assert "2 file(s)" in err and "images/lost-1.jpg" in err and "images/lost-2.jpg" in err
    assert "cohen-3" in err  # the patient with a COVID and a No Finding image is reported
    assert "identical" not in err


def test_data_cohen_keep_other_and_views(cohen_dir, capsys):
    out_csv = cohen_dir / "all.csv"
    code, _, err = run(["data", "cohen", str(cohen_dir), "-o", str(out_csv), "--keep-other",
                        "--views", "PA", "--no-hash"], capsys)
    assert code == 0, err
    rows = read_rows(out_csv)
    assert {r["view"] for r in rows} == {"PA"}
    assert "sars" in {r["label"] for r in rows}


def test_data_cohen_bad_folder_exit_2(tmp_path, capsys):
    code, _, err = run(["data", "cohen", str(tmp_path), "-o", str(tmp_path / "x.csv")], capsys)
    assert code == 2
    assert "metadata.csv" in err and "fix:" in err
    assert not (tmp_path / "x.csv").exists()


def test_data_kermany(kermany_dir, capsys):
    out_csv = kermany_dir / "k.csv"
    code, out, err = run(["data", "kermany", str(kermany_dir), "-o", str(out_csv)], capsys)
    assert code == 0, err
    rows = {Path(r["path"]).name: r for r in read_rows(out_csv)}
    assert rows["IM-0629-0001-0002.jpeg"]["patient_id"] == "mooney-IM-0629"
    assert rows["IM-0629-0001-0002.jpeg"]["split"] == "val"
    assert rows["person1_bacteria_1.jpeg"]["label"] == "pneumonia"
    assert rows["person1_bacteria_1.jpeg"]["pneumonia_type"] == "bacterial"
    assert "missing files: none" in out


def test_data_kermany_reports_identical_files(kermany_dir, capsys):
    src = kermany_dir / "chest_xray/train/NORMAL/IM-0115-0001.jpeg"
    (kermany_dir / "chest_xray/test/NORMAL/IM-0200-0001.jpeg").write_bytes(src.read_bytes())
    code, _, err = run(["data", "kermany", str(kermany_dir), "-o", str(kermany_dir / "k.csv")], capsys)
    assert code == 0
    assert "1 group(s) of identical files" in err and "IM-0200-0001.jpeg" in err


def test_data_nih(tmp_path, capsys):
    root = tmp_path / "nih"
    root.mkdir()
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                    "Patient Gender", "View Position"])
        w.writerow(["00000005_000.png", "No Finding", "0", "5", "69", "F", "PA"])
        w.writerow(["00000006_000.png", "No Finding", "0", "6", "15", "M", "AP"])
        w.writerow(["00000007_000.png", "Mass", "0", "7", "40", "M", "PA"])
        w.writerow(["00000008_000.png", "No Finding", "0", "8", "40", "M", "PA"])
    png(root / "images_001" / "images" / "00000005_000.png", 1)
    png(root / "images_004" / "00000006_000.png", 2)
    png(root / "images_004" / "00000007_000.png", 3)
    out_csv = tmp_path / "nih.csv"
    code, _, err = run(["data", "nih", str(root), "-o", str(out_csv)], capsys)
    assert code == 0, err
    rows = {r["patient_id"]: r for r in read_rows(out_csv)}
    assert set(rows) == {"nih-00000005", "nih-00000006"}
    assert rows["nih-00000006"]["age_group"] == "pediatric"
    assert rows["nih-00000005"]["path"] == "nih/images_001/images/00000005_000.png"
    assert "1 file(s)" in err and "00000008_000.png" in err


def test_data_sources(capsys):
    code, out, _ = run(["data", "sources"], capsys)
    assert code == 0
    for needle in ("github.com/ieee8023/covid-chestxray-dataset", "paultimothymooney/chest-xray-pneumonia",
                   "nihcc.app.box.com", "CC BY 4.0", "arXiv:2003.11597", "10.1016/j.cell.2018.02.010",
                   "10.1109/CVPR.2017.369", "does not download", "git clone", "kaggle datasets download"):
        assert needle in out, needle


needs_shared = pytest.mark.skipif(not CXR_MANIFEST.exists(), reason="../shared not present")


@needs_shared
def test_data_paper_manifest(tmp_path, capsys):
    out_csv = tmp_path / "paper.csv"
    code, out, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "-o", str(out_csv)], capsys)
    assert code == 0, err
    rows = read_rows(out_csv)
    assert Counter(r["label"] for r in rows) == {"covid": 140, "normal": 939}
    assert {r["view"] for r in rows if r["label"] == "covid"} == {"PA"}
    assert {r["source"] for r in rows if r["label"] == "normal"} == {"mooney"}
    # Relative paths in a manifest are relative to the manifest's folder, not to the current one.
    assert all((out_csv.parent / r["path"]).is_file() for r in rows)
    assert "coincide" in err
    assert "covid views taken: PA 140" in out


@needs_shared
def test_data_paper_seed_reproducible(tmp_path, capsys):
    outs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        outs[name] = tmp_path / f"{name}.csv"
        code, _, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--seed", seed, "--n-covid", "50",
                            "--n-normal", "60", "--no-hash", "-o", str(outs[name])], capsys)
        assert code == 0, err
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    assert outs["a"].read_bytes() != outs["c"].read_bytes()
    assert len(read_rows(outs["c"])) == 110


@needs_shared
def test_data_paper_too_many_exit_2(tmp_path, capsys):
    code, _, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--normal-source", "nih",
                        "--n-normal", "100000", "-o", str(tmp_path / "p.csv")], capsys)
    assert code == 2
    assert "100000" in err and "available" in err and "fix:" in err


@needs_shared
@pytest.mark.parametrize("choice, sources", [("nih", {"nih"}), ("nih+cohen", {"nih", "cohen"})])
def test_data_paper_adult_normals_take_all_available_without_n_normal(choice, sources, tmp_path, capsys):
    with open(CXR_MANIFEST, newline="") as f:
        available = sum(r["label"] == "normal" and r["source"] in sources for r in csv.DictReader(f))
    out_csv = tmp_path / "adult.csv"
    code, out, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--normal-source", choice,
                          "--no-hash", "-o", str(out_csv)], capsys)
    assert code == 0, err
    assert sum(r["label"] == "normal" for r in read_rows(out_csv)) == available
    assert f"took all {available} available normal images" in out
    code, out, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--normal-source", choice,
                          "--n-normal", "50", "--no-hash", "-o", str(out_csv)], capsys)
    assert code == 0 and sum(r["label"] == "normal" for r in read_rows(out_csv)) == 50
    assert "took all" not in out


@needs_shared
def test_data_paper_argument_errors_exit_2(tmp_path, cohen_dir, capsys):
    out = str(tmp_path / "p.csv")
    code, _, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--cohen", str(cohen_dir), "-o", out],
                       capsys)
    assert code == 2 and "either --manifest" in err
    code, _, err = run(["data", "paper", "-o", out], capsys)
    assert code == 2 and "got neither" in err
    code, _, err = run(["data", "paper", "--cohen", str(cohen_dir), "-o", out], capsys)
    assert code == 2 and "--kermany DIR" in err
    code, _, err = run(["data", "paper", "--manifest", str(CXR_MANIFEST), "--normal-source", "chexpert",
                        "-o", out], capsys)
    assert code == 2 and "chexpert" in err


def test_data_paper_from_folders(tmp_path, cohen_dir, kermany_dir, capsys):
    out_csv = tmp_path / "p.csv"
    code, out, err = run(["data", "paper", "--cohen", str(cohen_dir), "--kermany", str(kermany_dir),
                          "--n-covid", "3", "--n-normal", "4", "-o", str(out_csv)], capsys)
    assert code == 0, err
    rows = read_rows(out_csv)
    covid = [r for r in rows if r["label"] == "covid"]
    # two PA covid images are on disk (p1-a, p3-b); both come before the one AP image (p1-b)
    assert {Path(r["path"]).name for r in covid} == {"p1-a.jpg", "p3-b.jpg", "p1-b.jpg"}
    assert Counter(r["view"] for r in covid) == {"PA": 2, "AP": 1}
    assert Counter(r["source"] for r in rows if r["label"] == "normal") == {"mooney": 4}
    assert "lost-1.jpg" in err  # missing Cohen images are still listed


def test_missing_required_option_exit_2(tmp_path, capsys):
    code, _, _ = run(["data", "kermany", str(tmp_path)], capsys)
    assert code == 2


def test_console_script(tmp_path):
    exe = Path(sys.executable).with_name("xrayfx")
    if not exe.exists():
        pytest.skip(f"console script {exe} not installed")
    proc = subprocess.run([str(exe), "data", "sources"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ChestX-ray14" in proc.stdout
