"""Trainer speed: achieved GFLOP/s of BSeGN's generator/critic training vs a bare matmul roofline.

    python bench/trainer_speed.py [--batch-size 64] [--hidden 4096] [--feature-dim 2048] [--semantic-dim 85]
                                  [--iterations 5] [--threads N]

Trains the WGAN-GP generator and critic alone (fem and cycle off: the G/D MLPs) through BSeGNTrainer
for a few generator iterations. The matmuls one generator iteration performs are listed explicitly
(`iteration_matmuls`: forward, input-gradient and weight-gradient shapes of the critic steps with the
gradient penalty's second-order pass, and of the generator step); their FLOPs divided by the measured
iteration time is the trainer's GFLOP/s. The roofline is the same list of shapes run as bare
torch.matmul calls on the same threads: the ratio is then the share of the time the trainer spends
doing useful matmul work rather than framework overhead, elementwise ops and optimiser steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def iteration_matmuls(b: int, h: int, d: int, k: int, nz: int, n_critic: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every matmul (m x k) @ (k x n) in one generator iteration with fem/cycle off
    (the 1-wide output layers are left out: negligible)."""
    d_in, g_in = d + k, nz + k
    critic_step = [
        (b, g_in, h, 1), (b, h, d, 1),            # no-grad fake generation
        (3 * b, d_in, h, 1),                      # critic forward on [real; fake; mixed]
        (b, h, d_in, 1),                          # penalty: input gradient of the mixed rows
        (d_in, 3 * b, h, 1),                      # backward: first-layer weight gradient
        (h, b, d_in, 1), (b, d_in, h, 1),         # backward through the penalty's input-gradient matmul
    ]
    generator_step = [
        (b, g_in, h, 1), (b, h, d, 1),            # generator forward
        (b, d_in, h, 1),                          # critic forward on fake
        (b, h, d_in, 1), (d_in, b, h, 1),         # critic backward: input and weight gradients
        (b, d, h, 1), (h, b, d, 1),               # generator output layer: input and weight gradients
        (g_in, b, h, 1),                          # generator first-layer weight gradient
    ]
    return [(m, kk, n, c * n_critic) for m, kk, n, c in critic_step] + generator_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--semantic-dim", type=int, default=85)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.trainer import BSeGNTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    b, h, d, k = args.batch_size, args.hidden, args.feature_dim, args.semantic_dim
    shapes = iteration_matmuls(b, h, d, k, k, args.n_critic)
    flops = sum(2 * m * kk * n * count for m, kk, n, count in shapes)

    generator = torch.Generator().manual_seed(0)
    n = 4096
    features = torch.rand(n, d, generator=generator)
    labels = torch.randint(40, (n,), generator=generator)
    semantics = torch.rand(50, k, generator=generator)
    config = BSeGNConfig(generator_hidden=h, critic_hidden=h, batch_size=b, n_critic=args.n_critic,
                         fem=False, cycle=False, mfim_levels=("x",), epochs=1, iterations_per_epoch=2)
    trainer = BSeGNTrainer(features, labels, semantics, torch.arange(40), torch.arange(40, 50), config,
                           show_progress=False)
    trainer.fit()  # warm-up (allocator, kernels)
    trainer.config = config.replace(epochs=2, iterations_per_epoch=args.iterations)
    started = time.perf_counter()
    trainer.fit()
    seconds = (time.perf_counter() - started) / args.iterations
    achieved = flops / seconds / 1e9

    operands = [(torch.rand(m, kk), torch.rand(kk, n), count) for m, kk, n, count in shapes]
    for a, w, _ in operands:
        torch.matmul(a, w)  # warm-up
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        started = time.perf_counter()
        for a, w, count in operands:
            for _ in range(count):
                torch.matmul(a, w)
        best = min(best, time.perf_counter() - started)
    roofline = flops / best / 1e9

    print(f"batch {b}, hidden {h}, d {d}, k {k}, n_critic {args.n_critic}, {torch.get_num_threads()} threads, "
          f"device {trainer.accelerator.device}")
    print(f"trainer: {seconds * 1000:.1f} ms per generator iteration, {flops / 1e9:.1f} GFLOP -> {achieved:.1f} GFLOP/s")
    print(f"bare matmul roofline of the same {sum(c for *_, c in shapes)} matmul shapes: {roofline:.1f} GFLOP/s")
    print(f"ratio: {achieved / roofline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
