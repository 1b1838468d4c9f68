"""Images -> per-image features with a backbone, sharded over accelerate processes, with a cache.

`extract_features` returns one row per image in the given order, whatever the number of processes
(accelerate's `gather_for_metrics` drops the padding duplicates of the last batch, and rows are put
back by image index). `cached_extract_features` keys its file by backbone name + a hash of the
weights as they are now + the transform + the image list, so swapping backbones or fine-tuning
never mixes caches.

Images that cannot be read are not fatal: their rows are zeros, their positions are listed in
`meta["bad_indices"]`, and their relative paths are returned, for the caller to report and to drop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from bsegn.backbone.factory import FeatureBackbone, weights_hash
from bsegn.core.files import digest_arrays, digest_json
from bsegn.datasets.features import FeatureSet, load_feature_cache, read_feature_cache_header, save_feature_cache
from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged, loader_options
from bsegn.datasets.transforms import build_eval_transform


@torch.no_grad()
def extract_features(backbone: FeatureBackbone, image_root: str | os.PathLike, image_files: Sequence[str],
                     labels: Sequence[int] | np.ndarray | None, *, batch_size: int = 64, num_workers: int | None = 4,
                     flip_average: bool = False, accelerator=None, image_size: int | None = None,
                     progress: bool = True, reduced_decode: bool = False) -> tuple[FeatureSet, list[str]]:
    """Features of every image `image_root / image_files[i]`, in that order.

    Args:
        backbone: a FeatureBackbone (its data_config decides the eval transform).
        image_files: N relative paths; labels: (N,) class ids or None (-1).
        batch_size: per process. num_workers: DataLoader workers per process (None: sized from the
            machine); on a GPU batches come in pinned memory and the model runs channels-last.
        flip_average: average the features of the image and its horizontal mirror.
        accelerator: accelerate.Accelerator (default: a new one; one process unless launched
            with `accelerate launch`). Every process gets the full result.
        image_size: override the backbone's input size (tests, quick looks).
        reduced_decode: JPEGs at least twice the resized size are decoded at 1/2..1/8 scale by the
            decoder (EvalTransform's reduced_decode; part of the transform, so of the cache key).

    Returns:
        (FeatureSet with features (N, D) float32, labels (N,), image_ids = image_files, meta with
        backbone identity, transform and bad_indices), list of the relative paths that could not be read.
    """
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator()
    transform = build_eval_transform(backbone.data_config_at(image_size), reduced_decode=reduced_decode)
    dataset = ImageFolderDataset(image_root, image_files, labels, transform)
    model = backbone.to(accelerator.device).eval()
    channels_last = accelerator.device.type == "cuda"
    if channels_last:  # NHWC: the layout tensor cores convolve in
        model = model.to(memory_format=torch.channels_last)
    forward = model
    if flip_average:  # the image and its horizontal mirror, averaged
        forward = _flip_averaged(forward)
    features = np.zeros((len(dataset), backbone.num_features), dtype=np.float32)
    ok_rows = map_images(forward, dataset, features, batch_size=batch_size,
                         num_workers=num_workers, accelerator=accelerator, channels_last=channels_last,
                         progress=progress, desc=f"extract {backbone.model_name}")
    bad_indices = np.flatnonzero(~ok_rows)
    features[bad_indices] = 0.0
    bad_files = [str(image_files[i]) for i in bad_indices]
    meta = {"backbone": backbone.describe(), "transform": transform.describe(), "flip_average": flip_average,
            "bad_indices": bad_indices.tolist()}
    if channels_last:  # the backbone goes back as it came: other code may run it on contiguous inputs
        backbone.to(memory_format=torch.contiguous_format)
    return FeatureSet(features, dataset.labels, list(image_files), meta), bad_files


def _flip_averaged(forward):
    return lambda images: (forward(images) + forward(torch.flip(images, dims=[3]))) / 2


@torch.no_grad()
def map_images(forward, dataset: ImageFolderDataset, out: np.ndarray | None, *, batch_size: int,
               num_workers: int | None, accelerator, channels_last: bool = False, progress: bool = True,
               desc: str = "images") -> np.ndarray:
    """Run `forward` (a batch of images (B, 3, H, W) -> (B, *out.shape[1:])) over every image of `dataset`,
    sharded over the accelerator's processes, writing row i of `out` for image i whatever the process count
    (`out` None: this process keeps nothing, e.g. a non-main process when only the main one writes a file).
    Returns ok (N,) bool: False for the images that could not be read (their rows are left as they were)."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_flagged,
                        **loader_options(num_workers, accelerator.device.type, processes=accelerator.num_processes))
    loader = accelerator.prepare(loader)  # shards batches over processes; padding is removed below
    n = len(dataset)
    covered = np.zeros(n, dtype=bool)
    ok_rows = np.zeros(n, dtype=bool)
    for images, _, indices, ok in tqdm(loader, desc=desc, disable=not (progress and accelerator.is_local_main_process)):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            outputs = forward(images)
        outputs, indices, ok = accelerator.gather_for_metrics((outputs.float(), indices, ok))
        rows = indices.cpu().numpy()
        if out is not None:
            out[rows] = outputs.cpu().numpy()
        covered[rows] = True
        ok_rows[rows] = ok.cpu().numpy()
    if not covered.all():  # would mean a sharding bug: never return silently incomplete results
        raise RuntimeError(f"a pass over the images covered {int(covered.sum())} of {n} images")
    return ok_rows


