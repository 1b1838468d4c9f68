"""The maths of one BSeGN generator iteration (docs/method.md), as methods BSeGNTrainer inherits:

    draw(rng)                         every random quantity of the iteration, drawn globally, sliced per rank
    critic_steps(draws, logs)         n_critic WGAN-GP critic steps (+ a semantic-decoder step on the same
                                      real batch, L_R = ||R(x) - a_y||_1, when lambda_cyc > 0)
    fem_loss(draws, real, labels)     the FEM step's loss on B real seen + B fake unseen features (G detached):
                                      L_f2s + lambda_s2f L_s2f + lambda_bal L_bal
    generator_loss(draws, labels)     -E[D(G(z,a),a)] + lambda_cls L_cls + lambda_cyc L_cyc
                                      + lambda_emb (L_bicon + lambda_bal L_bal) through the current FEM
    iteration(rng)                    the three steps above, each with its own optimiser

The generator step's samples are those the last critic step (its seen noise, for the last real batch's
classes) and the FEM step (its unseen classes and noise) were fitted on, and its balance term takes m_S
over G's fake seen features (the FEM step's over the real seen batch). Issue 13 measured the alternative,
fresh draws for the generator step with m_S over the real seen batch in both steps: it lost on the
AwA1-Lampert validation protocol (docs/results.md, "Balance loss: one reference, fresh generator samples").

A term whose weight is 0 is skipped (and a part no term needs is not built: build_networks).
Every module has exactly one forward per backward (fake features for other modules' steps are made
under no_grad), and the gradient penalty uses autograd.grad(create_graph=True) followed by an ordinary
backward: the form that works under DDP (docs/method.md, "Under DDP").

The methods read the trainer's attributes: config, accelerator, features, labels, semantics,
seen_classes, unseen_classes, seen_class_mask, split_class_mask, prepared, optimizers, seen_classifier,
seen_index (and critic_graph, a CriticGraph or None).

GPU option (environment variable BSEGN_CUDA_GRAPHS=1, off by default, ignored on a CPU): the n_critic
critic (+ decoder) steps of an iteration, which are most of its kernel launches at batch 64, are
captured once as a CUDA graph and replayed (`CriticGraph`); the FEM and generator steps stay eager
(their losses take torch.unique and boolean masks, whose shapes depend on the data: not capturable).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from bsegn.core.logs import get_logger
from bsegn.generative.losses import balance_gap, contrastive_from_logits, critic_loss, cycle_loss

log = get_logger(__name__)

CUDA_GRAPHS_VARIABLE = "BSEGN_CUDA_GRAPHS"

SEEN_CLASSIFIER_EPOCHS = 10  # the frozen seen classifier of the lambda_cls term (f-CLSWGAN)
SEEN_CLASSIFIER_LR = 1e-3
SEEN_CLASSIFIER_BATCH = 256


class TrainingSteps:
    """One generator iteration of BSeGN; mixed into BSeGNTrainer."""

    # --- helpers -----------------------------------------------------------------------------

    def _rank_slice(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        # Every rank draws the same global batch; each keeps its own contiguous slice.
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        size = tensor.shape[dim] // world
        return tensor.narrow(dim, rank * size, size)

    def _generate(self, noise: torch.Tensor, semantics: torch.Tensor, *, grad: bool) -> torch.Tensor:
        """G(z, a) under the accelerator's autocast, as float32."""
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return self.prepared["generator"](noise, semantics).float()

    def pretrain_seen_classifier(self, seed: int) -> nn.Module:
        """The frozen softmax classifier of f-CLSWGAN's L_cls, trained on real seen features
        (sets self.seen_index: class id -> its column)."""
        device = self.accelerator.device
        index = torch.full((self.semantics.shape[0],), -1, dtype=torch.long, device=device)
        index[self.seen_classes] = torch.arange(len(self.seen_classes), device=device)
        classifier = nn.Linear(self.features.shape[1], len(self.seen_classes)).to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=SEEN_CLASSIFIER_LR, betas=(0.5, 0.999))
        generator = torch.Generator().manual_seed(seed + 7)
        targets = index[self.labels]
        for _ in range(SEEN_CLASSIFIER_EPOCHS):
            order = torch.randperm(len(self.features), generator=generator).to(device)
            for start in range(0, len(order), SEEN_CLASSIFIER_BATCH):
                batch = order[start:start + SEEN_CLASSIFIER_BATCH]
                loss = nn.functional.cross_entropy(classifier(self.features[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        classifier.requires_grad_(False)
        self.seen_index = index
        return classifier

    def _fem_losses(self, features: torch.Tensor, labels: torch.Tensor,
                    seen_domain: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_f2s + lambda_s2f L_s2f + lambda_bal L_bal of the FEM on a mixed batch (B, d) with labels (B,);
        scores over the split's seen + unseen classes. seen_domain (B,) bool: seen-domain rows of the
        balance loss (the others are its unseen-domain rows)."""
        cfg = self.config
        with self.accelerator.autocast():
            logits = self.prepared["embedder"](features, self.semantics).float()
        if not self.all_split_classes:
            logits = logits.masked_fill(~self.split_class_mask, -1e9)
        f2s, s2f = contrastive_from_logits(logits, labels, cfg.lambda_s2f > 0)
        loss = f2s + cfg.lambda_s2f * s2f
        gap = balance_gap(torch.softmax(logits, dim=1), self.seen_class_mask, seen_domain)
        bal = torch.zeros((), device=logits.device)
        if cfg.lambda_bal > 0:
            bal = gap.pow(2)
            loss = loss + cfg.lambda_bal * bal
        return loss, {"f2s": f2s.detach(), "s2f": s2f.detach(), "balance": bal.detach(), "balance_gap": gap.detach()}

    def _domains(self, seen: int, unseen: int) -> torch.Tensor:
        """(seen + unseen,) bool: True for the first `seen` rows."""
        device = self.accelerator.device
        return torch.cat([torch.ones(seen, dtype=torch.bool, device=device),
                          torch.zeros(unseen, dtype=torch.bool, device=device)])

    # --- one generator iteration -------------------------------------------------------------

    def draw(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random quantity of one generator iteration, drawn GLOBALLY (same on every rank) on the
        CPU generator `rng`, then sliced to this rank's share and moved to the device."""
        cfg = self.config
        n, b, k = len(self.features), cfg.batch_size, self.noise_dim
        draws = {
            "batches": torch.randint(n, (cfg.n_critic, b), generator=rng),
            "noise": torch.randn(cfg.n_critic, b, k, generator=rng),
            "alphas": torch.rand(cfg.n_critic, b, 1, generator=rng),
            "unseen_pick": torch.randint(len(self.unseen_classes), (b,), generator=rng),
            "noise_unseen": torch.randn(b, k, generator=rng),
        }
        # Drawn and unused (fake seen features for the FEM, an option since removed): it keeps every later
        # draw of the epoch, and so the numbers of every config, where they were.
        torch.randn(b, k, generator=rng)
        device = self.accelerator.device
        dims = {"batches": 1, "noise": 1, "alphas": 1}
        return {key: self._rank_slice(value, dims.get(key, 0)).to(device) for key, value in draws.items()}

    def critic_steps(self, draws: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]):
        """n_critic WGAN-GP critic steps (and decoder steps on the same real batches).
        Returns the last real batch (features, labels): the generator's seen batch."""
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
                loss_r = cycle_loss(decoded.float(), semantics)
                self.optimizers["decoder"].zero_grad(set_to_none=True)
                self.accelerator.backward(loss_r)
                self.optimizers["decoder"].step()
                logs["decoder"] = loss_r.detach()
        logs.update(parts)
        return real, labels

    def fem_loss(self, draws, real, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The FEM step's loss on the real seen batch and B fake unseen features (G detached); the balance
        loss compares the real seen batch (seen domain) with the fake unseen features."""
        unseen_labels = self.unseen_classes[draws["unseen_pick"]]
        fake_unseen = self._generate(draws["noise_unseen"], self.semantics[unseen_labels], grad=False)
        return self._fem_losses(torch.cat([real, fake_unseen]), torch.cat([labels, unseen_labels]),
                                self._domains(len(real), len(fake_unseen)))

    def generator_loss(self, draws, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_G for the seen batch `labels` and the drawn unseen conditions; one G forward on both."""
        cfg = self.config
        logs: dict[str, torch.Tensor] = {}
        semantics = self.semantics[labels]
        z_seen = draws["noise"][-1]
        unseen_labels = self.unseen_classes[draws["unseen_pick"]]
        z_unseen = draws["noise_unseen"]
        fem_trains_g = "embedder" in self.prepared and cfg.lambda_emb > 0
        need_unseen = "decoder" in self.prepared or fem_trains_g
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
        if fem_trains_g:
            emb, parts = self._fem_losses(fake_all, torch.cat([labels, unseen_labels]),
                                          self._domains(len(z_seen), len(z_unseen)))
            loss = loss + cfg.lambda_emb * emb
            logs["generator_fem"] = emb.detach()
            logs["generator_balance_gap"] = parts["balance_gap"]
        logs["generator"] = loss.detach()
        return loss, logs

    def _step(self, name: str, loss: torch.Tensor) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizers[name].step()

    def iteration(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One generator iteration; returns its logged losses (detached scalars)."""
        logs: dict[str, torch.Tensor] = {}
        draws = self.draw(rng)
        graph = getattr(self, "critic_graph", None)
        real, labels = (graph or self.critic_steps)(draws, logs)
        if "embedder" in self.prepared:
            loss_e, fem_parts = self.fem_loss(draws, real, labels)
            self._step("embedder", loss_e)
            logs["fem"] = loss_e.detach()
            logs.update({f"fem_{key}": value for key, value in fem_parts.items()})
        loss_g, g_logs = self.generator_loss(draws, labels)
        self._step("generator", loss_g)
        logs.update(g_logs)
        return logs


def cuda_graphs_wanted(accelerator) -> bool:
    """Whether BSEGN_CUDA_GRAPHS=1 asks for CriticGraph and it can run here: one CUDA process without
    fp16's loss scaler (whose inf checks synchronise with the host). Elsewhere it is ignored (logged)."""
    if os.environ.get(CUDA_GRAPHS_VARIABLE, "0") in ("", "0"):
        return False
    reason = None
    if accelerator.device.type != "cuda":
        reason = f"the device is {accelerator.device.type}"
    elif accelerator.num_processes > 1:
        reason = "more than one process (DDP)"
    elif accelerator.mixed_precision == "fp16":
        reason = "fp16's loss scaler synchronises with the host"
    if reason:
        log.info(f"{CUDA_GRAPHS_VARIABLE} ignored: {reason}; the critic steps run eagerly")
        return False
    return True


class CriticGraph:
    """The critic steps of TrainingSteps as one CUDA graph: WARMUP eager calls on a side stream (CUDA
    graphs' rule), then one capture on static copies of the draws, then a replay per iteration with the
    new draws copied in. Each call is a real training step (the capture's own draws are replayed at
    once), so the run is the eager one up to floating-point order. A capture that fails logs why and
    leaves the trainer eager for good. Needs capturable optimisers (the trainer makes them so)."""

    WARMUP = 3

    def __init__(self, critic_steps):
        self.critic_steps, self.calls = critic_steps, 0
        self.graph = self.static_draws = self.static_logs = self.static_out = None
        self.failed = False

    def __call__(self, draws: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]):
        if self.failed or (self.graph is None and self.calls < self.WARMUP):
            self.calls += 1
            if self.failed:
                return self.critic_steps(draws, logs)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.critic_steps(draws, logs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None and not self._capture(draws):
            return self.critic_steps(draws, logs)
        for key, value in draws.items():
            self.static_draws[key].copy_(value, non_blocking=True)
        self.graph.replay()
        logs.update({key: value.clone() for key, value in self.static_logs.items()})
        return tuple(value.clone() for value in self.static_out)

    def _capture(self, draws) -> bool:
        self.static_draws = {key: value.clone() for key, value in draws.items()}
        self.static_logs, graph = {}, torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_out = self.critic_steps(self.static_draws, self.static_logs)
        except RuntimeError as error:
            log.warning(f"{CUDA_GRAPHS_VARIABLE}: capturing the critic steps failed ({error}); they run eagerly")
            self.failed = True
            return False
        self.graph = graph
        return True
