"""`ots upscale`: the command line over :func:`ots.infer.upscale_files`, with Real-ESRGAN's flags and defaults.

Real-ESRGAN's ``inference_realesrgan.py`` flags work as there where they mean the same thing (``-i``, ``-o``
default ``results``, ``-n/--model_name``, ``--model_path``, ``-s/--outscale``, ``--suffix`` default ``out``,
``--ext`` default ``auto``, ``-t/--tile`` 0 = whole image, ``--tile_pad``, ``--fp32``, ``-g/--gpu-id``); its
options for features ots has not (GFPGAN faces, DNI denoise strength, pre-padding, a network for alpha) are
refused in one line rather than silently ignored. The older OTS spellings stay (``--checkpoint``, ``--model``,
``--overlap``, ``--device``, positional inputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ots import infer
from ots.checkpoint import MODELS_ENV, load_map, models_dir, named_map
from ots.device import resolve_device
from ots.errors import ConfigError, InferenceError, one_line
from ots.infer import DEFAULT_EXT, DEFAULT_SUFFIX, check_writable, collect_inputs, output_paths
from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, resolve_precision

__all__ = ["DEFAULT_INPUT", "DEFAULT_OUTPUT", "add_commands", "add_tiling_args"]

# Real-ESRGAN's defaults: read ./inputs when no input is named, write into ./results
DEFAULT_INPUT = "inputs"
DEFAULT_OUTPUT = "results"


def add_tiling_args(p: argparse.ArgumentParser, tile: int = DEFAULT_TILE, overlap: int | None = DEFAULT_OVERLAP,
                    short: bool = False) -> None:
    flags = ("-t", "--tile") if short else ("--tile",)
    p.add_argument(*flags, type=int, default=tile, help="tile size in LR px, 0 = whole image (default: %(default)s)")
    default = f"{overlap}" if overlap is not None else f"min({DEFAULT_OVERLAP}, tile / 4)"
    p.add_argument("--overlap", type=int, default=overlap,
                   help=f"LR px shared by neighbouring tiles; the outer quarter is context only (default {default})")
    p.add_argument("--batch-tiles", type=int, default=4, help="tiles per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on CUDA, fp32 on CPU")


class _NotInOTS(argparse.Action):
    """A Real-ESRGAN option for a feature ots has not: one line instead of 'unrecognized arguments'."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"ots: error: {option_string} is a Real-ESRGAN option ots does not have ({self.help})\n")


