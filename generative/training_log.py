"""The per-epoch record of a BSeGN training: `<run_dir>/losses.csv` (one row an epoch) and a TensorBoard
log in `<run_dir>/tensorboard/` (scalars "bsegn/<loss>"). Only the main process writes."""
from __future__ import annotations

import csv
from pathlib import Path


class TrainingLog:
    """Appends epoch rows ({"epoch", "seconds", loss: value, ...}) to losses.csv and TensorBoard."""

    def __init__(self, run_dir: str | Path, *, is_main: bool = True):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self._tensorboard = None

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "losses.csv"

    def append(self, row: dict[str, float]) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        writer = self._writer()
        if writer is None:
            return
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(f"bsegn/{key}", value, int(row["epoch"]))
        writer.flush()

    def _writer(self):
        if self._tensorboard is None:
            try:  # TensorBoard is a dependency, but a broken install must not stop training
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # noqa: BLE001 - any import problem just means no TensorBoard log
                return None
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tensorboard

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
