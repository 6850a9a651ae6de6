"""Command line: ``python -m train --preset embedded --output outputs/embedded`` (or ``hypersd-train``).

Configs are small YAML/JSON files over typed defaults (train/config.py): ``--preset`` picks one of
train/configs/, ``--config`` adds your own files, ``--set key=value`` overrides single values
(``--set stage_all.steps=50`` sets a key in every stage). ``--resume`` continues a killed run
from its last checkpoint in the output folder.
"""

from __future__ import annotations

import argparse
import sys

from train.config import ConfigError, load_config, preset_names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    ap.add_argument("--config", action="append", default=[], help="YAML/JSON config file (repeatable)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one value, e.g. --set data.batch_size=16 (repeatable)")
    ap.add_argument("--output", help="output folder (checkpoints, LoRAs, grids, metrics, TensorBoard logs)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    ap.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = {"output": args.output} if args.output else None
    try:
        cfg = load_config(args.preset, args.config, args.overrides, extra)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import json
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from train.trainer import Trainer

    Trainer(cfg, resume=args.resume).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
