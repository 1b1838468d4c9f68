"""Trainer speed: achieved GFLOP/s of BSeGN's generator/critic training vs a bare matmul roofline.

    python bench/trainer_speed.py [--batch-size 64] [--hidden 4096] [--feature-dim 2048] [--semantic-dim 85]
                                  [--iterations 5] [--threads N] [--mixed-precision no|fp16|bf16]
                                  [--complete [--epoch-images 19832]]

Trains the WGAN-GP generator and critic alone (fem and cycle off: the G/D MLPs) through BSeGNTrainer
for a few generator iterations. The matmuls one generator iteration performs are listed explicitly
(`iteration_matmuls`: forward, input-gradient and weight-gradient shapes of the critic steps with the
gradient penalty's second-order pass, and of the generator step); their FLOPs divided by the measured
iteration time is the trainer's GFLOP/s. The roofline is the same list of shapes run as bare
torch.matmul calls on the same threads: the ratio is then the share of the time the trainer spends
doing useful matmul work rather than framework overhead, elementwise ops and optimiser steps.
Runs on the accelerator accelerate picks (a GPU when there is one; timings are synchronised there).

`--complete` also times the COMPLETE BSeGN (FEM, cycle branch, all losses) at the same sizes on
`--epoch-images` real-sized training features, and prints seconds per generator iteration, the projected
seconds per epoch (ceil(images / batch) iterations, as f-CLSWGAN counts an epoch) and the peak memory
(the process's peak RSS on a CPU, peak allocated GPU memory on a GPU).
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
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--complete", action="store_true",
                        help="also time the complete BSeGN (FEM + cycle) and report seconds per epoch and peak memory")
    parser.add_argument("--epoch-images", type=int, default=19832,
                        help="training images per epoch for --complete (default: AwA1 trainval, 19,832)")
    args = parser.parse_args(argv)

    import torch

    from bsegn.generative.config import BSeGNConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    b, h, d, k = args.batch_size, args.hidden, args.feature_dim, args.semantic_dim
    shapes = iteration_matmuls(b, h, d, k, k, args.n_critic)
    flops = sum(2 * m * kk * n * count for m, kk, n, count in shapes)

    config = BSeGNConfig(hidden=h, batch_size=b, n_critic=args.n_critic, fem=False, lambda_cyc=0.0,
                         mfim_levels=("x",), epochs=1, iterations_per_epoch=2)
    trainer = random_data_trainer(config, 4096, d, k, seed=0, mixed_precision=args.mixed_precision)
    device = trainer.accelerator.device
    seconds = time_iterations(trainer, config, args.iterations, device)
    achieved = flops / seconds / 1e9

    # The roofline multiplies in the precision the trainer's autocast uses for its matmuls.
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    # Outputs preallocated: the ceiling is the multiplications alone (a fresh 35 MB output is page-faulted in
    # by the kernel on each call otherwise, which made the "roofline" itself slow on a CPU).
    operands = [(torch.rand(m, kk, device=device, dtype=dtype), torch.rand(kk, n, device=device, dtype=dtype),
                 torch.empty(m, n, device=device, dtype=dtype), count) for m, kk, n, count in shapes]
    for a, w, out, _ in operands:
        torch.matmul(a, w, out=out)  # warm-up
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        synchronize(device)
        started = time.perf_counter()
        for a, w, out, count in operands:
            for _ in range(count):
                torch.matmul(a, w, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    roofline = flops / best / 1e9

    print(f"batch {b}, hidden {h}, d {d}, k {k}, n_critic {args.n_critic}, {torch.get_num_threads()} threads, "
          f"device {trainer.accelerator.device}")
    print(f"trainer: {seconds * 1000:.1f} ms per generator iteration, {flops / 1e9:.1f} GFLOP -> {achieved:.1f} GFLOP/s")
    print(f"bare matmul roofline of the same {sum(c for *_, c in shapes)} matmul shapes: {roofline:.1f} GFLOP/s")
    print(f"ratio: {achieved / roofline:.2f}")
    if args.complete:
        complete_bsegn(args, device)
    return 0


def random_data_trainer(config, n: int, d: int, k: int, *, seed: int, mixed_precision: str = "no"):
    """A BSeGNTrainer on n random (d,) features of 40 seen classes, 10 more unseen, (k,) semantics;
    mixed_precision "no" leaves the precision to accelerate's launcher."""
    import torch
    from accelerate import Accelerator

    from bsegn.generative.trainer import BSeGNTrainer

    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(n, d, generator=generator)
    labels = torch.randint(40, (n,), generator=generator)
    semantics = torch.rand(50, k, generator=generator)
    accelerator = Accelerator(mixed_precision=None if mixed_precision == "no" else mixed_precision)
    return BSeGNTrainer(features, labels, semantics, torch.arange(40), torch.arange(40, 50), config,
                        accelerator=accelerator, show_progress=False)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(trainer, config, iterations: int, device) -> float:
    """Seconds per generator iteration over `iterations` iterations, after a 2-iteration warm-up."""
    trainer.fit()  # warm-up (allocator, kernels)
    trainer.config = config.replace(epochs=2, iterations_per_epoch=iterations)
    synchronize(device)
    started = time.perf_counter()
    trainer.fit()
    synchronize(device)
    return (time.perf_counter() - started) / iterations


def complete_bsegn(args, device) -> None:
    """The complete BSeGN (bsegn.md defaults: FEM with embedder 2048, cycle branch, every loss) at the
    bench's sizes on --epoch-images random features: seconds per iteration and epoch, peak memory."""
    import math
    import resource

    import torch

    from bsegn.generative.config import BSeGNConfig

    b, h, d, k = args.batch_size, args.hidden, args.feature_dim, args.semantic_dim
    config = BSeGNConfig(hidden=h, batch_size=b, n_critic=args.n_critic, epochs=1, iterations_per_epoch=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = random_data_trainer(config, args.epoch_images, d, k, seed=1, mixed_precision=args.mixed_precision)
    seconds = time_iterations(trainer, config, args.iterations, device)
    per_epoch = math.ceil(args.epoch_images / b)
    if device.type == "cuda":
        peak = f"peak GPU memory allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    print(f"complete BSeGN (FEM {config.embedder_hidden}, cycle, hidden {h}, {args.mixed_precision} precision): "
          f"{seconds * 1000:.1f} ms per generator iteration; one epoch of {args.epoch_images} images = {per_epoch} "
          f"iterations = {seconds * per_epoch:.1f} s; {peak}")


if __name__ == "__main__":
    sys.exit(main())
