"""The model behind `bsegn serve`: loaded once in the background, forward passes batched across
waiting requests by one worker thread, classes added in memory, the extended model saved to a new
folder under --save-dir only.

    engine = Engine("runs/demo-final", save_dir="served")
    engine.start()                              # loads in a thread; engine.state: loading -> ready | failed
    future = engine.submit(tensor, top_k=5)     # concurrent.futures.Future -> the image's inference.Prediction
    engine.add_classes([("new", [0.1, ...])])   # the served model gains unseen classes (memory only)
    engine.save("my_model")                     # save_dir/my_model; the original bundle is never touched

Requests are bounded (Busy beyond `max_pending`); the worker takes up to `max_batch` queued images and,
while more requests are still being decoded, waits up to `max_wait_ms` for them to join the batch.
"""
from __future__ import annotations

import collections
import dataclasses
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

from bsegn.core.errors import BsegnError, BundleError
from bsegn.core.logs import get_logger

log = get_logger(__name__)

SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Busy(Exception):
    """More requests are pending than the server accepts; the client should retry."""


class RequestError(Exception):
    """A client error with its HTTP status (the message is what the client sees)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = 20_000_000      # one upload
    max_pixels: int = 40_000_000     # width x height, read from the header before decoding
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_pending: int = 64            # requests admitted at once (decoding, queued or in the forward)
    decoders: int = 2                # uploads decoded at the same time (threads)


class Engine:
    def __init__(self, model_path: str | Path, *, mode: str = "gzsl", device: str = "cpu",
                 save_dir: str | Path | None = None, limits: Limits = Limits(), open_world: str | bool = "auto"):
        self.model_path, self.mode, self.device, self.limits = Path(model_path), mode, device, limits
        self.open_world = open_world  # auto, on or off: when the rule answers `unknown` (serve --open-world)
        self.save_dir = None if save_dir is None else Path(save_dir).resolve()
        self.state, self.error = "loading", None
        self.predictor = None   # replaced whole (never mutated) when classes are added
        self.added: list[str] = []
        self.batch_sizes: collections.Counter = collections.Counter()
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._change_lock = threading.Lock()  # one add/save at a time
        self._worker: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Load the model (in a thread unless background=False), then start the batching worker; a model
        that cannot be used leaves state "failed" and its error in `error` (routes answer 500 with it)."""
        if background:
            threading.Thread(target=self._load_or_fail, name="bsegn-serve-load", daemon=True).start()
        else:
            self._load_or_fail()

    def load(self) -> None:
        """Load and verify the model now (every hash, the schema, the backbone built), then start the
        worker; BsegnError when it cannot be served (`bsegn serve` calls this before it listens)."""
        from bsegn.app.bundle import load_bundle

        started = time.perf_counter()
        bundle = load_bundle(self.model_path, device="cpu", with_train_features=True)  # add-class refits on them
        self.predictor = served_predictor(bundle, self.mode, self.device, self.open_world)
        self.start_worker()
        self.state = "ready"
        log.info("serve: model %s ready in %.1f s (%d classes)", bundle.path, time.perf_counter() - started,
                 bundle.num_classes)

    def _load_or_fail(self) -> None:
        try:
            self.load()
        except (BsegnError, OSError) as error:
            self.state, self.error = "failed", str(error)
            log.error("serve: the model did not load: %s", error)

    def start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="bsegn-serve-batcher", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    # --- admission and batching --------------------------------------------------------------------

    def admit(self) -> None:
        """Count one more request in flight, or raise Busy when `max_pending` are already in."""
        with self._pending_lock:
            if self._pending >= self.limits.max_pending:
                raise Busy(f"the server is busy ({self._pending} requests in progress); retry in a moment")
            self._pending += 1

    def release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def submit(self, tensor, *, top_k: int = 5, explain: bool = False):
        """One transformed image (3, H, W) -> a Future of its Prediction (bsegn.app.inference), `top_k` classes,
        the explanation only when asked."""
        from concurrent.futures import Future

        future: Future = Future()
        self._queue.put((tensor, top_k, explain, future))
        return future

    def _collect(self, first) -> list:
        items = [first]
        deadline = time.monotonic() + self.limits.max_wait_ms / 1000
        while len(items) < self.limits.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                # wait only while admitted requests are still decoding: they are about to arrive
                if self._pending <= len(items) or time.monotonic() >= deadline:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            items.append(item)
        return items

    def _work(self) -> None:
        import torch

        while True:
            first = self._queue.get()
            if first is None:
                return
            items = self._collect(first)
            predictor = self.predictor
            self.batch_sizes[len(items)] += 1
            try:  # one forward for the batch: the largest top_k asked, the explanation if anyone asked
                answers = predictor.predict_tensors(torch.stack([item[0] for item in items]),
                                                    top_k=max(item[1] for item in items),
                                                    explain=any(item[2] for item in items))
            except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
                log.exception("serve: forward failed")
                for item in items:
                    item[3].set_exception(error)
                continue
            for (_, top_k, explain, future), answer in zip(items, answers):
                future.set_result(dataclasses.replace(answer, top=answer.top[:top_k],
                                                      explain=answer.explain if explain else None))

    # --- the served model --------------------------------------------------------------------------

    def ready_predictor(self):
        if self.state != "ready":
            raise RuntimeError(f"the model is {self.state}")
        return self.predictor

    def describe(self) -> dict[str, Any]:
        """The model card and classes (GET /model)."""
        bundle = self.ready_predictor().bundle
        info = bundle.info
        seen = bundle.seen_mask.tolist()
        metrics = {k: bundle.metrics.get(k) for k in ("T1", "U", "S", "H", "protocol", "domain_auroc", "oracle_H")
                   if k in bundle.metrics}
        return {"state": self.state, "benchmark": bundle.benchmark or "custom", "path_name": self.model_path.name,
                "backbone": info.get("backbone"), "input_size": bundle.data_config.get("input_size"),
                "mode": self.mode, "gate": bundle.gate.metadata(), "unseen_ranking": bundle.unseen_ranking,
                "metrics": metrics, "semantic_kind": bundle.semantic_kind,
                "attribute_names": bundle.attribute_names, "semantic_dim": int(bundle.trained.semantic_dim),
                "classes": [{"name": name, "seen": flag, "added": name in self.added}
                            for name, flag in zip(bundle.class_names, seen)],
                "added": list(self.added), "saving": self.save_dir is not None,
                "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels}}

    def add_classes(self, new_classes: list) -> list[str]:
        """Append unseen classes (NewClass items or (name, values) pairs, parsed as add-class parses them) to
        the served model, in memory: add_class.extended, the CLI's own path (the one name rule, refits of
        the classifiers and a learned gate, the reachability warning). RequestError 409 for a name the model
        has, 400 for any other refusal; the served model is then unchanged."""
        from bsegn.app.add_class import extended
        from bsegn.app.bundle.semantics import uses_text
        from bsegn.app.class_inputs import NameTaken

        with self._change_lock:
            old = self.ready_predictor().bundle
            if uses_text(old.semantic_kind):
                raise RequestError(400, f"this model's classes are described in words (semantics {old.semantic_kind}): "
                                        "the page adds classes from attribute values only; use `bsegn add-class "
                                        "--description`")
            if old.train_features is None:
                raise RequestError(409, "this model holds no training features: classes cannot be added to it")
            try:
                bundle = extended(old, new_classes)  # requests keep using the old model until the swap below
            except NameTaken as error:
                raise RequestError(409, str(error)) from None
            except BundleError as error:
                raise RequestError(400, f"{error}; the served model is unchanged") from None
            self.predictor = served_predictor(bundle, self.mode, self.device, self.open_world)
            added = bundle.class_names[len(old.class_names):]
            self.added += added
        log.info("serve: added %s as unseen class(es) (in memory)", ", ".join(added))
        return added

    def save(self, folder_name: str) -> str:
        """Write the served model (with its added classes) to save_dir/folder_name, a new folder."""
        from bsegn.app.bundle import save_bundle
        from bsegn.core.files import existing_folder
        from bsegn.core.locks import BundleLock

        if self.save_dir is None:
            raise RequestError(403, "saving is off: start `bsegn serve` with --save-dir DIR to allow it")
        name = folder_name if isinstance(folder_name, str) else ""
        if not SAFE_FOLDER.fullmatch(name) or set(name) == {"."}:
            raise RequestError(400, "the folder name must be one plain name: letters, digits, '.', '_' or '-', "
                                    "1 to 64 characters, starting with a letter or digit (no path)")
        target = self.save_dir / name
        with self._change_lock, BundleLock(target):  # another server saving into the same folder waits
            if target.exists() or existing_folder(target) is not None:
                raise RequestError(409, f"{name!r} already exists in the save folder; choose a new name")
            save_bundle(self.ready_predictor().bundle, target)
        log.info("serve: saved the served model to %s", target)
        return name


def served_predictor(bundle, mode: str, device: str, open_world: str | bool = "auto"):
    """The inference engine's Predictor, as predict and the Python API use it."""
    from bsegn.app.inference import Predictor

    return Predictor(bundle, mode=mode, device=device, open_world=open_world)
