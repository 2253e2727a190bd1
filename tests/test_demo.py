"""`jstorrent demo`, the README's first command, through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_downloads_from_local_seeders_and_verifies() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JSTORRENT_DEBUG"}
    result = subprocess.run(
        [sys.executable, "-m", "jstorrent_cli", "demo", "--size", "16M", "--seeders", "2", "--slow-seeders", "1",
         "--json"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    final = records[-1]
    assert final["event"] == "result" and final["status"] == "ok", final
    assert final["verified_bytes"] == final["total_bytes"] == 16 * 1024 * 1024
    assert final["peers_used"] >= 2
    # Endgame duplicates are bounded per peer (Config.endgame_peer_requests): equal seeders must not
    # copy the whole tail (before that bound the demo wasted 14 % of its payload).
    assert final["wasted_bytes"] < 0.05 * final["total_bytes"], final