def add_commands(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images with a trained map (any size, tiled)",
                       description="Upscale images with a trained map (any size, tiled). Takes Real-ESRGAN's "
                                   "inference_realesrgan.py flags and defaults (README: 'ots upscale').")
    p.add_argument("inputs", nargs="*", help=f"image files and/or folders (default: ./{DEFAULT_INPUT})")
    p.add_argument("-i", "--input", action="append", default=[], dest="input_opts", metavar="PATH",
                   help="an input image or folder (repeatable; same as a positional input)")
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                   help="output folder, or a file for one input (default: %(default)s)")
    p.add_argument("--model_path", "--model-path", "--checkpoint", "--model", dest="checkpoint", default=None,
                   metavar="FILE", help="the map: a checkpoint file or storage URI (file://, s3://)")
    p.add_argument("-n", "--model_name", "--model-name", dest="model_name", default=None,
                   metavar="NAME", help=f"a named map: NAME.pt in ${MODELS_ENV} (now {models_dir()}); put a "
                                        "registry model there with: python -m pipelines.registry fetch <URI> -n NAME")
    p.add_argument("-s", "--outscale", type=float, default=None,
                   help="final upscaling factor (default: the map's); other values resize the map's output")
    p.add_argument("--suffix", default=DEFAULT_SUFFIX,
                   help="folder output names are <name>_<suffix>.<ext> ('' = <name>.<ext>; default: %(default)s)")
    p.add_argument("--ext", default=DEFAULT_EXT, choices=["auto", "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"],
                   help="folder output format; auto = the input's, png keeps 16 bit (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="allow an output to replace an input file")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse images whose estimated peak memory is larger (default: the memory available now)")
    add_tiling_args(p, overlap=None, short=True)
    p.add_argument("--tile_pad", "--tile-pad", type=int, default=None,
                   help="Real-ESRGAN's tile padding P: neighbouring tiles share 2P LR px (= --overlap 2P)")
    p.add_argument("-g", "--gpu-id", "--gpu_id", type=int, default=None, help="CUDA device N (= --device cuda:N)")
    p.add_argument("--fp32", action="store_true", help="fp32 inference (same as --precision fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    refused = p.add_argument_group("Real-ESRGAN options for features ots has not (refused in one line)")
    for flags, why in ((("--face_enhance",), "GFPGAN face restoration"),
                       (("-dn", "--denoise_strength"), "DNI between two Real-ESRGAN networks"),
                       (("--pre_pad",), "pre-padding: tiles already see their neighbours' context"),
                       (("--alpha_upsampler",), "alpha is always upscaled with bicubic interpolation")):
        refused.add_argument(*flags, action=_NotInOTS, nargs=0 if flags[0] == "--face_enhance" else None,
                             metavar="X", help=why)
    p.set_defaults(func=_cmd_upscale)


def _inputs(args) -> list[str]:
    inputs = list(args.inputs) + list(args.input_opts)
    if inputs:
        return inputs
    if Path(DEFAULT_INPUT).is_dir():
        return [DEFAULT_INPUT]
    raise InferenceError(f"no input images given (positional paths, -i/--input, or a ./{DEFAULT_INPUT} folder)")


def _checkpoint(args) -> str:
    if args.checkpoint and args.model_name:
        raise ConfigError("give the map once: --model_path FILE or -n/--model_name NAME, not both")
    if args.model_name:
        return str(named_map(args.model_name))
    if args.checkpoint:
        return args.checkpoint
    raise ConfigError(f"no map given: --model_path FILE (a checkpoint or storage URI) or -n/--model_name NAME "
                      f"(NAME.pt in {models_dir()}, ${MODELS_ENV})")


def _overlap(args) -> int:
    if args.tile_pad is not None:
        if args.overlap is not None:
            raise ConfigError("--tile_pad P is --overlap 2P: give one of them")
        if args.tile_pad < 0:
            raise ConfigError(f"--tile_pad must be >= 0, got {args.tile_pad}")
        return 2 * args.tile_pad
    return args.overlap if args.overlap is not None else min(DEFAULT_OVERLAP, (args.tile or 0) // 4)


def _cmd_upscale(args) -> int:
    if args.outscale is not None and args.outscale <= 0:
        raise ConfigError(f"--outscale must be positive, got {args.outscale}")
    if args.max_memory_gb is not None and args.max_memory_gb <= 0:
        raise ConfigError(f"--max-memory-gb must be positive, got {args.max_memory_gb}")
    checkpoint = _checkpoint(args)
    files = collect_inputs(_inputs(args))  # fail on bad inputs before loading the model
    # the checks upscale_files repeats, here before the (slow) model load: no work is wasted
    check_writable(output_paths(files, args.output, suffix=args.suffix, ext=args.ext, overwrite=args.overwrite))
    overlap = _overlap(args)
    check_tiling(args.tile or None, overlap)
    if args.gpu_id is not None and args.device not in ("auto", f"cuda:{args.gpu_id}"):
        raise ConfigError(f"-g/--gpu-id {args.gpu_id} and --device {args.device} disagree: give one of them")
    device = resolve_device(f"cuda:{args.gpu_id}" if args.gpu_id is not None else args.device)
    precision = "fp32" if args.fp32 else args.precision
    resolve_precision(precision, device)
    model = load_map(checkpoint, device=str(device))

    def report(path, err) -> None:
        print(f"ots: error: {one_line(err)}", file=sys.stderr, flush=True)

    max_memory = int(args.max_memory_gb * (1 << 30)) if args.max_memory_gb else None
    infer.upscale_files(model, files, args.output, progress=not args.no_progress, outscale=args.outscale,
                        suffix=args.suffix, ext=args.ext, overwrite=args.overwrite, max_memory=max_memory,
                        on_error=report, on_written=print, tile=args.tile or None, overlap=overlap, device=device,
                        precision=precision, batch_tiles=args.batch_tiles)
    return 0
