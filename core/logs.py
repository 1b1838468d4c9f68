"""Rank-aware logging for every bsegn entry point.

    log = get_logger(__name__)            # in any module: a child of the "bsegn" logger
    setup_logging("info", log_file=run_dir / "log.txt", is_main=accelerator.is_main_process)

Messages go to stderr as `[bsegn] message` (results such as `predict --json` own stdout) and, when a
log file is given, to that file with a timestamp and the level. Under several processes only the main
one prints INFO; every rank prints warnings and errors, tagged with its rank. tqdm bars are separate
and stay.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = "bsegn"
LEVELS = ("debug", "info", "warning", "error")
_HANDLER_TAG = "_bsegn_handler"


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger of a module: `bsegn.app.pipeline` etc. all inherit the handlers set up here."""
    if not name.startswith(ROOT):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = str(level).strip().lower()
    if name not in LEVELS:
        from bsegn.core.errors import ConfigError

        raise ConfigError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


def setup_logging(level: str | int = "info", *, log_file: str | os.PathLike | None = None,
                  is_main: bool = True, rank: int | None = None) -> logging.Logger:
    """Configure the "bsegn" logger (idempotent: handlers set by an earlier call are replaced)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(handler)
        handler.close()
    wanted = parse_level(level)
    logger.setLevel(min(wanted, logging.INFO) if log_file else wanted)
    logger.propagate = False
    prefix = "[bsegn]" if rank is None or is_main else f"[bsegn rank {rank}]"

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(wanted if is_main else max(wanted, logging.WARNING))
    console.setFormatter(_ConsoleFormatter(prefix))
    setattr(console, _HANDLER_TAG, True)
    logger.addHandler(console)
    if log_file is not None and is_main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(min(wanted, logging.INFO))  # the run's record keeps INFO even when the console is quiet
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(file_handler, _HANDLER_TAG, True)
        logger.addHandler(file_handler)
    return logger


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return f"{self.prefix} {message}"
