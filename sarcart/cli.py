"""The ``sarcart`` command: one entry point, one subcommand per task.

Each subpackage registers its subcommands from its own light ``cli`` module (argument parsing
only; heavy imports happen inside the handlers so ``sarcart --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

import sarcart
from sarcart.errors import SarcartError

# subpackages whose ``cli`` module defines ``register(subparsers)``; order = order in ``sarcart --help``
# (a dotted entry names the module itself, e.g. the research-side ``cohort`` command of radiomics)
_COMMAND_PACKAGES = ("phantom", "io", "training", "inference", "service", "radiomics", "radiomics.cohort_cli",
                     "dose", "adapt")

console = Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sarcart",
        description="MRI-guided online adaptive radiotherapy of soft-tissue sarcoma (0.35 T MR-linac). "
        "Research software - NOT FOR CLINICAL USE.",
    )
    parser.add_argument("--version", action="version", version=f"sarcart {sarcart.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for pkg in _COMMAND_PACKAGES:
        name = f"sarcart.{pkg}" if "." in pkg else f"sarcart.{pkg}.cli"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except SarcartError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        return 2
    except OSError as exc:  # a path in the way, a full disk, no permission: name the path, no traceback
        if args.verbose:
            raise
        what = exc.strerror or str(exc)
        where = f" {exc.filename}" if exc.filename else ""
        hint = (" (a file stands where a folder is needed: choose another --out or move the file)"
                if isinstance(exc, (FileExistsError, NotADirectoryError)) else "")
        console.print(f"[bold red]error:[/bold red] cannot use{where}: {what}{hint}; run with -v for the traceback")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
