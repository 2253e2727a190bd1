"""Run `jstorrent get` several times in one process: the real entry point (`cli.main`, the function the
`jstorrent` console script calls) once per line of stdin, each line a JSON list of arguments.

Prints one JSON object per run: {"status": exit status, "stderr": what it printed there}. One
interpreter for many runs saves the ~0.5 s of start-up each child process would cost (the corpus tests
run dozens of downloads).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from jstorrent_cli import cli


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        argv = json.loads(line)
        err = io.StringIO()
        status = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(argv)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
        print(json.dumps({"status": status, "stderr": err.getvalue()}), flush=True)


if __name__ == "__main__":
    main()
