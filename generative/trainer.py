"""BSeGN training on feature tensors with accelerate: the same code on CPU, one GPU and DDP.

One generator iteration (bsegn.md):
    1. n_critic critic steps (WGAN-GP, one critic forward on [real; fake; interpolated]); the semantic
       decoder R takes a step on the same real batch (L_R = ||R(x) - a_y||_1), when the cycle branch is on;
    2. one FEM step on B real seen + B_u fake unseen features (G detached): L_bicon + lambda_bal L_bal;
    3. one generator step: -E[D(G(z,a),a)] + lambda_cls L_cls + lambda_cyc L_cyc
       + lambda_emb (L_bicon + lambda_bal L_bal) through the current FEM (only G's optimiser steps).

Distributed: G, D, R, FEM (and the feedback map) are prepared separately, each with its own
optimiser; every module has exactly one forward per backward (fake features for other modules'
steps are made under no_grad), and the gradient penalty uses autograd.grad(create_graph=True)
followed by an ordinary backward, the form that works under DDP (ecosystem.md).
Batches are drawn as one GLOBAL batch from a generator seeded by (seed, epoch) identically on every
rank, each rank taking its slice: so DDP's averaged gradient equals one process's gradient on the
global batch for the per-sample-mean losses (WGAN-GP, cycle, cls). The FEM's batch-level losses
(s2f, balance) are computed per rank's slice, so DDP differs from one process there.
Because each epoch reseeds its own generator, a run resumed from an epoch checkpoint repeats the
uninterrupted run exactly (no RNG state to save).

Checkpoints: `<run_dir>/checkpoint/` = modules.safetensors (every module), optimizers.pt (optimizer
state, loaded with torch.load(weights_only=True)), state.json (epoch, config, data fingerprint,
history). Written to a temp folder and renamed, so a kill never leaves a half checkpoint.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from bsegn.generative.config import BSeGNConfig
from bsegn.generative.losses import (balance_gap, balance_penalty, contrastive_from_logits, critic_loss,
                                     cycle_loss)
from bsegn.generative.networks import (Critic, FeatureGenerator, FeedbackModule, SemanticDecoder,
                                       SemanticEmbedder)

CHECKPOINT_FORMAT = "bsegn-trainer-checkpoint-v1"


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf or exceeded the divergence threshold; the last good checkpoint is kept."""


def build_networks(config: BSeGNConfig, feature_dim: int, semantic_dim: int) -> nn.ModuleDict:
    """The trainable modules a config asks for: generator, critic, and decoder / feedback / embedder
    only when their switches are on (a disabled part does not exist, so it cannot get gradients)."""
    noise_dim = config.noise_dim or semantic_dim
    modules = nn.ModuleDict({
        "generator": FeatureGenerator(semantic_dim, noise_dim, feature_dim, config.generator_hidden,
                                      config.generator_activation, config.generator_unit_norm),
        "critic": Critic(feature_dim, semantic_dim, config.critic_hidden),
    })
    if config.cycle:
        modules["decoder"] = SemanticDecoder(feature_dim, semantic_dim, config.decoder_hidden)
        if config.feedback:
            modules["feedback"] = FeedbackModule(config.decoder_hidden, config.generator_hidden)
    if config.fem:
        modules["embedder"] = SemanticEmbedder(feature_dim, semantic_dim, config.embedder_hidden,
                                               config.embed_dim, config.tau)
    return modules


def data_fingerprint(features: torch.Tensor, labels: torch.Tensor, semantics: torch.Tensor) -> str:
    """A short hash of the training data, so a checkpoint is only resumed on the data it was made on."""
    digest = hashlib.sha256()
    for tensor in (features, labels, semantics):
        t = tensor.detach().cpu().contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


