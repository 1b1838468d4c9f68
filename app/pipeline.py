"""The training pipeline behind `train.py`: images in, evaluated model bundle out.

Stages, each in a folder of the run, each skipped when its output exists for the same config and
resumed after an interruption:

    backbone/     fine-tune the timm backbone on SEEN training images only (bsegn.backbone.finetune)
    features/     extract features of every image with it (cached by backbone + weights + transform + data)
    generative/   train BSeGN on real seen features (checkpoints every epoch: a rerun resumes)
    bundle/       final classifier fitted, evaluated on test ONCE, written with the model
    validation/   (final protocol, run.threshold null) the same pipeline on the validation protocol, where
                  every seen-or-unseen gate's threshold is chosen (best H), and the open-world rule's (val classes
                  withheld as unknowns: bsegn.generative.open_world_choice); the final run uses them

Only the main process writes files; every process takes part in fine-tuning, extraction and BSeGN.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bsegn.app.config import RunConfig, write_run_config
from bsegn.core.errors import BsegnError, DataError
from bsegn.core.files import atomic_write_json, digest_arrays, digest_json
from bsegn.core.locks import RunFolderBusy, RunLock, check_run_folder
from bsegn.core.logs import get_logger
from bsegn.core.sections import to_dict

log = get_logger(__name__)


@dataclass
class ProtocolOutcome:
    """Everything one protocol's stages produced (what the outputs, plots and demo prediction read)."""

    run: Any  # bsegn.generative.experiment.BSeGNRun: result (percent), trained, gzsl/zsl classifiers
    backbone: Any  # FeatureBackbone, or None when the run used pre-extracted features
    features: Any  # FeatureSet of every image of the benchmark
    split: Any  # the ZSLSplit evaluated (the validation protocol's split for protocol "validation")
    benchmark: Any  # bsegn.datasets.benchmarks.Benchmark
    generative_seconds: float = 0.0

    @property
    def result(self) -> dict[str, Any]:
        return self.run.result


def load_run_benchmark(config: RunConfig):
    from bsegn.datasets.benchmarks import load_benchmark

    data = config.data
    extra = {}
    if data.benchmark.lower() == "demo":  # the demo data always uses seed 0
        extra = dict(images_per_class=data.demo_images_per_class, image_size=data.demo_image_size)
    return load_benchmark(data.benchmark, splits_dir=data.splits_dir, images_root=data.images_root,
                          attributes_csv=data.attributes_csv, semantics=data.semantics,
                          descriptions=data.descriptions, **extra)


def semantics_digest(split) -> str:
    """What a stage trained on class semantics keys on: the semantic matrix itself (so attributes, text,
    another encoder or edited descriptions each start the stage over)."""
    return digest_arrays(np.asarray(split.semantics, dtype=np.float32))


def drop_images(split, bad_indices):
    """A copy of `split` whose locs no longer contain the unreadable images."""
    if not len(bad_indices):
        return split
    bad = np.asarray(sorted(bad_indices), dtype=np.int64)
    out = copy.copy(split)
    out.locs = {name: (None if loc is None else loc[~np.isin(loc, bad)]) for name, loc in split.locs.items()}
    return out


def _stage_key(folder: Path) -> str | None:
    marker = folder / "stage.json"
    return json.loads(marker.read_text()).get("key") if marker.is_file() else None


def _reset_if_changed(folder: Path, key: str, accelerator) -> None:
    """A stage folder left by a different config is cleared, so its checkpoints are never resumed."""
    marker = folder / "stage-config.json"
    if accelerator.is_main_process:
        if marker.is_file() and json.loads(marker.read_text()).get("key") != key:
            shutil.rmtree(folder)
        atomic_write_json(marker, {"key": key})
    accelerator.wait_for_everyone()


