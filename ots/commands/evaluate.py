"""`ots evaluate`: the command line over :mod:`ots.evaluate` and :mod:`ots.eval_report`."""

from __future__ import annotations

from ots.checkpoint import load_map
from ots.commands.upscale import add_tiling_args
from ots.device import resolve_device
from ots.errors import ConfigError
from ots.eval_report import markdown_table, write_report
from ots.evaluate import score_outputs, upscale_pairs
from ots.tiling import DEFAULT_OVERLAP

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM/LPIPS/FID/SWD of bicubic vs trained maps on the val pairs")
    p.add_argument("--data", required=True, help="prepared dataset (folder, file:// or s3:// URI)")
    p.add_argument("--checkpoint", required=True,
                   help="the OTS map: checkpoint file or storage URI (file://, s3://)")
    p.add_argument("--gan", default=None, help="the GAN baseline's map (same forms as --checkpoint)")
    p.add_argument("--out", default="outputs/evaluate", help="output folder (metrics.json, metrics.md, grid.png)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS backbone weights (path/URI; default: resolved)")
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"])
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (path/URI; default: resolved)")
    add_tiling_args(p, overlap=DEFAULT_OVERLAP)
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N val pairs only (0 = all)")
    p.add_argument("--grid-images", type=int, default=4)
    p.add_argument("--grid-crop", type=int, default=256, help="centre crop of each grid panel, HR px (0 = full)")
    p.add_argument("--crop-border", type=int, default=0,
                   help="PSNR/SSIM: shave this many HR px from every border (BasicSR's crop_border; default 0)")
    p.add_argument("--test-y-channel", "--y-channel", dest="y_channel", action="store_true",
                   help="PSNR/SSIM on the BT.601 Y channel (BasicSR's test_y_channel) instead of RGB")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from ots.data import read_val_pairs

    if args.grid_images < 1 or args.crop_border < 0:
        raise ConfigError(f"--grid-images must be >= 1 and --crop-border >= 0, got {args.grid_images}, "
                          f"{args.crop_border}")
    pairs = read_val_pairs(args.data)
    if args.max_images:
        pairs = pairs[: args.max_images]
    device = resolve_device(args.device)
    maps = {"ots": load_map(args.checkpoint, device)}
    if args.gan:
        maps["gan"] = load_map(args.gan, device)
    tile = args.tile or None
    outputs = upscale_pairs(pairs, maps, tile=tile, overlap=args.overlap, device=device, precision=args.precision,
                            batch_tiles=args.batch_tiles)
    results = score_outputs(pairs, outputs, lpips_weights=args.lpips_weights, lpips_net=args.lpips_net,
                            inception_weights=args.inception_weights, device=device,
                            crop_border=args.crop_border, y_channel=args.y_channel)
    results["tiling"] = {"tile": tile, "overlap": args.overlap}
    write_report(args.out, pairs, outputs, results, grid_images=args.grid_images, grid_crop=args.grid_crop or None)
    print(markdown_table(results), end="")
    return 0
