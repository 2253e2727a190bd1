"""The real entry point, run as a user runs it: exit statuses, one-line errors, no tracebacks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest

from jstorrent_cli.core import bencode

DATA = Path(__file__).parent / "data" / "torrents"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JSTORRENT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "jstorrent_cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jstorrent: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def make_payload(root: Path) -> Path:
    folder = root / "payload"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(100_000))
    (folder / "sub" / "b.bin").write_bytes(os.urandom(33_333))
    (folder / "empty.txt").write_bytes(b"")
    return folder


def libtorrent_view(data: bytes) -> tuple[str, int, int]:
    ti = lt.torrent_info(data)
    return str(ti.info_hashes().v1), ti.num_files(), ti.total_size()


def test_create_is_loaded_by_libtorrent_with_the_same_infohash(tmp_path: Path) -> None:
    folder = make_payload(tmp_path)
    out = tmp_path / "p.torrent"
    result = run("create", str(folder), "-t", "http://127.0.0.1:6969/announce", "-t",
                 "udp://127.0.0.1:6969/announce,http://127.0.0.2:80/a", "--piece-length", "16K",
                 "--comment", "hello", "--private", "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    top, spans = bencode.decode_with_spans(data)
    start, end = spans[b"info"]
    ours = hashlib.sha1(data[start:end]).hexdigest()
    assert ours in result.stdout
    lt_hash, lt_files, lt_size = libtorrent_view(data)
    assert lt_hash == ours
    assert lt_files == 3
    assert lt_size == 133_333
    info = top[b"info"]
    assert isinstance(info, dict)
    assert info[b"piece length"] == 16384
    assert info[b"private"] == 1
    assert top[b"announce-list"] == [[b"http://127.0.0.1:6969/announce"],
                                     [b"udp://127.0.0.1:6969/announce", b"http://127.0.0.2:80/a"]]
    # Every piece hash matches the concatenated payload in file-list order.
    payload = b"".join(
        (folder / "/".join(p.decode() for p in f[b"path"])).read_bytes()  # type: ignore[union-attr]
        for f in info[b"files"]  # type: ignore[union-attr]
    )
    pieces = info[b"pieces"]
    assert isinstance(pieces, bytes)
    assert len(pieces) == 20 * -(-len(payload) // 16384)
    for i in range(0, len(payload), 16384):
        assert pieces[i // 16384 * 20 : i // 16384 * 20 + 20] == hashlib.sha1(payload[i : i + 16384]).digest()


def test_create_single_file_and_info_json_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(70_000))
    out = tmp_path / "one.torrent"
    assert run("create", str(src), "-o", str(out)).returncode == 0
    lt_hash, _, _ = libtorrent_view(out.read_bytes())
    result = run("info", "--json", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["info_hash"] == lt_hash
    assert record["name"] == "one.bin"
    assert record["total_length"] == 70_000
    assert record["files"] == [{"index": 1, "path": "one.bin", "length": 70_000}]
    assert record["piece_count"] == -(-70_000 // record["piece_length"])


def test_create_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 1000)
    out = tmp_path / "x.torrent"
    out.write_bytes(b"precious")
    assert_one_line_error(run("create", str(src), "-o", str(out)), 13)
    assert out.read_bytes() == b"precious"
    assert run("create", str(src), "-o", str(out), "--force").returncode == 0
    assert out.read_bytes() != b"precious"


def test_create_skips_symlinks_out_of_the_folder(tmp_path: Path) -> None:
    folder = make_payload(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not share")
    (folder / "link.txt").symlink_to(secret)
    out = tmp_path / "p.torrent"
    result = run("create", str(folder), "-o", str(out))
    assert result.returncode == 0
    assert "symlink skipped" in result.stderr
    names = [f["path"] for f in json.loads(run("info", "--json", str(out)).stdout)["files"]]
    assert "link.txt" not in names and len(names) == 3


def test_info_human_output_lists_files_and_trackers() -> None:
    path = DATA / "base.torrent"
    result = run("info", str(path))
    assert result.returncode == 0, result.stderr
    lt_hash, _, _ = libtorrent_view(path.read_bytes())
    assert f"Info hash:   {lt_hash}" in result.stdout
    assert "Files:" in result.stdout


def test_info_magnet() -> None:
    h = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
    result = run("info", "--json", f"magnet:?xt=urn:btih:{h}&dn=hello&tr=udp%3A%2F%2F127.0.0.1%3A6969")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["info_hash"] == h
    assert record["name"] == "hello"
    assert record["trackers"] == ["udp://127.0.0.1:6969"]


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda d: str(d / "missing.torrent"), 3),
        (lambda d: str(d), 16),
        (lambda d: _write(d / "not.torrent", b"hello, world"), 25),
        (lambda d: _write(d / "trunc.torrent", (DATA / "base.torrent").read_bytes()[:100]), 25),
        (lambda d: _write(d / "random.torrent", os.urandom(10 * 1024 * 1024)), 25),
        (lambda d: _write(d / "list.torrent", b"li1ee"), 26),
        (lambda d: _write(d / "noinfo.torrent", b"d3:fooi1ee"), 26),
    ],
    ids=["missing", "directory", "not-bencode", "truncated", "random-10MB", "not-a-dict", "no-info"],
)
def test_info_bad_input_is_one_line_and_right_status(tmp_path: Path, make, status: int) -> None:  # type: ignore[no-untyped-def]
    assert_one_line_error(run("info", make(tmp_path)), status)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "args",
    [
        ["info"],
        ["info", "--bogus", "x"],
        ["nosuchcommand"],
        ["create", "README.md", "--piece-length", "1000"],
        ["create", "README.md", "--piece-length", "lots"],
        ["create", "README.md", "-t", "ftp://x/announce"],
    ],
)
def test_bad_flags_exit_28(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    assert_one_line_error(run(*args, cwd=tmp_path), 28)


def test_bad_magnet_exit_27() -> None:
    assert_one_line_error(run("info", "magnet:?xt=urn:btih:1234"), 27)


def test_create_missing_source_exit_3(tmp_path: Path) -> None:
    assert_one_line_error(run("create", str(tmp_path / "nope"), "-o", str(tmp_path / "o.torrent")), 3)
    assert not (tmp_path / "o.torrent").exists()


def test_create_empty_folder_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("create", str(tmp_path / "empty"), "-o", str(tmp_path / "o.torrent"))
    assert_one_line_error(result, 1)
    assert "nothing to share" in result.stderr


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("jstorrent")
    result = run("--help")
    assert result.returncode == 0 and "create" in result.stdout and "info" in result.stdout


def test_quiet_get_with_dead_trackers_prints_only_its_error_line(tmp_path: Path) -> None:
    """Tracker failures are logged as warnings; without a configured handler Python would print each one on
    stderr, through --quiet and across the live view. Only the final error line may appear."""
    payload = tmp_path / "one.bin"
    payload.write_bytes(os.urandom(40_000))
    torrent = tmp_path / "one.torrent"
    # Port 1 on loopback: connection refused at once, so every announce fails (HTTP and UDP).
    made = run("create", str(payload), "-t", "http://127.0.0.1:1/announce", "-t", "udp://127.0.0.1:1/announce",
               "-o", str(torrent))
    assert made.returncode == 0, made.stderr
    result = run("get", str(torrent), "-d", str(tmp_path / "out"), "-q", "--port", "0", "--listen", "127.0.0.1",
                 "--stall-timeout", "2")
    assert_one_line_error(result, 2)
    assert "tracker" not in result.stderr.split(":", 1)[0]  # the line is ours, not a logged warning