def backbone_stage(config: RunConfig, benchmark, split, protocol: str, run_dir: Path, accelerator, *,
                   features_dir: Path | None = None, trunk_dir: Path | None = None):
    """The backbone to extract features with: fine-tuned on seen training images, or as created.
    With finetune.layers last_stage the trunk's activations go to trunk_dir (default run_dir/trunk; one folder
    serves both protocols: the trunk is frozen) and every image's features to features_dir (default
    run_dir/features), where feature_stage then finds them."""
    from bsegn.backbone.factory import create_backbone
    from bsegn.backbone.finetune import finetune_backbone
    from bsegn.backbone.last_stage import finetune_last_stage

    # seeded: a random init (weights none, or a new head) repeats exactly, and is the same on every rank
    backbone = create_backbone(config.backbone.model, config.backbone.weights, seed=config.run.seed)
    if not config.finetunes:
        return backbone
    folder = run_dir / "backbone"
    data = {k: v for k, v in to_dict(config.data).items() if k not in ("semantics", "descriptions")}
    key = {"model": config.backbone.model, "image_size": config.backbone.image_size,
           "finetune": to_dict(config.finetune), "seed": config.run.seed, "protocol": protocol,
           "data": data, "weights": backbone.weights_id}
    if config.finetune.head == "attribute":  # the head holds the seen classes' semantic vectors
        key["semantics"] = semantics_digest(split)
    key = digest_json(key)
    finetuned = folder / "backbone.safetensors"
    if _stage_key(folder) == key and finetuned.is_file():
        log.info(f"backbone: fine-tuned weights found in {folder}, stage skipped")
        return create_backbone(config.backbone.model, str(finetuned))
    _reset_if_changed(folder, key, accelerator)
    log.info(f"backbone: fine-tuning {config.backbone.model} on the seen classes ({protocol} protocol)")
    indices = None
    if protocol == "validation":
        # the validation-seen images (held out of the train images) must not train the backbone either,
        # or the validation S that picks the thresholds would be measured on images the features were fitted to
        from bsegn.datasets.protocol import validation_protocol

        indices = validation_protocol(split, seed=config.run.seed).loc("trainval")
    common = {"protocol": protocol, "output_dir": folder, "indices": indices, "accelerator": accelerator,
              "seed": config.run.seed, "image_size": config.backbone.image_size,
              "num_workers": config.backbone.num_workers, "progress": accelerator.is_main_process}
    if config.finetune.layers == "last_stage":
        backbone = finetune_last_stage(backbone, benchmark.image_root, split, config.finetune,
                                       activations_dir=trunk_dir or run_dir / "trunk",
                                       features_dir=features_dir or run_dir / "features",
                                       batch_size=config.backbone.batch_size, **common)
    else:
        backbone = finetune_backbone(backbone, benchmark.image_root, split, config.finetune, **common)
    if accelerator.is_main_process:
        atomic_write_json(folder / "stage.json", {"key": key})
    accelerator.wait_for_everyone()
    return backbone


def feature_stage(config: RunConfig, benchmark, split, backbone, folder: Path, accelerator):
    """Every image's features under `backbone`, from the cache in `folder` (keyed by the backbone's weights,
    the transform and the images) or extracted into it."""
    from bsegn.backbone.extract import cached_extract_features

    features, bad_files, path, reused = cached_extract_features(
        backbone, benchmark.image_root, split.image_files, split.labels, dataset_id=split.benchmark,
        cache_dir=folder, batch_size=config.backbone.batch_size, num_workers=config.backbone.num_workers,
        image_size=config.backbone.image_size, accelerator=accelerator, progress=accelerator.is_main_process)
    log.info(f"features: {'re-used' if reused else 'extracted'} {features.features.shape} -> {path}")
    if bad_files:
        log.warning(f"features: {len(bad_files)} unreadable image(s) skipped, e.g. {list(bad_files)[:3]}")
    return features, drop_images(split, features.meta.get("bad_indices", []))


