"""Train and evaluate a bsegn model: the code behind `bsegn train` and the repository's `train.py`.

    bsegn train [--config NAME|FILE] [--section.key VALUE ...]          # installed with the package
    accelerate launch -q train.py [--config NAME|FILE] [...]            # the same, from a checkout

With no arguments: the embedded demo benchmark (synthetic; generated on first use) end to end.
`--config cub` loads the shipped configs/cub.yaml; `--help-config` lists every key. A user error
(config, data, run folder) is one line on stderr and exit status 2; `-q` stops accelerate's
single-process launcher from adding its own CalledProcessError traceback below that line (the
launcher then exits 1). Config, run folder and data are all checked before any compute, and a run
folder busy with another run is refused (bsegn.core.locks).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def build_parser(prog: str = "bsegn train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a timm backbone on the seen classes, extract features, train BSeGN, evaluate "
                    "(T1, U, S, H) and write a model bundle for `predict`.",
        epilog="Any config value can be overridden: --generative.epochs 50 --backbone.model resnet50 "
               "--run.protocol validation --data.splits_dir DIR --data.images_root DIR (see --help-config)")
    parser.add_argument("--config", default=None,
                        help="YAML run config, or the name of a shipped one (demo, cub, awa2, ...; default demo)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<benchmark>-<protocol>)")
    parser.add_argument("--protocol", choices=("final", "validation"), default=None,
                        help="final: train on trainval, test once; validation: train classes vs val classes")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="console messages (the run's log.txt keeps info and above)")
    parser.add_argument("--help-config", action="store_true",
                        help="print every config key with its type, default and meaning, and every gate run.gate "
                             "may name (the gate registry), and exit")
    return parser


def main(argv: list[str] | None = None, prog: str = "bsegn train") -> int:
    args, overrides = build_parser(prog).parse_known_args(argv)
    from bsegn.core.errors import BsegnError
    from bsegn.core.logs import setup_logging

    if args.help_config:
        from bsegn.app.config import config_help

        print(config_help())
        return 0
    if args.output:
        overrides += ["--run.output", args.output]
    if args.protocol:
        overrides += ["--run.protocol", args.protocol]

    from bsegn.app.config import load_run_config
    from bsegn.app.processes import end_process_group, launch_rank

    rank, world = launch_rank()
    try:
        config = load_run_config(args.config, overrides)
        from bsegn.core.locks import check_run_folder

        check_run_folder(config.output_dir())  # a file or a read-only folder: one line, before log.txt is opened
        setup_logging(args.log_level, log_file=config.output_dir() / "log.txt", is_main=rank == 0,
                      rank=rank if world > 1 else None)
        from bsegn.app.pipeline import run_pipeline

        run_pipeline(config)
    except BsegnError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    end_process_group()  # under `accelerate launch`: a clean exit for every rank (see bsegn.app.processes)
    return 0
