"""The `wfctl` command line: a thin layer that parses options, calls `wfctl.api`, and prints.

`main` answers `--version` before importing anything heavy, then hands over to Typer.
Every `WfctlError` from the library becomes one sentence on stderr and its exit code
here, in one place; with `--json` the error is also a JSON document on stdout.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from wfctl import __version__

        sys.stdout.write(f"wfctl {__version__}\n")
        return
    if args in (["--help"], ["-h"]) and _print_cached_help():
        return
    from wfctl.cli.app import app
    from wfctl.cli.output import report_error
    from wfctl.errors import WfctlError

    try:
        app(args=args, prog_name="wfctl")
    except WfctlError as err:
        report_error(err, json_mode="--json" in args)
        sys.exit(int(err.exit_code))
    except KeyboardInterrupt:
        sys.stderr.write("wfctl: interrupted\n")
        sys.exit(130)
    except Exception as err:  # never a traceback for people; WFCTL_DEBUG=1 shows it
        if os.environ.get("WFCTL_DEBUG"):
            raise
        report_error(err, json_mode="--json" in args, internal=True)
        sys.exit(1)


def _print_cached_help() -> bool:
    """`wfctl --help` from help.txt, the text Typer renders for it (a test keeps the two
    equal): importing Typer to print a fixed page would cost most of the start-up time.

    Click wraps help to the terminal, up to 80 columns; on a narrower terminal Typer
    renders it instead.
    """
    import shutil
    from pathlib import Path

    if shutil.get_terminal_size().columns < 80:
        return False
    try:
        text = (Path(__file__).parent / "help.txt").read_text(encoding="utf-8")
    except OSError:
        return False
    sys.stdout.write(text)
    return True
