"""`ots` command line: dispatches each verb to its CLI module (`ots.commands.*`, `ots.bench`).

Only the module of the verb being run is imported (torch and friends take seconds to import): `ots --help`
and `ots --version` import nothing heavy, and `python -m ots` runs from a bare source tree (e.g. on a GPU box
with torch only).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ots import __version__
from ots.argparsing import ArgumentParser
from ots.errors import OTSError, one_line

# verb -> (the module whose `add_commands(subparsers)` registers it, its one-line help for `ots --help`).
COMMANDS = {
    "info": ("ots.commands.info", "parameter counts of the map and potential (reference sizes by default)"),
    "bench": ("ots.bench", "benchmarks (JSON output)"),
    "upscale": ("ots.commands.upscale", "upscale images with a trained map (any size, tiled)"),
    "data": ("ots.commands.data", "datasets: demo set, Parquet shards, inspection"),
    "evaluate": ("ots.commands.evaluate", "PSNR/SSIM/LPIPS/FID/SWD of bicubic vs trained maps on the val pairs"),
    "fit": ("ots.commands.fit", "train in one process (no Ray/MLflow) with val SWD/PSNR curves vs bicubic"),
    "curves": ("ots.commands.fit", "plot the val SWD/PSNR curves of several `ots fit` runs in one figure"),
    "export": ("ots.commands.export", "export a trained map to ONNX (dynamic size), verified against PyTorch"),
}
COMMAND_MODULES = list(dict.fromkeys(m for m, _ in COMMANDS.values()))


def _verb(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(verb: str | None = None, full: bool = True) -> argparse.ArgumentParser:
    """The parser; with ``full=False`` only ``verb``'s module is imported (the others are listed by name)."""
    parser = ArgumentParser(
        prog="ots", description="OTS: unpaired image super-resolution with neural optimal transport maps."
    )
    parser.add_argument("--version", action="version", version=f"ots {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {m for n, (m, _) in COMMANDS.items() if full or n == verb}  # a module may register several verbs
    done: set[str] = set()
    for name, (module, help_) in COMMANDS.items():
        if module in wanted:
            if module not in done:
                importlib.import_module(module).add_commands(sub)
                done.add(module)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_verb(argv), full=False)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (`ots bench env | head`) fails here, inside the try, not at exit
        return code
    except BrokenPipeError:
        # the reader went away: what it wanted was printed; no traceback, and nothing left for Python to flush
        # into the closed pipe at exit (the recipe of Python's `signal` docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a producer cut off by `head`
    except OTSError as e:
        print(f"ots: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ots: interrupted", file=sys.stderr)
        return 130
