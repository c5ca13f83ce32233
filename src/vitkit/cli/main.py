"""`vitkit` entry point. Each subcommand lives in its own module with
``register(subparsers)`` (adds its parser, sets ``func``); add new ones to COMMANDS.

Expected mistakes (bad names, missing files, bad input, an output that cannot be written)
print one line, ``vitkit: error: ...``, and exit 2 — no traceback. Ctrl-C exits 130.

Output piped into a reader that stops early (``vitkit models | head -1``): the closed pipe
ends the command quietly with exit status 141 (128 + SIGPIPE, what the shell reports for
a C tool killed by SIGPIPE) — not 0, since not all of the output was delivered, so a
``set -o pipefail`` script sees it as it would see ``cat``'s.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import UserError  # defined outside this module so `python -m vitkit.cli.main` catches it too
from ..utils.atomic import OutputWriteError
from ..utils.names import printable

# module names under vitkit.cli
COMMANDS = ["models", "demo", "train", "pretrain", "eval", "convert", "predict", "explain", "export", "features", "bench", "serve"]

EXPECTED_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                   PermissionError, OutputWriteError)

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vitkit", description="Vision Transformers: build, train, load, explain.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vitkit.cli.{name}").register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream it was
    created with: a later redirection (a test's capture, a caller swapping stderr) gets the lines, and a closed
    earlier stream never makes logging print "--- Logging error ---"."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def _say_library_notes() -> None:
    """What the library says on the ``vitkit`` logger (a half-precision checkpoint cast to fp32...) goes to
    stderr as ``vitkit: ...`` lines, once per message."""
    log = logging.getLogger("vitkit")
    if not any(getattr(h, "_vitkit_cli", False) for h in log.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("vitkit: %(message)s"))
        h._vitkit_cli = True
        log.addHandler(h)
    log.setLevel(logging.INFO)


def _run(argv: list[str] | None) -> int:
    _say_library_notes()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as e:
        print(f"vitkit: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130


def _stdout_to_devnull() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's last flush of the
    closed pipe at exit neither fails nor prints 'Exception ignored ... BrokenPipeError'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, or None)
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # python -m vitkit.cli.main
    sys.exit(main())
