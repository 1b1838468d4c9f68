"""The `bsegn` command line: one entry point, one module per group of subcommands.

Each module in COMMAND_MODULES has `register(subparsers)` that adds its subcommands and sets
`func` on them. Those modules import only argparse at module level; the heavy libraries
(torch, timm, albumentations) are imported inside the handlers, so `bsegn --help` and
`predict` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "bsegn.app.commands_data",
    "bsegn.app.commands_backbone",
    "bsegn.app.commands_app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bsegn",
        description="Generative zero-shot image classification (BSeGN) end to end.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return _run(args.func, args)


def _run(func, args) -> int:
    """Run a handler; a user-data error is one clear line and exit status 2, not a traceback."""
    from bsegn.app.processes import end_process_group
    from bsegn.datasets.splits import DataError

    try:
        code = int(func(args) or 0)
    except DataError as error:
        print(f"bsegn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bsegn: interrupted", file=sys.stderr)
        return 130
    end_process_group()  # extract/finetune run under `accelerate launch`: every rank exits cleanly
    return code


def predict_main(argv: list[str] | None = None) -> int:
    """The `predict` console script: classify images with a model bundle (bsegn.app.predict)."""
    from bsegn.app.predict import main as predict

    return _run(lambda _args: predict(argv), None)


if __name__ == "__main__":
    sys.exit(main())
