"""`ots upscale`: the command line over :func:`ots.infer.upscale_files` (Real-ESRGAN-style flags)."""

from __future__ import annotations

import argparse
import sys

from ots import infer
from ots.errors import ConfigError, InferenceError, one_line
from ots.infer import check_writable, collect_inputs, output_paths
from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, resolve_device, resolve_precision

__all__ = ["add_commands", "add_tiling_args"]


def add_tiling_args(p: argparse.ArgumentParser, tile: int = DEFAULT_TILE, overlap: int | None = DEFAULT_OVERLAP
                     ) -> None:
    p.add_argument("--tile", type=int, default=tile, help=f"tile size in LR px, 0 = whole image (default {tile})")
    default = f"{overlap}" if overlap is not None else f"min({DEFAULT_OVERLAP}, tile / 4)"
    p.add_argument("--overlap", type=int, default=overlap,
                   help=f"LR px shared by neighbouring tiles; the outer quarter is context only (default {default})")
    p.add_argument("--batch-tiles", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on CUDA, fp32 on CPU")


def add_commands(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images with a trained map (any size, tiled)",
                       description="Upscale images with a trained map (any size, tiled). Real-ESRGAN-style flags.")
    p.add_argument("inputs", nargs="*", help="image files and/or folders")
    p.add_argument("-i", "--input", action="append", default=[], dest="input_opts", metavar="PATH",
                   help="an input image or folder (repeatable; same as a positional input)")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", "--model", "--model-path", dest="checkpoint", required=True,
                   help="the map: a checkpoint file or storage URI (file://, s3://); a registry model is "
                        "fetched first: python -m pipelines.models fetch models:/<name>@<alias> -o map.pt")
    p.add_argument("-s", "--outscale", type=float, default=None,
                   help="final upscaling factor (default: the map's); other values resize the map's output")
    p.add_argument("--suffix", default=None,
                   help="folder output names are <name>_<suffix>.<ext> (default: x<outscale>; '' = no suffix)")
    p.add_argument("--ext", default="png", choices=["auto", "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"],
                   help="folder output format (default png, lossless and 16-bit capable; auto = the input's)")
    p.add_argument("--overwrite", action="store_true", help="allow an output to replace an input file")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse images whose estimated peak memory is larger (default: the memory available now)")
    add_tiling_args(p, overlap=None)
    p.add_argument("--fp32", action="store_true", help="fp32 inference (same as --precision fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_upscale)


def _cmd_upscale(args) -> int:
    inputs = list(args.inputs) + list(args.input_opts)
    if not inputs:
        raise InferenceError("no input images given (positional paths or -i/--input)")
    if args.outscale is not None and args.outscale <= 0:
        raise ConfigError(f"--outscale must be positive, got {args.outscale}")
    if args.max_memory_gb is not None and args.max_memory_gb <= 0:
        raise ConfigError(f"--max-memory-gb must be positive, got {args.max_memory_gb}")
    files = collect_inputs(inputs)  # fail on bad inputs before loading the model
    # the checks upscale_files repeats, here before the (slow) model load: no work is wasted. The default
    # suffix names the map's scale, unknown until the model is loaded: then only folders are checked here.
    targets = output_paths(files, args.output, args.outscale or 1, suffix=args.suffix if args.suffix is not None
                           or args.outscale else "", ext=args.ext,
                           overwrite=args.overwrite or (args.suffix is None and not args.outscale))
    check_writable(targets)
    overlap = args.overlap if args.overlap is not None else min(DEFAULT_OVERLAP, (args.tile or 0) // 4)
    check_tiling(args.tile or None, overlap)
    device = resolve_device(args.device)
    precision = "fp32" if args.fp32 else args.precision
    resolve_precision(precision, device)
    model = infer.load_map(args.checkpoint, device=str(device))

    def report(path, err) -> None:
        print(f"ots: error: {one_line(err)}", file=sys.stderr, flush=True)

    max_memory = int(args.max_memory_gb * (1 << 30)) if args.max_memory_gb else None
    infer.upscale_files(model, files, args.output, progress=not args.no_progress, outscale=args.outscale,
                  suffix=args.suffix, ext=args.ext, overwrite=args.overwrite, max_memory=max_memory,
                  on_error=report, on_written=print, tile=args.tile or None, overlap=overlap, device=device,
                  precision=precision, batch_tiles=args.batch_tiles)
    return 0
