"""`ots export`: a trained map to ONNX (dynamic size), verified against PyTorch (:mod:`ots.export`)."""

from __future__ import annotations

import json

from ots.export import DEFAULT_ATOL, DEFAULT_OPSET, ExportError, export_checkpoint

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="export a trained map to ONNX (dynamic size), verified against PyTorch")
    p.add_argument("--checkpoint", required=True, help="map checkpoint file (e.g. outputs/train/final.pt)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--verify", type=int, default=3, help="random input sizes to check against eager (0: none)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest allowed |onnx - eager|")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    if args.verify < 0 or args.atol <= 0:
        raise ExportError("--verify must be >= 0 and --atol > 0")
    print(json.dumps(export_checkpoint(args.checkpoint, args.output, opset=args.opset, verify=args.verify,
                                       atol=args.atol)))
    return 0
