"""Image files read in batches for the inference engine: the next batch decodes while the network works on
this one, bad files are reported and left out, the batch is normalised as one tensor.

    for paths, images, attempted in read_batches(paths, transform, batch_size=32, max_pixels=N,
                                                 device_type="cpu", on_error=report):
        ...  # images (B, 3, H, W) normalised, or None when no file of the batch could be read
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

MAX_DECODE_THREADS = 4


def decode_threads(device_type: str) -> int:
    """Threads that decode the next batch while the network works on this one: on a GPU, all cores but
    one (up to MAX_DECODE_THREADS); on the CPU only cores the network's own threads leave free. Measured
    on 2 cores with torch's 2 threads (bench/predict.py, demo bundle, medians of 9 passes): decoding in
    the main thread between batches 0.66 of the bare forward's images/s, one overlapping thread 0.62, two
    0.58 (a decoding thread takes a core from the forward's OpenMP team, which then waits at every
    barrier): 0 threads there."""
    import torch

    from bsegn.datasets.image_dataset import available_cores

    spare = available_cores() - (1 if device_type == "cuda" else torch.get_num_threads())
    return max(0, min(spare, MAX_DECODE_THREADS))


class InlineExecutor:
    """ThreadPoolExecutor's submit/shutdown, run in the calling thread at submit time."""

    def submit(self, function, *args) -> Future:
        future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self) -> None:
        pass


def read_batches(paths: list[Path], transform, *, batch_size: int, max_pixels: int, device_type: str,
                 on_error: Callable[[Path, str], Any] | None = None) -> Iterator[tuple[list[Path], Any, int]]:
    """(the batch's readable paths, their images (B, 3, H, W) normalised by `transform` or None, how many
    paths the batch held) per batch of `batch_size` paths, in input order; `on_error(path, message)` for
    each file that cannot be read."""
    import torch

    from bsegn.datasets.images import ImageError, open_rgb

    def load(path):
        """(tensor, None) or (None, message); runs in worker threads (PIL decoding releases the GIL)."""
        try:
            return transform.to_uint8(open_rgb(path, max_pixels=max_pixels)), None
        except ImageError as error:  # the reader's advice, in predict's terms
            return None, str(error).replace("raise max_pixels", "raise the limit with --max-pixels N")
        except (OSError, ValueError) as error:  # anything PIL raises past open_rgb's checks
            return None, f"{path}: cannot read image ({error})"

    threads = decode_threads(device_type)
    pool = ThreadPoolExecutor(max_workers=threads) if threads else InlineExecutor()
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    try:
        pending = [pool.submit(load, p) for p in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            loaded = [future.result() for future in pending]
            pending = [pool.submit(load, p) for p in batches[index + 1]] if index + 1 < len(batches) else []
            readable, tensors = [], []
            for path, (tensor, message) in zip(batch, loaded):
                if tensor is None:
                    if on_error:
                        on_error(path, message)
                else:
                    tensors.append(tensor)
                    readable.append(path)
            yield readable, transform.normalize(torch.stack(tensors)) if tensors else None, len(batch)
    finally:
        pool.shutdown()
