"""`bsegn data ...`: look at a benchmark's split files and image folders before training.

    bsegn data summary --data.benchmark AWA2 --data.splits_dir xlsa17/AWA2     one JSON object of counts
    bsegn data check --data.benchmark CUB --data.images_root CUB_200_2011 --data.splits_dir xlsa17/CUB

The options are spelled as the run config keys they mean (`bsegn train` takes the same).

`data check` compares the image list with the split, decodes every image (0-byte and corrupt files are
named and counted) and, for your own data, checks the class table; it exits 1 when anything is wrong.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and check benchmark data",
                                 description="Inspect benchmark split files and check image folders.")
    data.set_defaults(func=lambda args: data.print_help() or 2)
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    summary = commands.add_parser("summary", help="print one JSON object of a benchmark's counts")
    _add_common(summary)
    summary.add_argument("--data.images_root", dest="images", default=None,
                         help="image folder (required for 'own'; optional otherwise)")
    summary.set_defaults(func=_summary)

    check = commands.add_parser("check", help="verify an image folder against a benchmark's split")
    _add_common(check)
    check.add_argument("--data.images_root", dest="images", required=True, help="the benchmark's image folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--show", type=int, default=5,
                       help="how many missing/unexpected/unreadable files to name (default 5)")
    check.add_argument("--no-decode", action="store_true",
                       help="skip decoding every image (faster: then 0-byte and corrupt files are not found)")
    check.set_defaults(func=_check)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data.benchmark", dest="benchmark", required=True,
                        help="demo, CUB, CUB-sent, AWA1, AWA2, SUN, FLO, APY, own or AWA1-Lampert2009")
    parser.add_argument("--data.splits_dir", dest="splits", default=None,
                        help="folder holding the benchmark's att_splits.mat (not needed for the demo and 'own')")
    parser.add_argument("--data.attributes_csv", dest="attributes", default=None,
                        help="'own' only: the class,split,<attributes...> CSV")


def summarize(split) -> dict:
    """The summary dict of a ZSLSplit: counts, None where the files do not say."""
    return {
        "benchmark": split.benchmark,
        "num_classes": split.num_classes,
        "num_seen": None if split.seen_classes is None else int(len(split.seen_classes)),
        "num_unseen": None if split.unseen_classes is None else int(len(split.unseen_classes)),
        "semantic_dim": split.semantic_dim,
        **{name: None if split.locs.get(name) is None else int(len(split.locs[name]))
           for name in ("trainval", "test_seen", "test_unseen", "train", "val")},
    }


def _summary(args) -> int:
    import json

    from bsegn.datasets.benchmarks import canonical_name, load_benchmark, load_split

    name = canonical_name(args.benchmark)
    if name == "demo" or (name != "own" and args.images is None):
        split = load_split(name, args.splits)
    else:
        split = load_benchmark(name, splits_dir=args.splits, images_root=args.images,
                               attributes_csv=args.attributes).split
    print(json.dumps(summarize(split)))
    return 0


def _check(args) -> int:
    import json

    from bsegn.datasets.benchmarks import canonical_name, check_benchmark_images

    name = canonical_name(args.benchmark)
    split = None
    if name == "own":
        from bsegn.datasets.own_data import load_own_data

        if args.attributes is None:
            from bsegn.core.errors import DataError

            raise DataError("data check --data.benchmark own needs --data.attributes_csv (the class,split,"
                            "<attributes...> CSV).")
        split = load_own_data(args.images, args.attributes)
    report = check_benchmark_images(name, args.images, args.splits, split=split, show=args.show,
                                    decode=not args.no_decode)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0 if report.ok else 1
