"""``python -m train --config <name> --workdir <dir> [--set key=value ...]``: one training run.

Rerunning the same command resumes from the latest checkpoint in ``<dir>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from train.configs import apply_overrides, config_names, describe, get_config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run :func:`train.train_and_evaluate`.

    Example:
      >>> from train.__main__ import main
      >>> main(["--list"])  # doctest: +ELLIPSIS
      preresnet110_cifar10_normal...
      0
    """
    listing = "\n".join(f"  {n:32s} {describe(n)}" for n in config_names())
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a network with the paper's SGD schedules (resumable).",
        epilog=f"configs:\n{listing}\n\nexample:\n  python -m train --config cpu_synthetic "
        f"--workdir runs/demo --set epochs=2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", choices=config_names(), metavar="NAME", help="a config name (below)"
    )
    parser.add_argument("--workdir", help="run directory: config.json, metrics.jsonl, checkpoints/")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set epochs=3 --set npz_path=cifar10.npz (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="print the config names and exit")
    parser.add_argument("--show", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(config_names()))
        return 0
    if args.config is None:
        parser.error("--config is required")
    try:
        config = apply_overrides(get_config(args.config), args.overrides)
    except ValueError as e:
        parser.error(str(e))
    if args.show:
        import json

        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if args.workdir is None:
        parser.error("--workdir is required")
    from jaxspec.workdir import WorkdirLockedError
    # imports Flax and Orbax: after argument errors and --help
    from train.loop import SetupError, train_and_evaluate

    try:
        records = train_and_evaluate(config, args.workdir)
    except SetupError as e:  # a config or data the run cannot start from: no traceback
        parser.error(str(e))
    except WorkdirLockedError as e:  # an expected refusal, not a bug: no traceback
        print(f"python -m train: error: {e}", file=sys.stderr)
        return 1
    if records:
        last = records[-1]
        print(
            f"done: epoch {last['epoch']}/{config.epochs} "
            f"test_accuracy={last['test_accuracy']:.4f} "
            f"train_accuracy={last['train_accuracy']:.4f} -> {args.workdir}"
        )
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
