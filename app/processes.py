"""A command's process: set up before torch is imported (no_compile_cache), torn down at the end of a
(possibly multi-process) run (end_process_group: torch.distributed before the interpreter does).

`accelerate launch` starts one process per device and accelerate opens a process group in each
(gloo on CPU, NCCL on GPU). If a process exits with that group still open, its backend's worker
threads are destroyed during interpreter finalisation, and with gloo a rank can abort there
(SIGABRT, "terminate called without an active exception") after all its work is done and written;
the launcher then reports the whole run as failed. PyTorch's own guidance is to call
`destroy_process_group()` once per process when communication is over.
"""
from __future__ import annotations

import sys


def end_process_group() -> None:
    """Destroy the default process group if this process opened one.

    Call it only after the run succeeded on this process: after an error another rank may still be
    inside a collective, and destroying the group could then hang instead of letting the launcher stop
    the job. Never imports torch itself (so `predict` and `bsegn --help` stay fast)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as `accelerate launch` (torchrun) sets them in the environment; (0, 1) otherwise.
    Read before any Accelerator exists, so logging can be set up first."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def no_compile_cache() -> None:
    """Point torch's compile cache at the existing temporary folder, unless the user chose one: importing
    torchvision imports torch._dynamo, which creates `$TMPDIR/torchinductor_<user>/` on import, although
    predict and serve never compile. Nothing is written there unless something compiles. For the CLI
    commands only (a library user's process keeps torch's default)."""
    import os
    import tempfile

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.gettempdir())
