"""The image path end to end at a real run's scale: does decoding keep the backbone busy?

    python bench/images.py [--model resnet101] [--image-size 224] [--images 200] [--batch-size 32] [--photos DIR]
                           [--mixed-precision no|bf16|fp16] [--workers N] [--threads N]
                           [--reduced-decode] [--compile] [--stages extract finetune] [--json OUT]

On a folder of real-size JPEGs the bench makes itself (--source-size 500x375, PIL quality 90: the
size of CUB/AwA photos), or on real photographs (--photos DIR: a class-folder tree such as
../shared/data/flowers/images, --images of them spread evenly over its classes), for each stage:

  extract   (a) bare: the backbone's forward on ready (B, 3, H, W) tensors on the device (eval, no grad)
            (b) pipeline: decode + eval transform + collate through the DataLoader, no model
            (c) whole: bsegn.backbone.extract.extract_features over the folder (the library's own path)
  finetune  (a) bare: forward + backward + SGD step on ready tensors (train mode)
            (b) pipeline: decode + augmentation + collate through fine-tuning's DataLoader, no model
            (c) whole: fine-tuning's own loaders and training loop (bsegn.backbone.finetune), two
                epochs over the folder: the first starts the workers, the second is the steady state

ratio = (c) / (a): 1.0 means the data path costs the model nothing. Precision and device are
accelerate's (--mixed-precision; a GPU when there is one), with the library's GPU settings
(channels-last, pinned memory, workers sized from the machine unless --workers). Each (a) is
timed before and after (c) (the machine may be shared: both are printed, their mean is the
reference). The model is randomly initialised: speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def _make_jpeg(job) -> None:
    path, seed, width, height, quality = job
    if path.is_file():  # deterministic content: a kept --folder is reused
        return
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)


def make_jpegs(folder: Path, count: int, width: int, height: int, quality: int = 90) -> list[str]:
    """`count` photo-like JPEGs (smooth colour fields plus noise, image i seeded by i) of width x height,
    in 10 class folders, made on every core."""
    from multiprocessing import Pool

    from bsegn.datasets.image_dataset import available_cores

    files = [f"c{i % 10}/img_{i:05d}_{width}x{height}_q{quality}.jpg" for i in range(count)]
    jobs = [(folder / name, i, width, height, quality) for i, name in enumerate(files)]
    with Pool(available_cores()) as pool:
        pool.map(_make_jpeg, jobs, chunksize=16)
    return files


def real_photos(root: Path, count: int) -> list[str]:
    """`count` photos of a class-folder tree (root/<class>/<file>), spread evenly over its sorted file list,
    as paths relative to root; fine-tuning's 10 bench classes are the class folders' order modulo 10."""
    files = sorted(str(path.relative_to(root)) for path in root.glob("*/*") if path.is_file())
    if not files:
        raise SystemExit(f"--photos {root}: no <class>/<image> files there")
    picks = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    return [files[i] for i in picks]


def bench_labels(files: list[str]) -> np.ndarray:
    """One of 10 labels per file: its class folder's rank among the folders present, modulo 10."""
    folders = sorted({name.split("/")[0] for name in files})
    rank = {folder: i % 10 for i, folder in enumerate(folders)}
    return np.array([rank[name.split("/")[0]] for name in files])


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def bare_extract(model, accelerator, batch: torch.Tensor, batches: int) -> float:
    """img/s of the eval forward on a ready batch (one untimed warm-up batch)."""
    device = accelerator.device
    with torch.no_grad():
        for step in range(batches + 1):
            if step == 1:
                synchronize(device)
                started = time.perf_counter()
            with accelerator.autocast():
                model(batch)
    synchronize(device)
    return rate(batches * len(batch), time.perf_counter() - started)


