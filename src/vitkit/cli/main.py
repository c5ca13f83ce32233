"""`vitkit` entry point. Each subcommand lives in its own module with
``register(subparsers)`` (adds its parser, sets ``func``); add new ones to COMMANDS.

Expected mistakes (bad names, missing files, bad input) print one line,
``vitkit: error: ...``, and exit 2 — no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import UserError  # defined outside this module so `python -m vitkit.cli.main` catches it too

# module names under vitkit.cli
COMMANDS = ["models", "demo", "train", "eval", "convert", "predict", "explain", "export", "features", "bench"]

EXPECTED_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                   PermissionError)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vitkit", description="Vision Transformers: build, train, load, explain.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vitkit.cli.{name}").register(sub)
    return parser


def _say_library_notes() -> None:
    """What the library says on the ``vitkit`` logger (a half-precision checkpoint cast to fp32...) goes to
    stderr as ``vitkit: ...`` lines, once per message."""
    log = logging.getLogger("vitkit")
    if not any(getattr(h, "_vitkit_cli", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("vitkit: %(message)s"))
        h._vitkit_cli = True
        log.addHandler(h)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _say_library_notes()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as e:
        print(f"vitkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m vitkit.cli.main
    sys.exit(main())