def pre_extracted_features(config: RunConfig, benchmark):
    """(features, split) when the run uses pre-extracted features (data.features_file, or a benchmark
    that only exists as features such as AWA1-Lampert2009); None when features come from images.
    The file's per-image labels must agree with the split's where both are known."""
    split = benchmark.split
    if not config.data.features_file:
        return (benchmark.features, split) if benchmark.features is not None else None
    from bsegn.datasets.features import load_feature_cache, read_res101_mat
    from bsegn.datasets.xlsa17 import attach_labels

    path = Path(config.data.features_file)
    features = read_res101_mat(path) if path.suffix.lower() == ".mat" else load_feature_cache(path)
    n_split = None if split.labels is None else len(split.labels)
    if n_split is not None and len(features) != n_split:
        raise DataError(f"{path}: {len(features)} images, but the {split.benchmark} split indexes {n_split}; "
                        "the feature file is not of this benchmark.")
    if split.labels is not None:
        known = (split.labels >= 0) & (features.labels >= 0)
        wrong = np.flatnonzero(known & (split.labels != features.labels))
        if wrong.size:
            raise DataError(f"{path}: image {int(wrong[0])} has label {int(features.labels[wrong[0]])} in the feature "
                            f"file but {int(split.labels[wrong[0]])} in the split; {wrong.size} such images.")
        return features, split
    # split files alone carry no per-image labels: the feature file's are used, and checked
    return features, attach_labels(copy.copy(split), features.labels, source=str(path))


def gate_thresholds(config: RunConfig, validation: "ProtocolOutcome | None" = None) -> dict[str, float | None]:
    """{gate kind: threshold} a protocol's run measures, run.gate first (its numbers are the headline).
    A given run.threshold: that gate alone. Otherwise every gate: None (chosen here: the validation
    protocol) or, after a validation run, the threshold each gate got there. A model without the semantic
    decoder (generative.lambda_cyc 0) leaves out the gates that need it: it has nothing for them to read."""
    from bsegn.generative.gates import GATES, gate_class

    if config.run.threshold is not None:
        return {config.run.gate: float(config.run.threshold)}
    usable = [kind for kind in GATES if config.generative.uses_decoder or not gate_class(kind).requires_decoder]
    kinds = [config.run.gate] + [kind for kind in usable if kind != config.run.gate]
    if validation is None:
        return {kind: None for kind in kinds}
    return {kind: float(validation.run.gates[kind].threshold) for kind in kinds}


def gate_temperatures(validation: "ProtocolOutcome | None") -> dict[str, float] | None:
    """{gate kind: p_unseen's temperature} fitted on the validation run (None without one: temperature 1)."""
    if validation is None:
        return None
    return {kind: float(gate.temperature) for kind, gate in validation.run.gates.items()}


def run_protocol(config: RunConfig, protocol: str, run_dir: Path, accelerator, *,
                 thresholds: dict[str, float | None] | None = None, data: PreparedData | None = None,
                 temperatures: dict[str, float] | None = None, features_dir: Path | None = None,
                 trunk_dir: Path | None = None) -> ProtocolOutcome:
    """Every stage for one protocol in run_dir (`data`: from `preflight`, made here when not given;
    thresholds: gate_thresholds' dict, default that of `config` alone; temperatures: gate_temperatures';
    features_dir: the feature cache's folder, default run_dir/features; trunk_dir: last-stage fine-tuning's
    activations, default run_dir/trunk)."""
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn

    run_dir.mkdir(parents=True, exist_ok=True)
    data = data or preflight(config)
    benchmark, given, split = data.benchmark, data.given, data.split
    if given is None:
        features_dir = features_dir or run_dir / "features"
        backbone = backbone_stage(config, benchmark, split, protocol, run_dir, accelerator,
                                  features_dir=features_dir, trunk_dir=trunk_dir)
        features, split = feature_stage(config, benchmark, split, backbone, features_dir, accelerator)
    else:
        backbone, features = None, given[0]
        split = drop_images(split, features.meta.get("bad_indices", []))  # rows a bsegn cache marked unreadable
        log.info(f"features: pre-extracted {features.features.shape} ({features.meta.get('source', split.benchmark)});"
                 " backbone stages skipped, so the bundle classifies features, not images")
    eval_split = validation_protocol(split, seed=config.run.seed) if protocol == "validation" else split
    check_classes(eval_split, protocol)  # again: unreadable images may have emptied a class
    generative = config.generative
    # a generator checkpoint of another config or other features is never resumed: the stage starts over
    _reset_if_changed(run_dir / "generative", digest_json({
        "generative": to_dict(generative), "seed": config.run.seed, "protocol": protocol,
        "features": digest_arrays(features.features, features.labels), "semantics": semantics_digest(eval_split)}),
        accelerator)
    log.info(f"generative: training BSeGN on {len(eval_split.loc('trainval'))} real seen features "
             f"({generative.epochs} epochs; checkpoints in {run_dir / 'generative'})")
    started = time.perf_counter()
    outcome = run_bsegn(features, eval_split, generative, seed=config.run.seed,
                        gates=thresholds or gate_thresholds(config), unseen_ranking=config.run.unseen_ranking,
                        accelerator=accelerator, temperatures=temperatures,
                        run_dir=run_dir / "generative", show_progress=accelerator.is_main_process)
    return ProtocolOutcome(outcome, backbone, features, eval_split, benchmark, time.perf_counter() - started)


