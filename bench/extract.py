"""Does data loading keep up with the backbone? Full-path vs bare-forward throughput, as a ratio.

    python bench/extract.py [--models test_resnet resnet50] [--images 128] [--batch-size 32]
                            [--threads CORES/2] [--workers CORES-threads] [--source-size 500x375]

full path : JPEG files -> decode (PIL) -> eval transform -> batch -> forward   (DataLoader + workers)
bare      : the same number of ready (B, 3, H, W) tensors -> forward
ratio     = full images/s / bare images/s  (1.0: loading costs nothing; target >= 0.9)

Same model (random init: speed does not depend on the weights), same batch size, same torch thread
count, features discarded. Source JPEGs are generated at a typical benchmark size (CUB/AwA photos are
about 500x375). One untimed warm-up batch precedes each timing.
"""
from __future__ import annotations

import argparse
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
from torch.utils.data import DataLoader  # noqa: E402

from bsegn.backbone.factory import create_backbone  # noqa: E402
from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged  # noqa: E402
from bsegn.datasets.transforms import build_eval_transform  # noqa: E402


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[str]:
    """`count` photo-like JPEGs (smooth colour fields plus noise, quality 90) of width x height."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        name = f"img_{i:05d}.jpg"
        Image.fromarray(image).save(folder / name, quality=90)
        files.append(name)
    return files


@torch.no_grad()
def bare_forward(model, batches: int, batch: torch.Tensor) -> float:
    """images/s of forward passes on a ready tensor."""
    model(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        model(batch)
    return batches * len(batch) / (time.perf_counter() - start)


@torch.no_grad()
def full_path(model, folder: Path, files: list[str], transform, batch_size: int, workers: int) -> float:
    """images/s of decode + transform + forward through a DataLoader (first batch untimed)."""
    dataset = ImageFolderDataset(folder, files, None, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_flagged,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    images, *_ = next(iterator)
    model(images)
    count, start = 0, time.perf_counter()
    for images, *_ in iterator:
        model(images)
        count += len(images)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["test_resnet", "resnet50"])
    parser.add_argument("--images", type=int, default=128, help="images per full-path run (plus one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=32)
    cores = os.cpu_count() or 2
    # Half the cores compute, the rest decode: on a 2-core machine 2 torch threads plus workers
    # oversubscribe the cores and OpenMP threads then spin (a step can get 30x slower).
    parser.add_argument("--threads", type=int, default=max(1, cores // 2), help="torch threads for the forward")
    parser.add_argument("--workers", type=int, default=max(1, cores - max(1, cores // 2)),
                        help="DataLoader worker processes")
    parser.add_argument("--source-size", default="500x375", help="WxH of the generated JPEGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.source_size.split("x"))
    print(f"cpu cores {os.cpu_count()}, torch threads {args.threads}, workers {args.workers}, "
          f"batch {args.batch_size}, {args.images} JPEGs {width}x{height}, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = make_jpegs(folder, args.images + args.batch_size, width, height)
        for name in args.models:
            backbone = create_backbone(name, "none").eval()  # logs its own warnings (bsegn.core.logs)
            transform = build_eval_transform(backbone.data_config)
            ready = torch.stack([transform(Image.open(folder / files[0]).convert("RGB"))] * args.batch_size)
            batches = max(1, args.images // args.batch_size)
            # bare / full / bare: on a shared machine the load can change between runs; the two bare
            # numbers show how much, and their mean is the reference.
            bare_before = bare_forward(backbone, batches, ready)
            full = full_path(backbone, folder, files, transform, args.batch_size, args.workers)
            bare_after = bare_forward(backbone, batches, ready)
            bare = (bare_before + bare_after) / 2
            print(f"{name:>14s} input {tuple(ready.shape[1:])}: bare forward {bare:7.1f} img/s "
                  f"({bare_before:.1f} before, {bare_after:.1f} after), full path {full:7.1f} img/s, "
                  f"ratio {full / bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
