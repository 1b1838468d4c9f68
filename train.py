"""Train and evaluate a bsegn model from a checkout: `accelerate launch -q train.py [--config NAME|FILE] [...]`.

A thin entry point: the code is bsegn.app.train, installed as `bsegn train` (see its docstring).
"""
import sys

from bsegn.app.train import main as train_main


def main(argv=None) -> int:
    return train_main(argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
