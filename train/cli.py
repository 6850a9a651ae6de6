"""Command line: ``python -m train --preset embedded --output outputs/embedded`` (or ``hypersd-train``).

Configs are small YAML/JSON files over typed defaults (train/config.py): ``--preset`` picks one of
train/configs/, ``--config`` adds your own files, ``--set key=value`` overrides single values
(``--set stage_all.steps=50`` sets a key in every stage). ``--resume`` continues a killed run
from its last checkpoint in the output folder.

Expected failures (config, data, model files, output folder, resume) print one line and exit
with code 2; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.config import ConfigError, input_problems, load_config, preset_names
from train.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    ap.add_argument("--config", action="append", default=[], help="YAML/JSON config file (repeatable)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set data.batch_size=16 (repeatable)",
    )
    ap.add_argument("--output", help="output folder (checkpoints, LoRAs, grids, metrics, TensorBoard logs)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="train again into a folder that holds a run: the old run is renamed to <output>.replaced-<time>",
    )
    ap.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept a config that differs from the run's (recorded in config_changes.jsonl)",
    )
    ap.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    ap.add_argument("--debug", action="store_true", help="print tracebacks for expected errors too")
    return ap


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _fail(e: BaseException, debug: bool, kind: str = "error", message: str | None = None) -> int:
    if debug:
        import traceback

        traceback.print_exception(e)
    lines = [message] if message else str(e).splitlines() if isinstance(e, ConfigError) else [_one_line(e)]
    for line in lines:
        print(f"{kind}: {line}", file=sys.stderr)
    return 2


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a full disk: OSError ENOSPC/EDQUOT, or the messages
    safetensors (StorageFull) and torch.save (file write failed) wrap it in."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text or "file write failed" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = {"output": args.output} if args.output else None
    try:
        cfg = load_config(args.preset, args.config, args.overrides, extra)
        if args.print_config:
            import json

            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        problems = input_problems(cfg)
        if problems:
            raise ConfigError("\n".join(problems))
    except ConfigError as e:
        return _fail(e, args.debug, "config error")
    try:
        from train import preflight

        out = Path(cfg.output)
        resume = args.resume and not args.overwrite
        if not args.overwrite:
            preflight.check_run_folder(out, resume, overwrite=False)
        changes = preflight.check_resume_config(out, cfg.to_dict(), args.allow_config_change) if resume else {}
        preflight.check_model_files(cfg.model)
        if args.overwrite:
            aside = preflight.check_run_folder(out, resume=False, overwrite=True)
            if aside is not None:
                print(f"--overwrite: moved the old run to {aside}")
        if changes:
            preflight.record_config_change(out, changes)
            print(
                f"--allow-config-change: resuming with {len(changes)} changed key(s), recorded in "
                f"{out / 'config_changes.jsonl'}"
            )
        from train.trainer import Trainer

        Trainer(cfg, resume=resume).run()
    except UserError as e:
        return _fail(e, args.debug)
    except Exception as e:
        if not _disk_full(e):
            raise
        return _fail(
            e,
            args.debug,
            message=f"the disk is full while writing to {cfg.output}: free some space, then "
            "continue with --resume (committed checkpoints are intact; half-written files are removed then)",
        )
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (the last checkpoint is intact)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
