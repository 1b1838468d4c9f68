"""The `bsegn` command line: one entry point, one module per group of subcommands.

Each module in COMMAND_MODULES has `register(subparsers)` that adds its subcommands and sets
`func` on them. Those modules import only argparse at module level; the heavy libraries
(torch, timm, albumentations) are imported inside the handlers, so `bsegn --help` and
`predict` start fast. `bsegn train` and `bsegn predict` hand their arguments on whole to
bsegn.app.train and bsegn.app.predict, the code behind `train.py` and the `predict` script.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "bsegn.app.commands_data",
    "bsegn.app.commands_backbone",
    "bsegn.app.commands_app",
    "bsegn.app.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bsegn",
        description="Generative zero-shot image classification (BSeGN) end to end.",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="messages on stderr (default info)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # no options of their own here: everything after the command (its --help too) goes to its own parser
    for name, text in HANDED_ON.items():
        subparsers.add_parser(name, help=text, add_help=False)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


HANDED_ON = {
    "train": "fine-tune, extract, train BSeGN, evaluate and write a bundle (`bsegn train --help`; as train.py)",
    "predict": "classify images with a model bundle (`bsegn predict --help`; as the predict script)",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from bsegn.app.train import main as train_main

        return train_main(["--log-level", args.log_level, *rest])  # a later --log-level in rest wins
    if args.command == "predict":
        return predict_main(["--log-level", args.log_level, *rest], prog="bsegn predict")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return _run(args.func, args, args.log_level)


def _run(func, args, log_level: str = "info", prog: str = "bsegn") -> int:
    """Run a handler; a user error (BsegnError) is one clear line and exit status 2, not a traceback."""
    from bsegn.app.processes import end_process_group, launch_rank
    from bsegn.core.errors import BsegnError
    from bsegn.core.logs import setup_logging

    rank, world = launch_rank()
    setup_logging(log_level, is_main=rank == 0, rank=rank if world > 1 else None)
    try:
        code = int(func(args) or 0)
    except BsegnError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    end_process_group()  # extract/finetune run under `accelerate launch`: every rank exits cleanly
    return code


def predict_main(argv: list[str] | None = None, prog: str = "predict") -> int:
    """The `predict` console script and `bsegn predict`: classify images with a model bundle (bsegn.app.predict)."""
    from bsegn.app.predict import build_parser, run

    parser = build_parser()
    parser.prog = prog
    args = parser.parse_args(argv)
    return _run(run, args, args.log_level, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
