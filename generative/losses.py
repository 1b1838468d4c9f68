"""BSeGN's losses (docs/method.md), vectorised: no Python loop over samples or classes.

    critic_loss                 L_D = E[D(fake)] - E[D(real)] + lambda_gp * GP, ONE critic forward, with the
                                WGAN-GP penalty GP = E[(||grad_xhat D(xhat, a)||_2 - 1)^2]
    contrastive_from_logits     (L_f2s, L_s2f) of the FEM, from its scores s.p_c / tau
    balance_gap                 m_S - m_U; the balance loss is its square (max-response consistency)
    cycle_loss                  mean over the batch of ||a_hat - a||_1
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def _interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    return (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, semantics: torch.Tensor, lambda_gp: float,
                alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D for real/fake (B, d) with semantics (B, k). One critic call on [real; fake; xhat] (one DDP
    forward per backward, and one large matmul instead of three). Returns (loss, parts).

    The penalty's gradient is taken with autograd.grad(create_graph=True) and the caller runs an ordinary
    backward: the form that works under DDP (docs/method.md, "Under DDP")."""
    b = real.shape[0]
    mixed = _interpolate(real, fake.detach(), alpha)
    values = critic(torch.cat([real, fake.detach(), mixed]), semantics.repeat(3, 1))
    (grad,) = torch.autograd.grad(values[2 * b:].sum(), mixed, create_graph=True)
    gp = (grad.norm(2, dim=1) - 1).pow(2).mean()
    wasserstein = values[:b].mean() - values[b:2 * b].mean()
    loss = -wasserstein + lambda_gp * gp
    return loss, {"critic": loss.detach(), "wasserstein": wasserstein.detach(), "gp": gp.detach()}


def contrastive_from_logits(logits: torch.Tensor, labels: torch.Tensor,
                            semantic_to_feature: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The FEM's bidirectional contrastive loss from its logits (B, C) = s.p_c / tau (what
    SemanticEmbedder.forward returns), labels (B,) in [0, C).

    L_f2s = -mean_i log softmax_c(s_i.p_c / tau)[y_i]   (each feature against every class)
    L_s2f = -mean_{c in batch} mean_{i: y_i = c} log softmax_j(s_j.p_c / tau)[i]
            (each class present in the batch against every feature; its samples are the positives)
    Returns (L_f2s, L_s2f); L_s2f is a zero tensor when semantic_to_feature is False."""
    f2s = F.cross_entropy(logits, labels)
    if not semantic_to_feature:
        return f2s, torch.zeros((), device=logits.device, dtype=f2s.dtype)
    present, index = torch.unique(labels, return_inverse=True)
    class_logits = logits.t()[present]  # (C_b, B): prototype of each present class vs every feature
    log_prob = F.log_softmax(class_logits, dim=1)
    positives = (index.unsqueeze(0) == torch.arange(len(present), device=labels.device).unsqueeze(1)).to(log_prob.dtype)
    per_class = (log_prob * positives).sum(1) / positives.sum(1)
    return f2s, -per_class.mean()


def balance_gap(probabilities: torch.Tensor, seen_class_mask: torch.Tensor,
                from_seen_domain: torch.Tensor) -> torch.Tensor:
    """probabilities (B, C) softmax over ALL classes; seen_class_mask (C,) bool; from_seen_domain (B,)
    bool (True: a seen-domain sample, False: an unseen-domain one).

    m_S - m_U, signed: m_S = mean over seen-domain samples of max_{c in S} p(c|x), m_U = mean over
    unseen-domain samples of max_{c in U} p(c|x); 0 when either group is empty. Positive: the model
    answers the seen domain more confidently than the unseen one."""
    seen_mask = seen_class_mask.to(torch.bool)
    if from_seen_domain.all() or not from_seen_domain.any():
        return probabilities.sum() * 0.0
    neg = torch.finfo(probabilities.dtype).min
    max_seen = probabilities.masked_fill(~seen_mask, neg).amax(1)
    max_unseen = probabilities.masked_fill(seen_mask, neg).amax(1)
    return max_seen[from_seen_domain].mean() - max_unseen[~from_seen_domain].mean()


def cycle_loss(decoded: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
    """decoded a_hat (B, k), semantics a (B, k) -> mean_i ||a_hat_i - a_i||_1."""
    return (decoded - semantics).abs().sum(1).mean()
