"""`ots info`: parameter counts of the map and potential (reference sizes by default)."""

from __future__ import annotations

from ots.models import REFERENCE_MAP, REFERENCE_POTENTIAL, build_map, build_potential, count_params

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    p = sub.add_parser("info", help="parameter counts of the map and potential (reference sizes by default)")
    p.add_argument("--blocks", type=int, default=REFERENCE_MAP["n_blocks"])
    p.add_argument("--features", type=int, default=REFERENCE_MAP["n_features"])
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--crop", type=int, default=REFERENCE_POTENTIAL["crop"], help="HR crop the potential sees")
    p.set_defaults(func=_info)


def _info(args) -> int:
    import json

    m = build_map({**REFERENCE_MAP, "n_blocks": args.blocks, "n_features": args.features, "scale": args.scale})
    f = build_potential({**REFERENCE_POTENTIAL, "crop": args.crop})
    print(json.dumps({"map": {"arch": "edsr", "params": count_params(m)},
                      "potential": {"arch": "resnet", "params": count_params(f)}}, indent=2))
    return 0
