"""One epoch checkpoint for every training loop (backbone fine-tuning and BSeGN).

    checkpoint = EpochCheckpoint(run_dir / "checkpoint", accelerator, kind="bsegn", key=digest_json(...))
    state = checkpoint.resume(modules, optimizers, extras)   # None, or the JSON state of the last save
    ...
    checkpoint.save(epoch, modules, optimizers, extras, history=history)   # every rank calls it

A checkpoint folder holds
    modules.safetensors   every module's state_dict, keys prefixed "<name>."
    optimizers.pt         optimizer / scheduler / grad-scaler state dicts (tensors and numbers only:
                          read back with torch.load(weights_only=True), so loading never runs code)
    bsegn.json            format, kind, key, epoch and the caller's small JSON state
It is written to a temporary folder and renamed into place (core.files.atomic_folder) by the main
process, so a kill never leaves half a checkpoint.

Why not accelerate's save_state: one Accelerator serves every stage of a run (fine-tuning, then BSeGN,
for the validation protocol and then the final one), and save_state saves everything ever prepared on
it; and it reads RNG states back with pickle. The loops here reseed per epoch, so no RNG state is needed
for a resumed run to repeat an uninterrupted one.

`key` names what the checkpoint was made from (config + data digest): a checkpoint with another key is
refused with a clear message instead of being resumed into a different run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from bsegn.core.errors import DataError
from bsegn.core.files import atomic_folder, atomic_write_json, existing_folder

FORMAT = "bsegn-checkpoint-v2"
STATE_FILE = "bsegn.json"
MODULES_FILE = "modules.safetensors"
OPTIMIZERS_FILE = "optimizers.pt"


class EpochCheckpoint:
    """The checkpoint folder of one training loop. `accelerator` may be None (one process)."""

    def __init__(self, folder: str | os.PathLike, accelerator=None, *, kind: str, key: str):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.kind = kind
        self.key = key

    def _barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    @property
    def _is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _unwrap(self, module):
        return module if self.accelerator is None else self.accelerator.unwrap_model(module)

    def save(self, epoch: int, modules: Mapping[str, Any], optimizers: Mapping[str, Any] | None = None,
             **state: Any) -> None:
        """Write `modules` (nn.Modules, wrapped or not), `optimizers` (anything with state_dict():
        optimizers, schedulers, a GradScaler) and `state` (JSON-able) as the checkpoint after `epoch`."""
        import torch
        from safetensors.torch import save_file

        self._barrier()
        if self._is_main:
            tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
                       for name, module in modules.items()
                       for key, value in self._unwrap(module).state_dict().items()}
            with atomic_folder(self.folder) as temp:
                save_file(tensors, str(temp / MODULES_FILE))
                torch.save({name: obj.state_dict() for name, obj in (optimizers or {}).items()},
                           temp / OPTIMIZERS_FILE)
                atomic_write_json(temp / STATE_FILE, {"format": FORMAT, "kind": self.kind, "key": self.key,
                                                      "epoch": int(epoch), **state})
        self._barrier()

    def read_state(self) -> dict[str, Any] | None:
        """The checkpoint's bsegn.json (no tensor loaded), or None when there is no checkpoint."""
        found = existing_folder(self.folder)
        if found is None or not (found / STATE_FILE).is_file():
            return None
        try:
            state = json.loads((found / STATE_FILE).read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{found / STATE_FILE} is unreadable ({error}); delete {found} to start the stage "
                            "over") from None
        if state.get("format") != FORMAT or state.get("kind") != self.kind:
            raise DataError(f"{found} is not a bsegn {self.kind} checkpoint of this version "
                            f"(format {state.get('format')!r}); delete it to start the stage over")
        if state.get("key") != self.key:
            raise DataError(f"{found} holds a checkpoint of a different config or training data; "
                            "use another run folder or delete it to start over")
        return state

    def resume(self, modules: Mapping[str, Any], optimizers: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Load the checkpoint into `modules` and `optimizers` (the same names as at save); returns its
        JSON state (with "epoch"), or None when there is none. Every rank calls it."""
        import torch
        from safetensors.torch import load_file

        state = self.read_state()
        if state is None:
            return None
        found = existing_folder(self.folder)
        try:
            tensors = load_file(str(found / MODULES_FILE), device="cpu")
            saved = torch.load(found / OPTIMIZERS_FILE, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file means the same thing to the user
            raise DataError(f"the checkpoint in {found} is damaged ({type(error).__name__}: {error}); "
                            "delete it to start the stage over") from None
        for name, module in modules.items():
            prefix = f"{name}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            self._unwrap(module).load_state_dict(own)
        for name, obj in (optimizers or {}).items():
            if name not in saved:
                raise DataError(f"the checkpoint in {found} has no state for {name!r}; delete it to start over")
            obj.load_state_dict(saved[name])
        return state
