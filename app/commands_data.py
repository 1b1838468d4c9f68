"""`bsegn data ...`: look at a benchmark's split files and image folders before training."""
from __future__ import annotations


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and check benchmark data")
    data.set_defaults(func=lambda args: data.print_help() or 2)
