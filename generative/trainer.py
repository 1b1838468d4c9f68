"""BSeGN training on feature tensors with accelerate: the same code on CPU, one GPU and DDP.

    trainer = BSeGNTrainer(features, labels, semantics, seen_classes, unseen_classes, config, seed=0,
                           accelerator=None, run_dir=None)
    trainer.fit()          # resumes from <run_dir>/checkpoint when it matches; raises TrainingDiverged

One generator iteration (critic, decoder, FEM and generator steps) is in generative/steps.py; this
module holds the construction, the epoch loop, the divergence check, the per-epoch log
(generative/training_log.py: losses.csv + TensorBoard) and the checkpoint (bsegn.core.checkpoints,
`<run_dir>/checkpoint`, written after every epoch).

Distributed: G, D, R and the FEM are prepared separately, each with its own optimiser. Batches are
drawn as one GLOBAL batch from a generator seeded by (seed, epoch) identically on every rank, each rank
taking its slice: so DDP's averaged gradient equals one process's gradient on the global batch for the
per-sample-mean losses (WGAN-GP, cycle, cls). The FEM's batch-level losses (s2f, balance) are computed
per rank's slice, so DDP differs from one process there. Because each epoch reseeds its own generator,
a run resumed from an epoch checkpoint repeats the uninterrupted run exactly (no RNG state to save).
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from bsegn.core.checkpoints import EpochCheckpoint
from bsegn.core.errors import TrainingDiverged
from bsegn.core.files import digest_arrays, digest_json
from bsegn.core.heap import heap_reuse
from bsegn.core.logs import get_logger
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.networks import build_networks
from bsegn.generative.steps import CriticGraph, TrainingSteps, cuda_graphs_wanted
from bsegn.generative.training_log import TrainingLog

log = get_logger(__name__)

BETA1 = 0.5  # Adam's beta1 for every BSeGN module (WGAN practice)
DIVERGENCE_THRESHOLD = 1e6  # |loss| above this stops training like a NaN


class BSeGNTrainer(TrainingSteps):
    """Trains BSeGN's generator, critic, decoder and FEM on real seen features.

    Args:
        features: (N, d) float real features of SEEN training images.
        labels: (N,) class ids indexing `semantics` rows.
        semantics: (C, k) semantic vectors of ALL classes (seen and unseen).
        seen_classes / unseen_classes: class ids (rows of semantics).
        config: BSeGNConfig.
        seed: module initialisation and every draw of training.
        accelerator: an accelerate.Accelerator (default: a new one; the precision is accelerate's launcher's).
        run_dir: where the checkpoint and losses.csv go (None: nothing is written, no resume).
    """

    def __init__(self, features, labels, semantics, seen_classes, unseen_classes, config: BSeGNConfig, *,
                 seed: int = 0, accelerator=None, run_dir: str | Path | None = None, show_progress: bool = True):
        from accelerate import Accelerator

        self.config = config
        self.seed = int(seed)
        self.accelerator = accelerator or Accelerator()
        device = self.accelerator.device
        self.features = torch.as_tensor(features, dtype=torch.float32).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        self.semantics = torch.as_tensor(semantics, dtype=torch.float32).to(device)
        self.seen_classes = torch.as_tensor(seen_classes, dtype=torch.long).to(device)
        self.unseen_classes = torch.as_tensor(unseen_classes, dtype=torch.long).to(device)
        self.seen_class_mask = torch.zeros(self.semantics.shape[0], dtype=torch.bool, device=device)
        self.seen_class_mask[self.seen_classes] = True
        if self.seen_class_mask[self.unseen_classes].any():
            raise ValueError("a class is listed both as seen and unseen")
        # Rows of `semantics` that are neither seen nor unseen here (the test-unseen classes during a
        # validation-protocol run) take no part: the FEM's softmax runs over seen + unseen classes only.
        self.split_class_mask = self.seen_class_mask.clone()
        self.split_class_mask[self.unseen_classes] = True
        self.all_split_classes = bool(self.split_class_mask.all())  # a Python bool: no host sync per step
        if not self.seen_class_mask[self.labels].all():
            raise ValueError("training labels must all be seen classes (real unseen features are never used)")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.show_progress = show_progress
        self.feature_dim = self.features.shape[1]
        self.semantic_dim = self.noise_dim = self.semantics.shape[1]

        config.check_process_count(self.accelerator.num_processes)  # the pipeline checked it before any compute

        torch.manual_seed(self.seed)  # module initialisation, identical on every rank
        self.modules = build_networks(config, self.feature_dim, self.semantic_dim)
        self.seen_classifier = self.pretrain_seen_classifier(self.seed) if config.lambda_cls > 0 else None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.prepared: dict[str, nn.Module] = {}
        graphs = cuda_graphs_wanted(self.accelerator)  # BSEGN_CUDA_GRAPHS=1 on one GPU (generative/steps.py)
        extra = {"capturable": True} if graphs else {}  # the step count on the GPU, so a graph can replay it
        for name, module in self.modules.items():
            # fused Adam: one kernel per step instead of a Python loop over tensors (CPU and CUDA)
            optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, betas=(BETA1, 0.999),
                                         fused=device.type in ("cpu", "cuda"), **extra)
            self.prepared[name], self.optimizers[name] = self.accelerator.prepare(module, optimizer)
        self.critic_graph = CriticGraph(self.critic_steps) if graphs else None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.checkpoint = None if self.run_dir is None else EpochCheckpoint(
            self.run_dir / "checkpoint", self.accelerator, kind="bsegn", key=self._checkpoint_key())
        self.log = None if self.run_dir is None else TrainingLog(self.run_dir, is_main=self.accelerator.is_main_process)

    def _checkpoint_key(self) -> str:
        """What the checkpoint was made from: the config (but its epochs: a longer run resumes a shorter
        one), the seed and the training data."""
        config = {k: v for k, v in self.config.to_dict().items() if k != "epochs"}
        data = digest_arrays(self.features, self.labels, self.semantics, self.seen_classes, self.unseen_classes)
        return digest_json({"config": config, "seed": self.seed, "data": data})

    @property
    def iterations_per_epoch(self) -> int:
        return self.config.iterations_per_epoch or math.ceil(len(self.features) / self.config.batch_size)

    def unwrapped(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.prepared[name])

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    # --- epochs ------------------------------------------------------------------------------

    def fit(self, max_epochs: int | None = None) -> "BSeGNTrainer":
        """Train until config.epochs (resuming from run_dir's checkpoint if one matches), or stop after
        `max_epochs` more epochs (used to simulate an interruption). Raises TrainingDiverged."""
        from tqdm.auto import tqdm

        if self.checkpoint is not None and self.epoch == 0:
            self.resume()  # a fresh trainer on an existing run folder resumes
        last = self.config.epochs if max_epochs is None else min(self.config.epochs, self.epoch + max_epochs)
        main = self.accelerator.is_main_process
        bar = tqdm(total=last - self.epoch, desc="BSeGN epochs", disable=not (main and self.show_progress),
                   leave=False)
        with warnings.catch_warnings():  # entered once per fit: it resets Python's shown-once warning records
            # The gradient penalty's double backward leaves the critic's output weight (1, hidden) a gradient
            # with strides (1, 1) instead of (hidden, 1): the same memory order for a single row, but DDP
            # compares strides and warns on every rank that it copies those `hidden` floats into its bucket.
            # Harmless at this size; silenced during training only.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            with heap_reuse(self.accelerator.device.type == "cpu"):  # CPU tensors of 35 MB each step
                self._train_epochs(last, bar)
        bar.close()
        if self.log is not None:
            self.log.close()
        return self

    def _train_epochs(self, last: int, bar) -> None:
        """The epoch loop of `fit`: train up to epoch `last`, log each epoch, checkpoint."""
        while self.epoch < last:
            started = time.perf_counter()
            rng = self._epoch_generator(self.epoch)
            sums: dict[str, torch.Tensor] = {}
            for _ in range(self.iterations_per_epoch):
                logs = self.iteration(rng)
                self._check_finite(logs)
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value
            row = {"epoch": self.epoch + 1, "seconds": time.perf_counter() - started}
            row.update({k: float(v) / self.iterations_per_epoch for k, v in sums.items()})
            self.history.append(row)
            self.epoch += 1
            bar.update(1)
            bar.set_postfix(critic=f"{row.get('critic', 0):.3f}", generator=f"{row.get('generator', 0):.3f}")
            log.debug("BSeGN epoch %d: critic %.4f, generator %.4f", self.epoch, row.get("critic", 0.0),
                      row.get("generator", 0.0))
            if self.checkpoint is not None:
                self.log.append(row)
                self.checkpoint.save(self.epoch, self.prepared, self.optimizers, history=self.history)

    def _check_finite(self, logs: dict[str, torch.Tensor]) -> None:
        """TrainingDiverged when a loss is NaN/inf or beyond DIVERGENCE_THRESHOLD."""
        values = torch.stack(list(logs.values()))
        bad = (~torch.isfinite(values) | (values.abs() > DIVERGENCE_THRESHOLD)).tolist()
        if not any(bad):
            return
        names = [k for k, flag in zip(logs, bad) if flag]
        where = ""
        if self.checkpoint is not None and self.checkpoint.read_state() is not None:
            where = f"; the last good checkpoint is in {self.checkpoint.folder}"
        raise TrainingDiverged(
            f"training diverged in epoch {self.epoch + 1}: loss(es) {', '.join(names)} = "
            f"{[float(values[i]) for i, flag in enumerate(bad) if flag]}{where}. "
            "Lower the learning rate or the loss weights, or check the features for NaN/inf.")

    def resume(self) -> bool:
        """Load run_dir's checkpoint when it was made with the same config, seed and data (one of another
        config or data is refused with a clear DataError). Returns whether one was loaded."""
        state = self.checkpoint.resume(self.prepared, self.optimizers)
        if state is None:
            return False
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        log.info("BSeGN: resuming after epoch %d from %s", self.epoch, self.checkpoint.folder)
        return True