def feature_cache_key(backbone: FeatureBackbone, image_files: Sequence[str], labels, *, dataset_id: str,
                      flip_average: bool = False, image_size: int | None = None,
                      reduced_decode: bool = False) -> tuple[str, dict]:
    """(hex key, header dict) naming one backbone state + transform + image list exactly.

    The weights hash is recomputed from the tensors as they are now (not trusted from weights_id):
    two random-init or fine-tuned backbones never share a cache.
    """
    files_digest = digest_json([str(name) for name in image_files])
    labels_digest = digest_arrays(np.asarray(labels if labels is not None else [], dtype=np.int64))
    header = {
        "model_name": backbone.model_name,
        "weights_hash": weights_hash(backbone.model),
        "transform": build_eval_transform(backbone.data_config_at(image_size),
                                          reduced_decode=reduced_decode).describe(),
        "flip_average": bool(flip_average),
        "dataset": {"id": dataset_id, "num_images": len(image_files), "files_sha256": files_digest,
                    "labels_sha256": labels_digest},
    }
    return digest_json(header), header


def feature_cache_path(cache_dir: str | os.PathLike, dataset_id: str, model_name: str, key: str) -> Path:
    """Where the features keyed `key` (feature_cache_key) live in cache_dir."""
    safe_model = model_name.replace("/", "_").replace(":", "_")
    return Path(cache_dir) / f"features_{dataset_id}_{safe_model}_{key}.safetensors"


def store_features(feature_set: FeatureSet, bad_files: Sequence[str], backbone: FeatureBackbone, *,
                   dataset_id: str, cache_dir: str | os.PathLike, image_size: int | None = None) -> Path:
    """Write features computed another way than extract_features (e.g. bsegn.backbone.last_stage, from cached
    activations) where cached_extract_features will find them for this backbone, transform and image list."""
    key, header = feature_cache_key(backbone, feature_set.image_ids, feature_set.labels, dataset_id=dataset_id,
                                    image_size=image_size)
    path = feature_cache_path(cache_dir, dataset_id, backbone.model_name, key)
    return save_feature_cache(path, feature_set, {**header, "bad_files": list(bad_files), "cache_key": key})


def cached_extract_features(backbone: FeatureBackbone, image_root: str | os.PathLike, image_files: Sequence[str],
                            labels, *, dataset_id: str, cache_dir: str | os.PathLike, **options
                            ) -> tuple[FeatureSet, list[str], Path, bool]:
    """extract_features, re-using `cache_dir/features_<dataset>_<model>_<key>.safetensors` when present.

    options: batch_size, num_workers, flip_average, accelerator, image_size, progress, reduced_decode.
    Returns (FeatureSet, bad_files, cache path, reused: bool).
    """
    from accelerate import Accelerator

    accelerator = options.pop("accelerator", None) or Accelerator()
    key, header = feature_cache_key(backbone, image_files, labels, dataset_id=dataset_id,
                                    flip_average=options.get("flip_average", False),
                                    image_size=options.get("image_size"),
                                    reduced_decode=options.get("reduced_decode", False))
    path = feature_cache_path(cache_dir, dataset_id, backbone.model_name, key)
    if path.is_file():
        stored = read_feature_cache_header(path)
        if {k: stored.get(k) for k in header} == header:
            feature_set = load_feature_cache(path)
            return feature_set, list(stored.get("bad_files", [])), path, True
    feature_set, bad_files = extract_features(backbone, image_root, image_files, labels,
                                              accelerator=accelerator, **options)
    if accelerator.is_main_process:
        save_feature_cache(path, feature_set, {**header, "bad_files": bad_files, "cache_key": key})
    accelerator.wait_for_everyone()
    return feature_set, bad_files, path, False