@dataclass
class PreparedData:
    """What `preflight` loaded and checked: the benchmark, its pre-extracted features (or None), the split."""

    benchmark: Any
    given: Any  # (FeatureSet, split) from pre_extracted_features, or None when features come from images
    split: Any


def protocols_of(config: RunConfig) -> list[str]:
    """The protocols a run trains, in order: the validation one first when it chooses the gates' thresholds."""
    protocol = config.run.protocol
    chooses = protocol == "final" and config.run.chooses_threshold
    return ["validation", "final"] if chooses else [protocol]


def check_classes(split, protocol: str) -> None:
    """DataError unless `split` (the one a protocol trains and evaluates) has seen classes with training
    images and at least one unseen class."""
    where = f"{split.benchmark} ({protocol} protocol)"
    if not len(split.unseen_classes):
        raise DataError(f"{where}: no unseen classes; zero-shot training needs at least one class known only by "
                        "its attributes (mark some classes `unseen` in the attributes CSV)")
    trainval = split.locs.get("trainval")
    if not len(split.seen_classes) or trainval is None or not len(trainval):
        raise DataError(f"{where}: no seen class has training images; give images of the seen classes")


def preflight(config: RunConfig) -> PreparedData:
    """Everything a run needs, checked before any compute (every rank runs it; nothing is written):
    the data loads, has per-image labels and seen/unseen classes, and the protocols the run trains
    (the validation one too, when it chooses the thresholds) can work on it (bsegn.datasets.protocol's check,
    then each protocol's split built and checked). The config itself was checked when it was built
    (types and ranges), the run folder by check_run_folder."""
    from bsegn.datasets.protocol import check_protocol_feasible, validation_protocol

    benchmark = load_run_benchmark(config)
    given = pre_extracted_features(config, benchmark)
    split = benchmark.split if given is None else given[1]
    if split.class_texts is not None:
        note = next((n for n in reversed(split.notes) if n.startswith("semantics")), f"semantics {split.semantic_kind}")
        log.info(note)
    if split.seen_classes is None or split.labels is None:
        raise DataError(f"{split.benchmark}: training needs per-image labels and the seen/unseen class lists; "
                        "check the data with `bsegn data summary` / `bsegn data check`")
    protocols = protocols_of(config)
    check_protocol_feasible(split, config.run.protocol, needs_validation="validation" in protocols)
    for protocol in protocols:
        check_classes(validation_protocol(split, seed=config.run.seed) if protocol == "validation" else split, protocol)
    return PreparedData(benchmark, given, split)


def accelerator_options(config: RunConfig) -> dict:
    """One Accelerator serves every stage of a process. run.mixed_precision "no" (the default) leaves the
    precision to accelerate, so `accelerate launch --mixed_precision fp16 train.py` (or `accelerate
    config`) works as accelerate's users expect; fp16 / bf16 in the config wins over the launcher's."""
    precision = config.run.mixed_precision
    return {"mixed_precision": None if precision == "no" else precision,
            "gradient_accumulation_steps": config.finetune.grad_accum_steps if config.finetunes else 1}


