"""Start-up cost: `jstorrent get` without a rich view must not import rich, httpx and friends.

Each costs tens of milliseconds before the first connection (httpx alone about 90 ms, as it loads
rich, pygments and click for its own command line); docs/performance.md has the figures. rich is for
the live view on a terminal, httpx for the first HTTP tracker announce, hypothesis only for tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"rich", "httpx", "httpcore", "pygments", "hypothesis"}

# Runs the console script's main() on a torrent that does not exist: `get` imports everything a
# download needs (the session, the display) and then fails with "no such file" (exit status 3).
PROBE = """
import sys
from jstorrent_cli.cli import main
try:
    main(["get", FLAG, MISSING])
except SystemExit as exc:
    code = exc.code
print(code)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
print(" ".join(sorted(name for name in sys.modules if name.startswith("jstorrent_cli."))))
"""


def loaded_by_get(flag: str, tmp_path: Path) -> tuple[int, set[str], set[str]]:
    missing = str(tmp_path / "missing.torrent")
    code = PROBE.replace("FLAG", repr(flag)).replace("MISSING", repr(missing))
    # cwd: a folder of no package, so the installed jstorrent_cli is the one imported
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          check=True, timeout=60)
    status, top, ours = proc.stdout.splitlines()
    return int(status), set(top.split()), set(ours.split())


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_get_without_a_live_view_imports_no_heavy_module(flag: str, tmp_path: Path) -> None:
    status, top, ours = loaded_by_get(flag, tmp_path)
    assert status == 3  # the missing file was reached: the whole `get` path was imported before it
    assert {"jstorrent_cli.tasks.session", "jstorrent_cli.tasks.tracker", "jstorrent_cli.ui.display"} <= ours
    assert "trio" in top
    assert top & HEAVY == set()


def test_the_tracker_http_client_loads_httpx_without_its_command_line(tmp_path: Path) -> None:
    # httpx's own CLI module pulls in rich, pygments and click; an HTTP announce needs none of them.
    code = (
        "import sys\n"
        "from jstorrent_cli.config import DEFAULT_CONFIG\n"
        "from jstorrent_cli.tasks.tracker import open_http_client\n"
        "before = 'httpx' in sys.modules\n"
        "client = open_http_client(DEFAULT_CONFIG, trust_env=False)\n"
        "import httpx\n"
        "print(before, type(client).__name__, 'httpx._main' in sys.modules, callable(httpx.main))\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          check=True, timeout=60)
    first, top = proc.stdout.splitlines()
    assert first == "False AsyncClient False True"  # httpx came with the client, its `main` is a stub
    assert top.split() and set(top.split()) & {"rich", "pygments", "click"} == set()