class BSeGNTrainer:
    """Trains BSeGN's generator, critic, decoder and FEM on real seen features.

    Args:
        features: (N, d) float real features of SEEN training images.
        labels: (N,) class ids indexing `semantics` rows.
        semantics: (C, k) semantic vectors of ALL classes (seen and unseen).
        seen_classes / unseen_classes: class ids (rows of semantics).
        config: BSeGNConfig.
        accelerator: an accelerate.Accelerator (default: a new one with config.mixed_precision).
        run_dir: where checkpoints and losses.csv go (None: nothing is written, no resume).
    """

    def __init__(self, features, labels, semantics, seen_classes, unseen_classes, config: BSeGNConfig, *,
                 accelerator=None, run_dir: str | Path | None = None, show_progress: bool = True):
        from accelerate import Accelerator

        self.config = config
        # "no" (the default) leaves the precision to accelerate's launcher (`--mixed_precision fp16`)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=None if config.mixed_precision == "no" else config.mixed_precision)
        device = self.accelerator.device
        self.features = torch.as_tensor(features, dtype=torch.float32).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        self.semantics = torch.as_tensor(semantics, dtype=torch.float32).to(device)
        self.seen_classes = torch.as_tensor(seen_classes, dtype=torch.long).to(device)
        self.unseen_classes = torch.as_tensor(unseen_classes, dtype=torch.long).to(device)
        num_classes = self.semantics.shape[0]
        self.seen_class_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.seen_class_mask[self.seen_classes] = True
        if self.seen_class_mask[self.unseen_classes].any():
            raise ValueError("a class is listed both as seen and unseen")
        # Rows of `semantics` that are neither seen nor unseen here (the test-unseen classes during a
        # validation-protocol run) take no part: the FEM's softmax runs over seen + unseen classes only.
        self.split_class_mask = self.seen_class_mask.clone()
        self.split_class_mask[self.unseen_classes] = True
        if not self.seen_class_mask[self.labels].all():
            raise ValueError("training labels must all be seen classes (real unseen features are never used)")
        self.fingerprint = data_fingerprint(self.features, self.labels, self.semantics)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.show_progress = show_progress
        self.feature_dim = self.features.shape[1]
        self.semantic_dim = self.semantics.shape[1]
        self.noise_dim = config.noise_dim or self.semantic_dim

        world = self.accelerator.num_processes
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
        self.unseen_batch = config.fem_unseen_batch or config.batch_size
        if self.unseen_batch % world:
            raise ValueError(f"fem_unseen_batch {self.unseen_batch} must be divisible by the {world} processes")

        torch.manual_seed(config.seed)  # module initialisation, identical on every rank
        self.modules = build_networks(config, self.feature_dim, self.semantic_dim)
        self.seen_classifier = self._pretrain_seen_classifier() if config.cls_loss else None
        lrs = {"generator": config.lr_generator, "critic": config.lr_critic, "decoder": config.lr_decoder,
               "feedback": config.lr_generator, "embedder": config.lr_embedder}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.prepared: dict[str, nn.Module] = {}
        for name, module in self.modules.items():
            # fused Adam: one kernel per step instead of a Python loop over tensors (CPU and CUDA)
            optimizer = torch.optim.Adam(module.parameters(), lr=lrs[name], betas=(config.beta1, 0.999),
                                         fused=self.accelerator.device.type in ("cpu", "cuda"))
            self.prepared[name], self.optimizers[name] = self.accelerator.prepare(module, optimizer)
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    # --- helpers -----------------------------------------------------------------------------

    @property
    def iterations_per_epoch(self) -> int:
        return self.config.iterations_per_epoch or math.ceil(len(self.features) / self.config.batch_size)

    def _rank_slice(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        # Every rank draws the same global batch; each keeps its own contiguous slice.
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        size = tensor.shape[dim] // world
        return tensor.narrow(dim, rank * size, size)

    def _pretrain_seen_classifier(self) -> nn.Module:
        """The frozen softmax classifier of f-CLSWGAN's L_cls, trained on real seen features."""
        cfg = self.config
        device = self.accelerator.device
        index = torch.full((self.semantics.shape[0],), -1, dtype=torch.long, device=device)
        index[self.seen_classes] = torch.arange(len(self.seen_classes), device=device)
        classifier = nn.Linear(self.feature_dim, len(self.seen_classes)).to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3, betas=(0.5, 0.999))
        generator = torch.Generator().manual_seed(cfg.seed + 7)
        targets = index[self.labels]
        for _ in range(cfg.pretrain_classifier_epochs):
            order = torch.randperm(len(self.features), generator=generator).to(device)
            for start in range(0, len(order), 256):
                batch = order[start:start + 256]
                loss = nn.functional.cross_entropy(classifier(self.features[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        classifier.requires_grad_(False)
        self.seen_index = index
        return classifier

    def _generate(self, noise: torch.Tensor, semantics: torch.Tensor, *, grad: bool) -> torch.Tensor:
        """G(z, a), with the TF-VAEGAN feedback pass when enabled (its first pass is under no_grad so
        the generator has one differentiable forward per backward)."""
        generator = self.prepared["generator"]
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            feedback = None
            if "feedback" in self.prepared:
                with torch.no_grad():
                    _, hidden = self.prepared["decoder"](generator(noise, semantics))
                feedback = self.config.feedback_weight * self.prepared["feedback"](hidden)
            return generator(noise, semantics, feedback=feedback).float()

    def _fem_losses(self, features: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor,
                    contrastive: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_f2s + lambda_s2f L_s2f + lambda_bal L_bal of the FEM on a mixed batch (B, d); scores over all
        seen + unseen classes. domain (B,): 1 seen-domain and 0 unseen-domain rows of the balance loss,
        -1 rows outside it; contrastive (B,) bool: rows of the contrastive losses (None: all)."""
        cfg = self.config
        embedder = self.prepared["embedder"]
        with self.accelerator.autocast():
            logits = embedder(features, self.semantics).float()
        if not bool(self.split_class_mask.all()):
            logits = logits.masked_fill(~self.split_class_mask, -1e9)
        rows = logits if contrastive is None else logits[contrastive]
        f2s, s2f = contrastive_from_logits(rows, labels if contrastive is None else labels[contrastive],
                                           cfg.fem_s2f and cfg.lambda_s2f > 0)
        loss = f2s + cfg.lambda_s2f * s2f
        in_balance = domain >= 0
        gap = balance_gap(torch.softmax(logits[in_balance], dim=1), self.seen_class_mask, domain[in_balance] == 1)
        bal = torch.zeros((), device=logits.device)
        if cfg.balance:
            bal = balance_penalty(gap, cfg.balance_one_sided)
            loss = loss + cfg.lambda_bal * bal
        return loss, {"f2s": f2s.detach(), "s2f": s2f.detach(), "balance": bal.detach(), "balance_gap": gap.detach()}

    # --- one generator iteration -------------------------------------------------------------

    def draw(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random quantity of one generator iteration, drawn GLOBALLY (same on every rank) on the
        CPU generator `rng`, then sliced to this rank's share and moved to the device."""
        cfg = self.config
        n, b, bu = len(self.features), cfg.batch_size, self.unseen_batch
        draws = {
            "batches": torch.randint(n, (cfg.n_critic, b), generator=rng),
            "noise": torch.randn(cfg.n_critic, b, self.noise_dim, generator=rng),
            "alphas": torch.rand(cfg.n_critic, b, 1, generator=rng),
            "unseen_pick": torch.randint(len(self.unseen_classes), (bu,), generator=rng),
            "noise_unseen": torch.randn(bu, self.noise_dim, generator=rng),
            "noise_fem_seen": torch.randn(b, self.noise_dim, generator=rng),
        }
        device = self.accelerator.device
        dims = {"batches": 1, "noise": 1, "alphas": 1}
        return {k: self._rank_slice(v, dims.get(k, 0)).to(device) for k, v in draws.items()}

    def _critic_steps(self, draws: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]):
        """n_critic WGAN-GP critic steps (and decoder steps on the same real batches).
        Returns the last real batch (features, labels, semantics): the generator's seen batch."""
        cfg = self.config
        critic, opt_critic = self.prepared["critic"], self.optimizers["critic"]
        for step in range(cfg.n_critic):
            index = draws["batches"][step]
            real, labels = self.features[index], self.labels[index]
            semantics = self.semantics[labels]
            fake = self._generate(draws["noise"][step], semantics, grad=False)
            with self.accelerator.autocast():
                loss_d, parts = critic_loss(critic, real, fake, semantics, cfg.lambda_gp, alpha=draws["alphas"][step])
            opt_critic.zero_grad(set_to_none=True)
            self.accelerator.backward(loss_d)
            opt_critic.step()
            if "decoder" in self.prepared:
                with self.accelerator.autocast():
                    decoded, _ = self.prepared["decoder"](real)
                loss_r = cfg.lambda_decoder * cycle_loss(decoded.float(), semantics)
                self.optimizers["decoder"].zero_grad(set_to_none=True)
                self.accelerator.backward(loss_r)
                self.optimizers["decoder"].step()
                logs["decoder"] = loss_r.detach()
        logs.update(parts)
        return real, labels, semantics

    def fem_loss(self, draws, real, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The FEM step's loss on B real seen + B_u fake unseen (+ fake seen) features, G detached.

        The balance loss compares the seen domain with the fake unseen features; with
        balance_reference "real" (bsegn.md) the seen domain is the real seen batch, with "fake" it is
        G's fake features of the same seen classes, so that both sides of m_S - m_U are generated and the
        gap measures the seen/unseen bias, not real against fake."""
        device = self.accelerator.device
        cfg = self.config
        unseen_labels = self.unseen_classes[draws["unseen_pick"]]
        fake_unseen = self._generate(draws["noise_unseen"], self.semantics[unseen_labels], grad=False)
        n, nu = len(real), len(fake_unseen)
        real_side = 1 if cfg.balance_reference == "real" else -1
        feats, labs = [real, fake_unseen], [labels, unseen_labels]
        domain = [torch.full((n,), real_side, dtype=torch.int8, device=device),
                  torch.zeros(nu, dtype=torch.int8, device=device)]
        contrastive = [torch.ones(n + nu, dtype=torch.bool, device=device)]
        if cfg.fem_fake_seen or cfg.balance_reference == "fake":
            fake_seen = self._generate(draws["noise_fem_seen"], self.semantics[labels], grad=False)
            feats.append(fake_seen)
            labs.append(labels)
            # Fake seen features are seen-domain rows of the balance loss (its reference with "fake"); they
            # enter the contrastive losses only when fem_fake_seen asks for them.
            domain.append(torch.ones(len(fake_seen), dtype=torch.int8, device=device))
            contrastive.append(torch.full((len(fake_seen),), bool(cfg.fem_fake_seen), dtype=torch.bool, device=device))
        mask = torch.cat(contrastive)
        return self._fem_losses(torch.cat(feats), torch.cat(labs), torch.cat(domain), None if mask.all() else mask)

    def generator_loss(self, draws, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_G for the seen batch `labels` and the drawn unseen conditions; one G forward on both."""
        cfg = self.config
        device = self.accelerator.device
        logs: dict[str, torch.Tensor] = {}
        semantics = self.semantics[labels]
        z_seen = draws["noise"][-1]
        unseen_labels = self.unseen_classes[draws["unseen_pick"]]
        z_unseen = draws["noise_unseen"]
        need_unseen = "decoder" in self.prepared or ("embedder" in self.prepared and cfg.fem_boosts_g)
        z_all = torch.cat([z_seen, z_unseen]) if need_unseen else z_seen
        a_all = torch.cat([semantics, self.semantics[unseen_labels]]) if need_unseen else semantics
        fake_all = self._generate(z_all, a_all, grad=True)
        fake_seen = fake_all[:len(z_seen)]
        with self.accelerator.autocast():
            adversarial = -self.prepared["critic"](fake_seen, semantics).float().mean()
        loss = adversarial
        logs["adversarial"] = adversarial.detach()
        if self.seen_classifier is not None:
            cls = nn.functional.cross_entropy(self.seen_classifier(fake_seen), self.seen_index[labels])
            loss = loss + cfg.lambda_cls * cls
            logs["cls"] = cls.detach()
        if "decoder" in self.prepared:
            with self.accelerator.autocast():
                decoded, _ = self.prepared["decoder"](fake_all)
            cyc = cycle_loss(decoded.float(), a_all)
            loss = loss + cfg.lambda_cyc * cyc
            logs["cycle"] = cyc.detach()
        if "embedder" in self.prepared and cfg.fem_boosts_g:
            domain = torch.cat([torch.ones(len(z_seen), dtype=torch.int8, device=device),
                                torch.zeros(len(z_unseen), dtype=torch.int8, device=device)])
            emb, parts = self._fem_losses(fake_all, torch.cat([labels, unseen_labels]), domain)
            loss = loss + cfg.lambda_emb * emb
            logs["generator_fem"] = emb.detach()
            logs["generator_balance_gap"] = parts["balance_gap"]
        logs["generator"] = loss.detach()
        return loss, logs

    def _iteration(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        logs: dict[str, torch.Tensor] = {}
        draws = self.draw(rng)
        real, labels, _ = self._critic_steps(draws, logs)
        if "embedder" in self.prepared:
            loss_e, fem_parts = self.fem_loss(draws, real, labels)
            self.optimizers["embedder"].zero_grad(set_to_none=True)
            self.accelerator.backward(loss_e)
            self.optimizers["embedder"].step()
            logs["fem"] = loss_e.detach()
            logs.update({f"fem_{k}": v for k, v in fem_parts.items()})
        loss_g, g_logs = self.generator_loss(draws, labels)
        for name in ("generator", "feedback"):
            if name in self.optimizers:
                self.optimizers[name].zero_grad(set_to_none=True)
        self.accelerator.backward(loss_g)
        for name in ("generator", "feedback"):
            if name in self.optimizers:
                self.optimizers[name].step()
        logs.update(g_logs)
        return logs

    # --- epochs, logging, checkpoints --------------------------------------------------------

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)

    def fit(self, max_epochs: int | None = None) -> "BSeGNTrainer":
        """Train until config.epochs (resuming from run_dir's checkpoint if one matches), or stop after
        `max_epochs` more epochs (used to simulate an interruption). Raises TrainingDiverged."""
        from tqdm.auto import tqdm

        cfg = self.config
        if self.run_dir is not None and self.epoch == 0:
            self.load_checkpoint()  # a fresh trainer on an existing run folder resumes
        last = cfg.epochs if max_epochs is None else min(cfg.epochs, self.epoch + max_epochs)
        main = self.accelerator.is_main_process
        bar = tqdm(total=last - self.epoch, desc="BSeGN epochs", disable=not (main and self.show_progress),
                   leave=False)
        with warnings.catch_warnings():  # entered once per fit: it resets Python's shown-once warning records
            # The gradient penalty's double backward leaves the critic's output weight (1, hidden) a gradient
            # with strides (1, 1) instead of (hidden, 1): the same memory order for a single row, but DDP
            # compares strides and warns on every rank that it copies those `hidden` floats into its bucket.
            # Harmless at this size; silenced during training only.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self._train_epochs(last, bar)
        bar.close()
        return self

    def _train_epochs(self, last: int, bar) -> None:
        """The epoch loop of `fit`: train up to epoch `last`, log each epoch, checkpoint."""
        cfg = self.config
        while self.epoch < last:
            started = time.perf_counter()
            rng = self._epoch_generator(self.epoch)
            sums: dict[str, torch.Tensor] = {}
            for _ in range(self.iterations_per_epoch):
                logs = self._iteration(rng)
                values = torch.stack(list(logs.values()))
                bad = ~torch.isfinite(values) | (values.abs() > cfg.divergence_threshold)
                if bad.any():
                    names = [k for k, flag in zip(logs, bad.tolist()) if flag]
                    where = f"; the last good checkpoint is in {self.checkpoint_dir}" if self.run_dir and \
                        self.checkpoint_dir.exists() else ""
                    raise TrainingDiverged(
                        f"training diverged in epoch {self.epoch + 1}: loss(es) {', '.join(names)} = "
                        f"{[float(values[i]) for i, f in enumerate(bad.tolist()) if f]}{where}. "
                        "Lower the learning rates or the loss weights, or check the features for NaN/inf.")
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value
            row = {"epoch": self.epoch + 1, "seconds": time.perf_counter() - started}
            row.update({k: float(v) / self.iterations_per_epoch for k, v in sums.items()})
            self.history.append(row)
            self.epoch += 1
            bar.update(1)
            bar.set_postfix(critic=f"{row.get('critic', 0):.3f}", generator=f"{row.get('generator', 0):.3f}")
            if self.run_dir is not None:
                self._append_csv(row)
                if self.epoch % cfg.checkpoint_every == 0 or self.epoch == last:
                    self.save_checkpoint()

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def _append_csv(self, row: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.run_dir / "losses.csv"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keys = list(row)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        try:  # TensorBoard is a dependency, but a broken install must not stop training
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - any import problem just means no TensorBoard log
            return
        if not hasattr(self, "_tensorboard"):
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in row.items():
            if key != "epoch":
                self._tensorboard.add_scalar(f"bsegn/{key}", value, int(row["epoch"]))
        self._tensorboard.flush()

    def unwrapped(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.prepared[name])

    def save_checkpoint(self) -> None:
        """Atomically write every module, optimizer state and the epoch (main process only)."""
        from safetensors.torch import save_file

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.run_dir))
            tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
                       for name in self.prepared for key, value in self.unwrapped(name).state_dict().items()}
            save_file(tensors, str(temp / "modules.safetensors"))
            torch.save({name: opt.state_dict() for name, opt in self.optimizers.items()}, temp / "optimizers.pt")
            state = {"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "config": self.config.to_dict(),
                     "data_fingerprint": self.fingerprint, "history": self.history}
            (temp / "state.json").write_text(json.dumps(state, indent=1))
            old = self.run_dir / "checkpoint.old"
            if self.checkpoint_dir.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(self.checkpoint_dir, old)
            os.replace(temp, self.checkpoint_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> bool:
        """Resume from run_dir's checkpoint when it was made with the same config and data.
        A checkpoint from a different config or data is refused with a clear message."""
        from safetensors.torch import load_file

        folder = self.checkpoint_dir
        if not folder.exists() and (self.run_dir / "checkpoint.old").exists():
            folder = self.run_dir / "checkpoint.old"  # killed between the two renames
        if not (folder / "state.json").exists():
            return False
        state = json.loads((folder / "state.json").read_text())
        mine = {k: v for k, v in self.config.to_dict().items() if k != "epochs"}
        theirs = {k: v for k, v in state.get("config", {}).items() if k != "epochs"}
        if state.get("format") != CHECKPOINT_FORMAT or mine != theirs or \
                state.get("data_fingerprint") != self.fingerprint:
            raise ValueError(f"{folder} holds a checkpoint of a different config or training data; "
                             "use another run folder or delete it to start over.")
        tensors = load_file(str(folder / "modules.safetensors"), device=str(self.accelerator.device))
        for name in self.prepared:
            prefix = f"{name}."
            self.unwrapped(name).load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                                  if k.startswith(prefix)})
        optim_states = torch.load(folder / "optimizers.pt", map_location=self.accelerator.device, weights_only=True)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(optim_states[name])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        return True
