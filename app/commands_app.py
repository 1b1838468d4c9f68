"""`bsegn add-class` / `bsegn remove-class`: change a bundle's unseen classes without retraining."""
from __future__ import annotations


def register(subparsers) -> None:
    add = subparsers.add_parser("add-class", help="add unseen classes from their attribute values or descriptions "
                                "(no images needed)")
    add.add_argument("--model", required=True, help="bundle folder or run folder")
    add.add_argument("--name", help="the new class's name (with a list of values or a description)")
    add.add_argument("--attributes",
                     help="comma-separated values (one per attribute, bundle order) or a CSV `name,<attributes...>` "
                          "(models trained with attribute semantics, or attributes+text)")
    add.add_argument("--description",
                     help='the class described in words ("a red striped square"), or a CSV `name,description` '
                          "(models trained with text or attributes+text semantics)")
    add.add_argument("--text-encoder", default=None,
                     help="encoder for descriptions: minilm or local-dir:PATH (default: the model's; it must be the "
                          "same model)")
    add.add_argument("--out", help="folder for the new bundle (not the model's own, unless --in-place)")
    add.add_argument("--in-place", action="store_true", help="replace the model's bundle (written whole, atomically)")
    add.set_defaults(func=_run_add)

    remove = subparsers.add_parser("remove-class", help="drop unseen classes from a bundle")
    remove.add_argument("--model", required=True)
    remove.add_argument("--name", required=True, action="append", help="class name (repeatable)")
    remove.add_argument("--out", help="folder for the new bundle (not the model's own, unless --in-place)")
    remove.add_argument("--in-place", action="store_true",
                        help="replace the model's bundle (written whole, atomically)")
    remove.set_defaults(func=_run_remove)


def _run_add(args) -> int:
    import time

    from bsegn.app.add_class import add_classes
    from bsegn.app.bundle import read_bundle_info
    from bsegn.app.class_inputs import parse_new_classes

    info = read_bundle_info(args.model)
    classes = parse_new_classes(info, attributes=args.attributes, description=args.description, name=args.name)
    started = time.perf_counter()
    out = add_classes(args.model, classes, args.out, in_place=args.in_place, text_encoder=args.text_encoder)
    print(f"added {', '.join(c.name for c in classes)} as unseen class(es) in {time.perf_counter() - started:.1f} s "
          f"(semantic vectors made, classifiers and a learned gate refitted); new bundle: {out}")
    return 0


def _run_remove(args) -> int:
    from bsegn.app.add_class import remove_classes

    out = remove_classes(args.model, args.name, args.out, in_place=args.in_place)
    print(f"removed {', '.join(args.name)}; new bundle: {out}")
    return 0