def run_pipeline(config: RunConfig, *, accelerator=None) -> dict:
    """Train and evaluate as `config` says; write the run folder; return metrics (percent).

    Before any compute: the run folder and the data are checked (`preflight`), then the main process
    takes the run folder's lock (a second run into the same folder is refused, on every rank)."""
    from accelerate import Accelerator

    from bsegn.app.processes import launch_rank

    run_dir = check_run_folder(config.output_dir())
    # the launcher's process count (accelerate launch sets WORLD_SIZE) is known before any Accelerator exists
    config.generative.check_process_count(accelerator.num_processes if accelerator else launch_rank()[1])
    data = preflight(config)
    accelerator = accelerator or Accelerator(**accelerator_options(config))
    lock = hold_run_folder(run_dir, accelerator)
    try:
        return _run_locked(config, run_dir, data, accelerator)
    finally:
        if lock is not None:
            lock.release()


def hold_run_folder(run_dir: Path, accelerator) -> RunLock | None:
    """The main process locks the run folder; every process learns whether it did (one broadcast, so
    under `accelerate launch` every rank refuses, and exits non-zero, when the folder is busy)."""
    lock, refusal = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(run_dir).acquire()
        except BsegnError as error:
            refusal = str(error)
        except OSError as error:  # told to every rank too, or they would wait for rank 0 forever
            refusal = f"run folder {run_dir}: its lock cannot be taken ({error}); choose another --output"
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise RunFolderBusy(refusal)
    return lock


def _run_locked(config: RunConfig, run_dir: Path, data: PreparedData, accelerator) -> dict:
    protocol = config.run.protocol
    if accelerator.is_main_process:
        write_run_config(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    started = time.perf_counter()

    validation = None
    if protocols_of(config)[0] != protocol:
        # thresholds are chosen where the test set cannot inform them: a full run of the validation
        # protocol (its own backbone fine-tuned on the train classes only, val classes playing unseen).
        log.info("gate: choosing every gate's threshold on the validation protocol first (run/validation/)")
        # Without fine-tuning both protocols read the same backbone: the validation run extracts into the
        # final run's cache, and the final run re-uses it (the images are extracted once, not twice).
        validation = run_protocol(config, "validation", run_dir / "validation", accelerator, data=data,
                                  features_dir=None if config.finetunes else run_dir / "features",
                                  trunk_dir=run_dir / "trunk")
        for kind, row in validation.result["gates"].items():
            log.info(f"gate {kind}: threshold {row['threshold']:.3g}, validation H {row['H']:.1f} "
                     f"(AUROC {row['domain_auroc']:.3f}, oracle-domain H {row['oracle_H']:.1f})")
    outcome = run_protocol(config, protocol, run_dir, accelerator, thresholds=gate_thresholds(config, validation),
                           data=data, temperatures=gate_temperatures(validation))
    from bsegn.app.run_outputs import collect_metrics, final_open_world, open_world_choice, write_outputs

    # the open-world ("unknown") rule's threshold is chosen on validation too (val classes withheld as
    # unknowns), and carried to the final model as the gates' thresholds are; no validation run: no rule
    chosen = open_world_choice(config, validation or (outcome if protocol == "validation" else None))
    rule, open_world = final_open_world(config, outcome, chosen)
    metrics = collect_metrics(config, outcome, validation, accelerator, time.perf_counter() - started, open_world)
    if accelerator.is_main_process:
        write_outputs(config, outcome, metrics, run_dir, rule)
    accelerator.wait_for_everyone()
    log.info(f"{protocol} protocol on {config.data.benchmark}: T1 {metrics['T1']:.1f}  U {metrics['U']:.1f}"
             f"  S {metrics['S']:.1f}  H {metrics['H']:.1f}  (percent; gate {metrics['gate']}, threshold "
             f"{metrics['threshold']:.3g}, domain AUROC {metrics['domain_auroc']:.3f}, oracle-domain H "
             f"{metrics['oracle_H']:.1f}; "
             f"{metrics['seconds']['total']:.0f} s)")
    log.info(f"run folder: {run_dir} (config.yaml, metrics.json, log.txt, plots, bundle/)")
    image_root = outcome.benchmark.image_root
    if accelerator.is_main_process and image_root is not None and outcome.backbone is not None:
        from bsegn.app.run_outputs import demo_prediction

        shown = demo_prediction(run_dir, outcome.split, image_root)
        if shown:
            log.info("predict on a test image of an unseen class, with the bundle just written:\n" + shown)
    return metrics
