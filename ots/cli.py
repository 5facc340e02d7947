"""`ots` command line. Each feature module contributes its sub-commands through `add_commands(sub)`.

Heavy optional packages are imported lazily inside the commands, so `python -m ots` runs from a bare
source tree (e.g. on a GPU box with torch only).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ots.errors import OTSError

# Modules with an `add_commands(subparsers)` function; each registers its own verbs.
COMMAND_MODULES = [
    "ots.models",
    "ots.bench",
    "ots.infer",
    "ots.data.cli",
    "ots.evaluate",
    "ots.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ots", description="OTS: unpaired image super-resolution with neural optimal transport maps."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OTSError as e:
        print(f"ots: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ots: interrupted", file=sys.stderr)
        return 130
