"""`jstorrent verify` as a user runs it: exit statuses, the damaged file named, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PIECE = 16 * 1024


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JSTORRENT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "jstorrent_cli", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.stat(path, follow_symlinks=False)
            out[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture
def download(tmp_path: Path) -> tuple[Path, Path]:
    """A payload folder made into a torrent by `jstorrent create`: (torrent, the -d folder)."""
    out_dir = tmp_path / "out"
    folder = out_dir / "payload"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(5 * PIECE + 123))
    (folder / "sub" / "b.bin").write_bytes(os.urandom(3 * PIECE - 123))  # ends on a piece boundary
    (folder / "z.bin").write_bytes(os.urandom(PIECE // 2))
    torrent = tmp_path / "payload.torrent"
    made = run("create", str(folder), "--piece-length", "16K", "-o", str(torrent))
    assert made.returncode == 0, made.stderr
    return torrent, out_dir


def test_an_intact_download_exits_0(download: tuple[Path, Path]) -> None:
    torrent, out_dir = download
    before = snapshot(out_dir)
    result = run("verify", str(torrent), "-d", str(out_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("| complete |") == 3
    assert snapshot(out_dir) == before


def test_a_corrupted_file_exits_32_and_is_named(download: tuple[Path, Path]) -> None:
    torrent, out_dir = download
    # a.bin is pieces 0-5 (its last piece shared with b.bin); flip a byte in piece 2, inside a.bin only.
    path = out_dir / "payload" / "a.bin"
    raw = bytearray(path.read_bytes())
    raw[2 * PIECE + 5] ^= 0x55
    path.write_bytes(bytes(raw))
    before = snapshot(out_dir)
    result = run("verify", str(torrent), "-d", str(out_dir))
    assert result.returncode == 32, result.stderr
    assert snapshot(out_dir) == before
    rows = {line.split("|")[3].split()[0]: line for line in result.stdout.splitlines() if line.count("|") == 3}
    assert "damaged" in rows["payload/a.bin"] and "1 of 6 pieces bad" in rows["payload/a.bin"]
    assert "complete" in rows["payload/sub/b.bin"] and "complete" in rows["payload/z.bin"]
    assert "payload/a.bin (damaged)" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_json_report_and_a_missing_file(download: tuple[Path, Path]) -> None:
    torrent, out_dir = download
    (out_dir / "payload" / "z.bin").unlink()
    before = snapshot(out_dir)
    result = run("verify", str(torrent), "-d", str(out_dir), "--json")
    assert result.returncode == 32
    assert snapshot(out_dir) == before  # the missing file was not created
    report = json.loads(result.stdout)
    by_path = {f["path"]: f for f in report["files"]}
    assert report["complete"] is False
    assert by_path["payload/z.bin"]["status"] == "missing" and by_path["payload/z.bin"]["size_on_disk"] is None
    assert by_path["payload/z.bin"]["index"] == 3
    # b.bin ends exactly on a piece boundary, z.bin is the last piece alone: b.bin is untouched.
    assert by_path["payload/sub/b.bin"]["status"] == "complete"
    assert report["pieces"]["missing"] == 1 and report["pieces"]["bad"] == 0


def test_a_missing_folder_is_not_found_and_creates_nothing(download: tuple[Path, Path], tmp_path: Path) -> None:
    torrent, _ = download
    result = run("verify", str(torrent), "-d", str(tmp_path / "nowhere"))
    assert result.returncode == 3
    assert "no such folder" in result.stderr and result.stdout == ""
    assert not (tmp_path / "nowhere").exists()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"x")
    assert run("verify", str(torrent), "-d", str(not_a_folder)).returncode == 16


def test_an_empty_folder_reports_every_file_missing(download: tuple[Path, Path], tmp_path: Path) -> None:
    torrent, _ = download
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("verify", str(torrent), "-d", str(empty), "--json")
    assert result.returncode == 32
    assert [f["status"] for f in json.loads(result.stdout)["files"]] == ["missing"] * 3
    assert os.listdir(empty) == []


@pytest.mark.parametrize(("selection", "status"), [("0", 28), ("4", 28), ("3-1", 28), ("x", 28)])
def test_bad_selections_are_bad_options(download: tuple[Path, Path], selection: str, status: int) -> None:
    torrent, out_dir = download
    result = run("verify", str(torrent), "-d", str(out_dir), "--select-file", selection)
    assert result.returncode == status
    assert "--select-file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_select_file_checks_only_the_selected_files(download: tuple[Path, Path]) -> None:
    torrent, out_dir = download
    (out_dir / "payload" / "z.bin").unlink()
    # b.bin (index 2) shares no piece with z.bin, but shares its first piece with a.bin, whose bytes
    # a selective download keeps in the parts file: without one, that piece is incomplete.
    result = run("verify", str(torrent), "-d", str(out_dir), "--select-file", "2", "--json")
    report = json.loads(result.stdout)
    assert [f["path"] for f in report["files"]] == ["payload/sub/b.bin"]
    assert result.returncode == 32 and report["files"][0]["status"] == "partial"
    result = run("verify", str(torrent), "-d", str(out_dir), "--select-file", "1-2")
    assert result.returncode == 0, result.stdout + result.stderr
