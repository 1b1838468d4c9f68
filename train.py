"""Train and evaluate a bsegn model: `accelerate launch train.py [--config FILE] [--section.key VALUE ...]`.

With no arguments: the embedded demo benchmark (synthetic; generated on first use) end to end.
Also runs as `python train.py`. See configs/ for one YAML per benchmark.
"""
import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Fine-tune a timm backbone on the seen classes, extract features, train BSeGN, evaluate "
                    "(T1, U, S, H) and write a model bundle for `predict`.",
        epilog="Any config value can be overridden: --generative.epochs 50 --backbone.model resnet50 "
               "--run.protocol validation --data.splits_dir DIR --data.images_root DIR")
    parser.add_argument("--config", default=None, help="YAML run config (default: configs/demo.yaml)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<benchmark>-<protocol>)")
    parser.add_argument("--protocol", choices=("final", "validation"), default=None,
                        help="final: train on trainval, test once; validation: train classes vs val classes")
    args, overrides = parser.parse_known_args(argv)
    if args.output:
        overrides += ["--run.output", args.output]
    if args.protocol:
        overrides += ["--run.protocol", args.protocol]

    from bsegn.app.config import load_run_config
    from bsegn.app.pipeline import run_pipeline
    from bsegn.app.processes import end_process_group
    from bsegn.datasets.splits import DataError

    try:
        config = load_run_config(args.config, overrides)
        run_pipeline(config)
    except DataError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    end_process_group()  # under `accelerate launch`: a clean exit for every rank (see bsegn.app.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
