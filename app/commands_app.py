"""`bsegn add-class` / `bsegn remove-class`: change a bundle's unseen classes without retraining."""
from __future__ import annotations


def register(subparsers) -> None:
    add = subparsers.add_parser("add-class", help="add unseen classes from their attribute vectors (no images needed)")
    add.add_argument("--model", required=True, help="bundle folder or run folder")
    add.add_argument("--name", help="the new class's name (with a list of values)")
    add.add_argument("--attributes", required=True,
                     help="comma-separated values (one per attribute, bundle order) or a CSV `name,<attributes...>`")
    add.add_argument("--out", help="folder for the new bundle (not the model's own, unless --in-place)")
    add.add_argument("--in-place", action="store_true", help="replace the model's bundle (written whole, atomically)")
    add.set_defaults(func=_run_add)

    remove = subparsers.add_parser("remove-class", help="drop unseen classes from a bundle")
    remove.add_argument("--model", required=True)
    remove.add_argument("--name", required=True, action="append", help="class name (repeatable)")
    remove.add_argument("--out", help="folder for the new bundle (not the model's own, unless --in-place)")
    remove.add_argument("--in-place", action="store_true", help="replace the model's bundle (written whole, atomically)")
    remove.set_defaults(func=_run_remove)


def _run_add(args) -> int:
    import time

    from bsegn.app.add_class import add_classes, parse_attributes
    from bsegn.app.bundle import read_bundle_info

    info = read_bundle_info(args.model)
    classes = parse_attributes(args.attributes, int(info["bsegn"]["semantic_dim"]), args.name)
    started = time.perf_counter()
    out = add_classes(args.model, classes, args.out, in_place=args.in_place)
    print(f"added {', '.join(n for n, _ in classes)} as unseen class(es); classifier refitted in "
          f"{time.perf_counter() - started:.1f} s; new bundle: {out}")
    return 0


def _run_remove(args) -> int:
    from bsegn.app.add_class import remove_classes

    out = remove_classes(args.model, args.name, args.out, in_place=args.in_place)
    print(f"removed {', '.join(args.name)}; new bundle: {out}")
    return 0
