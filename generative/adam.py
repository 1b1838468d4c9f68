"""Adam for the small fits that also run in the app's short processes: the final classifiers and the learned
gate, refitted by `bsegn add-class` on every call.

    optimizer = Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))
    loss.backward(); optimizer.step(); optimizer.zero_grad()

The arithmetic of torch.optim.Adam (Kingma & Ba 2015) on its single-tensor path, without weight decay or
amsgrad: the same parameters to the bit on CPU (tests/test_generative_parts.py). Why not torch.optim itself:
in torch 2.x every optimizer's first use imports torch._dynamo (its methods are wrapped in
torch._disable_dynamo), 1.6-2.4 s on a 2-core CPU, more than add-class's two classifier refits take
together (docs/results.md, "add-class without torch._dynamo"). The trainer and the backbone's fine-tuning
keep torch.optim: they run for minutes and checkpoint the optimizer's state.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam over `params` (tensors with requires_grad); a parameter whose grad is None is skipped and its
    step count does not advance (as in torch.optim)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("Adam got no parameter that requires a gradient")
        if not (lr > 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps >= 0):
            raise ValueError(f"Adam needs lr > 0, betas in [0, 1) and eps >= 0; got lr={lr}, betas={betas}, eps={eps}")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        # per parameter: step count, first moment, second moment
        self.state = [[0, torch.zeros_like(p), torch.zeros_like(p)] for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            state[0] += 1
            step, exp_avg, exp_avg_sq = state
            grad = p.grad
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # the bias corrections as torch computes them: Python floats, the step size folded into the update
            step_size = self.lr / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
