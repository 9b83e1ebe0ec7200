"""Only regular files are read: FIFOs, sockets, devices and dangling links are skipped with a reason.

Every case runs in a child process with a timeout, so a regression (a read that
blocks on a FIFO or never ends on /dev/zero) fails the test instead of hanging it.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import CXR, MOBILENET_WEIGHTS, ROOT, absolute_rows, seed_cache, write_manifest

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")


def _special_files(folder):
    """A FIFO, a bound AF_UNIX socket and a dangling symlink, all named like images."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.png")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "socket.png"))
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    return sock


def _hash_in_child(data, timeout=60):
    """load_dataset in a child process: [(name, error or '')]; a hang fails by timeout."""
    code = textwrap.dedent(f"""
        import json, os
        from xrayfx.data.manifest import load_dataset
        ds = load_dataset({str(data)!r})
        print(json.dumps([[os.path.basename(str(r.path)), r.error or ""] for r in ds.records]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    import json

    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_manifest_rows_naming_special_files_are_skipped_not_read(tmp_path, shared_rows):
    sock = _special_files(tmp_path / "special")
    try:
        good = absolute_rows([r for r in shared_rows if r["source"] == "nih"][:1])
        rows = good + [{**good[0], "path": p} for p in (
            "/dev/zero", "/dev/null", str(tmp_path / "special" / "fifo.png"), str(tmp_path / "special" / "socket.png"),
            str(tmp_path / "special" / "dangling.png"), str(tmp_path / "special"),
        )]
        errors = _hash_in_child(write_manifest(tmp_path / "m.csv", rows))
    finally:
        sock.close()
    assert errors[os.path.basename(good[0]["path"])] == ""
    assert "character device" in errors["zero"] and "character device" in errors["null"]
    assert "named pipe (FIFO)" in errors["fifo.png"] and "socket" in errors["socket.png"]
    assert "dangling symlink" in errors["dangling.png"] and "nowhere.png" in errors["dangling.png"]
    assert "directory" in errors["special"]


def test_folder_input_lists_special_files_dangling_links_and_symlinked_folders(tmp_path, shared_rows):
    normal = tmp_path / "data" / "normal"
    sock = _special_files(normal)
    try:
        src = CXR / [r for r in shared_rows if r["source"] == "nih"][0]["path"]
        shutil.copy(src, normal / "real.png")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(src, elsewhere / "other.png")
        os.symlink(elsewhere, normal / "linked")
        os.symlink(normal / "real.png", normal / "alias.png")  # a symlink to a regular file is read
        (normal / "notes.txt").write_text("not an image, not listed\n")
        errors = _hash_in_child(tmp_path / "data")
    finally:
        sock.close()
    assert errors["real.png"] == "" and errors["alias.png"] == ""
    assert "symlinked folder" in errors["linked"]
    assert "dangling symlink" in errors["dangling.png"]
    assert "named pipe" in errors["fifo.png"] and "socket" in errors["socket.png"]
    assert "notes.txt" not in errors


def test_extract_cli_skips_dev_zero_and_a_fifo_and_lists_them(tmp_path, shared_rows, mobilenet_export):
    cache = seed_cache(tmp_path / "cache", mobilenet_export)
    os.mkfifo(tmp_path / "fifo.png")
    good = absolute_rows([r for r in shared_rows if r["source"] == "nih"][:2])
    rows = good + [{**good[0], "path": "/dev/zero"}, {**good[0], "path": str(tmp_path / "fifo.png")}]
    proc = subprocess.run(
        [sys.executable, "-m", "xrayfx", "extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
         "--data", str(write_manifest(tmp_path / "m.csv", rows)), "--cache-dir", str(cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 embedded" in proc.stdout and "2 skipped" in proc.stdout
    skipped = next((cache / "logs").rglob("skipped.csv"))
    with open(skipped, newline="") as f:
        reasons = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert "character device" in reasons["/dev/zero"] and "named pipe" in reasons[str(tmp_path / "fifo.png")]


def test_load_image_refuses_a_fifo_and_dev_zero_without_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # nobody writes to it: a plain open() would block for ever
    code = textwrap.dedent(f"""
        from xrayfx.exceptions import ImageDecodeError
        from xrayfx.data.images import decode_image, load_image
        from xrayfx.models.config import model_config
        prep = model_config("mobilenet", "none").preprocessing
        for call in (lambda: load_image({str(tmp_path / "pipe.png")!r}, prep), lambda: decode_image("/dev/zero")):
            try:
                call()
            except ImageDecodeError as exc:
                print(exc.reason)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    pipe, zero = proc.stdout.strip().splitlines()
    assert "named pipe" in pipe and "character device" in zero