def bare_finetune(model, optimizer, accelerator, batch: torch.Tensor, labels: torch.Tensor, batches: int) -> float:
    """img/s of forward + backward + step on a ready batch (one untimed warm-up step)."""
    device, loss_fn = accelerator.device, torch.nn.CrossEntropyLoss()
    model.train()
    for step in range(batches + 1):
        if step == 1:
            synchronize(device)
            started = time.perf_counter()
        with accelerator.autocast():
            loss = loss_fn(model(batch), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return rate(batches * len(batch), time.perf_counter() - started)


def pipeline_only(loader, epoch_parts=()) -> float:
    """img/s of iterating `loader` (decode + transform + collate) with no model; first batch untimed."""
    for part in epoch_parts:
        part.set_epoch(0)
    iterator = iter(loader)
    next(iterator)
    count, started = 0, time.perf_counter()
    for batch in iterator:
        count += len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
    return rate(count, time.perf_counter() - started)


def ready_batch(transform, folder: Path, files: list[str], batch_size: int, device, channels_last: bool):
    images = torch.stack([transform(Image.open(folder / files[i % len(files)]).convert("RGB"))
                          for i in range(batch_size)]).to(device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def entry(bare_before: float, bare_after: float, pipeline: float, whole: float, **extra) -> dict:
    bare = (bare_before + bare_after) / 2
    return {"bare_img_s": round(bare, 2), "bare_before_img_s": round(bare_before, 2),
            "bare_after_img_s": round(bare_after, 2), "pipeline_img_s": round(pipeline, 2),
            "whole_img_s": round(whole, 2), "ratio": round(whole / bare, 3),
            "pipeline_ratio": round(pipeline / bare, 3), **extra}


def extract_stage(args, accelerator, folder: Path, files: list[str]) -> dict:
    from torch.utils.data import DataLoader

    from bsegn.backbone.extract import extract_features
    from bsegn.backbone.factory import create_backbone
    from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged, loader_options
    from bsegn.datasets.transforms import build_eval_transform

    device = accelerator.device
    backbone = create_backbone(args.model, "none", seed=0).to(device).eval()
    channels_last = device.type == "cuda"
    model = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
    if args.compile:  # in place: the bare loop and extract_features both run the compiled forward
        backbone.compile()
    transform = build_eval_transform(backbone.data_config_at(args.image_size), reduced_decode=args.reduced_decode)
    batch = ready_batch(transform, folder, files, args.batch_size, device, channels_last)
    batches = max(1, len(files) // args.batch_size)
    options = loader_options(args.workers, device.type)
    bare_before = bare_extract(model, accelerator, batch, batches)
    loader = DataLoader(ImageFolderDataset(folder, files, None, transform), batch_size=args.batch_size,
                        collate_fn=collate_flagged, **options)
    pipeline = pipeline_only(loader)
    del loader
    common = dict(batch_size=args.batch_size, num_workers=args.workers, accelerator=accelerator,
                  image_size=args.image_size, progress=False, reduced_decode=args.reduced_decode)
    extract_features(backbone, folder, files[:args.batch_size], None, **common)  # warm-up (kernels, compile)
    synchronize(device)
    started = time.perf_counter()
    extract_features(backbone, folder, files, None, **common)
    whole = rate(len(files), time.perf_counter() - started)
    if channels_last:  # extract_features hands the backbone back contiguous
        backbone.to(memory_format=torch.channels_last)
    bare_after = bare_extract(model, accelerator, batch, batches)
    return entry(bare_before, bare_after, pipeline, whole, workers=options["num_workers"],
                 note="whole = extract_features on every image, workers' start included")


def finetune_stage(args, accelerator, folder: Path, files: list[str]) -> dict:
    from bsegn.backbone import finetune as ft
    from bsegn.backbone.factory import create_backbone
    from bsegn.backbone.heads import SeenClassifier, build_head
    from bsegn.datasets.image_dataset import loader_options
    from bsegn.datasets.transforms import build_eval_transform

    device = accelerator.device
    backbone = create_backbone(args.model, "none", seed=0)
    data_config = backbone.data_config_at(args.image_size)
    labels = bench_labels(files)
    semantics = np.random.default_rng(0).random((10, 16)).astype(np.float32)
    model = SeenClassifier(backbone, build_head("softmax", backbone.num_features, semantics))
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    options = loader_options(args.workers, device.type, persistent=True)
    train_set, sampler, loader, _ = ft._loaders(folder, files, labels, data_config, np.arange(len(files)),
                                                np.zeros(0, dtype=np.int64), batch_size=args.batch_size,
                                                seed=0, **options)
    pipeline = pipeline_only(loader, (sampler, train_set))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=ft.MOMENTUM, weight_decay=1e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    step_model = torch.compile(model) if args.compile else model
    batch = ready_batch(build_eval_transform(data_config), folder, files, args.batch_size, device, channels_last)
    targets = torch.as_tensor(labels[:args.batch_size], device=device)
    batches = max(1, len(files) // args.batch_size)
    bare_before = bare_finetune(step_model, optimizer, accelerator, batch, targets, batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    epochs = []
    for epoch in range(2):
        for part in (loader, sampler, train_set):
            part.set_epoch(epoch)
        synchronize(device)
        started = time.perf_counter()
        ft._train_epoch(step_model, loader, optimizer, scheduler, torch.nn.CrossEntropyLoss(), accelerator, set(),
                        files, progress=False, desc="bench")
        epochs.append(rate(len(files), time.perf_counter() - started))
    bare_after = bare_finetune(step_model, optimizer, accelerator, batch, targets, batches)
    return entry(bare_before, bare_after, pipeline, epochs[1], first_epoch_img_s=round(epochs[0], 2),
                 first_epoch_ratio=round(2 * epochs[0] / (bare_before + bare_after), 3),
                 workers=options["num_workers"], note="whole = the second epoch of fine-tuning's loop "
                 "(persistent workers); first_epoch includes starting them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet101", help="timm model (a CPU: resnet50, resnet10t)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's, 224)")
    parser.add_argument("--images", type=int, default=200, help="JPEGs in the folder (a GPU: 5000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--source-size", default="500x375", help="WxH of the generated JPEGs")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: sized from the machine)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--reduced-decode", action="store_true", help="decode JPEGs at reduced size (Image.draft)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--stages", nargs="+", choices=("extract", "finetune"), default=["extract", "finetune"])
    parser.add_argument("--folder", type=Path, default=None, help="keep the JPEGs here (default: a temporary folder)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="read real photos from this class-folder tree instead of making JPEGs")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from accelerate import Accelerator

    from bsegn.datasets.image_dataset import available_cores

    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    width, height = (int(v) for v in args.source_size.split("x"))
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "cores": available_cores(), "torch_threads": torch.get_num_threads(),
               "load_average": round(os.getloadavg()[0], 2), "torch": torch.__version__}
    settings = {"model": args.model, "image_size": args.image_size, "images": args.images,
                "batch_size": args.batch_size, "source_size": args.source_size, "quality": args.quality,
                "mixed_precision": args.mixed_precision, "reduced_decode": args.reduced_decode,
                "compile": args.compile, "channels_last": device.type == "cuda",
                "photos": str(args.photos) if args.photos else None}
    print(json.dumps({"machine": machine, "settings": settings}))
    results = {"machine": machine, "settings": settings}
    with tempfile.TemporaryDirectory() as tmp:
        if args.photos:
            folder, files = args.photos, real_photos(args.photos, args.images)
            print(f"{len(files)} photos of {args.photos}")
        else:
            folder = args.folder or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            files = make_jpegs(folder, args.images, width, height, args.quality)
            print(f"{len(files)} JPEGs {width}x{height} made in {time.perf_counter() - started:.1f} s")
        for stage in args.stages:
            run = extract_stage if stage == "extract" else finetune_stage
            results[stage] = run(args, accelerator, folder, files)
            print(f"{stage}: {json.dumps(results[stage])}", flush=True)
    results["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
