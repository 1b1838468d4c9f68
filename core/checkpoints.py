"""One epoch checkpoint for every training loop (backbone fine-tuning and BSeGN).

    checkpoint = EpochCheckpoint(run_dir / "checkpoint", accelerator, kind="bsegn", key=digest_json(...))
    state = checkpoint.resume()             # None, or the dict given to the last save (epoch included)
    ...
    checkpoint.save(epoch, history=history) # every rank calls it

The folder holds accelerate's own state (`accelerator.save_state`: every prepared model as
safetensors, every optimizer, every object registered with `register_for_checkpointing`, and the RNG
states) plus `bsegn.json` (format, kind, key, epoch and the caller's small JSON state). It is written
to `<folder>.tmp` by every rank and renamed into place by the main process, so a kill never leaves a
half checkpoint (a kill between the two renames leaves `<folder>.old`, which `resume` reads).

`key` names what the checkpoint was made from (config + data digest): a checkpoint with another key is
refused with a clear message instead of being resumed into a different run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from bsegn.core.errors import DataError
from bsegn.core.files import atomic_write_json, existing_folder

FORMAT = "bsegn-checkpoint-v2"
STATE_FILE = "bsegn.json"


class EpochCheckpoint:
    def __init__(self, folder: str | os.PathLike, accelerator, *, kind: str, key: str):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.kind = kind
        self.key = key

    @property
    def temp(self) -> Path:
        return self.folder.with_name(self.folder.name + ".tmp")

    def exists(self) -> bool:
        found = existing_folder(self.folder)
        return found is not None and (found / STATE_FILE).is_file()

    def save(self, epoch: int, **state: Any) -> None:
        """Write the accelerator's state and `state` (JSON-able) as the checkpoint after `epoch` epochs."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(self.temp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_write_json(self.temp / STATE_FILE, {"format": FORMAT, "kind": self.kind, "key": self.key,
                                                       "epoch": int(epoch), **state})
            old = self.folder.with_name(self.folder.name + ".old")
            if self.folder.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.folder, old)
            os.replace(self.temp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def read_state(self) -> dict[str, Any] | None:
        """The checkpoint's bsegn.json (without loading any tensor), or None when there is none."""
        found = existing_folder(self.folder)
        if found is None or not (found / STATE_FILE).is_file():
            return None
        try:
            state = json.loads((found / STATE_FILE).read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{found / STATE_FILE} is unreadable ({error}); delete {found} to start the stage over") from None
        if state.get("format") != FORMAT or state.get("kind") != self.kind:
            raise DataError(f"{found} is not a bsegn {self.kind} checkpoint of this version "
                            f"(format {state.get('format')!r}); delete it to start the stage over")
        if state.get("key") != self.key:
            raise DataError(f"{found} holds a checkpoint of a different config or training data; "
                            "use another run folder or delete it to start over")
        return state

    def resume(self) -> dict[str, Any] | None:
        """Load the checkpoint into the accelerator's prepared objects; returns its state (with "epoch"),
        or None when there is no checkpoint. Every rank calls it."""
        state = self.read_state()
        if state is None:
            return None
        self.accelerator.load_state(str(existing_folder(self.folder)))
        return state
