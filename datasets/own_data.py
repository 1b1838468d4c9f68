"""Your own data as a benchmark: a folder of class sub-folders plus an attributes CSV.

    my_data/
        zebra/img001.jpg ...
        horse/...
    attributes.csv:
        class,split,stripes,hooves,black,...
        zebra,unseen,1,1,0.5,...
        horse,seen,0,1,0.2,...

`split` is seen or unseen. Attribute values are numbers; each class's row becomes its semantic
vector, L2-normalised like xlsa17's `att` (the raw values are kept as original_semantics).
Classes described in words: a `description` column (beside the attributes, or instead of them:
`class,split,description`) goes to ZSLSplit.descriptions, for the text semantics
(bsegn.datasets.text_semantics.apply_semantics; load_benchmark(..., semantics="text") applies it).
A table without attribute columns loads with (C, 0) semantics (semantic_kind "none") until then.
Images are listed like the benchmarks (sorted relative paths). The split:
* seen-class images: a seeded 80/20 per-class split into trainval / test_seen;
* unseen-class images: test_unseen;
* with >= 4 seen classes, a seeded class split of the seen classes into train (2/3) / val (1/3)
  over all seen-class images (like xlsa17's), for the validation protocol.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.core.logs import get_logger
from bsegn.datasets.protocol import MIN_SEEN_CLASSES_FOR_VALIDATION
from bsegn.datasets.splits import ZSLSplit

logger = get_logger(__name__)


@dataclass
class ClassTable:
    """Your class table: names, "seen"/"unseen" splits, attribute names and values (C, k) float64 (k may be
    0 when the table has descriptions only), and the descriptions given (class -> text)."""

    names: list[str]
    splits: list[str]
    attribute_names: list[str]
    values: np.ndarray
    descriptions: dict[str, str]


def read_class_table(path: str | Path) -> ClassTable:
    """Read `class,split[,<attributes...>][,description]`; DataError (naming the line) on any problem.

    An empty description cell is a warning (the class name is used instead)."""
    from bsegn.datasets.csv_rows import read_csv_rows

    path = Path(path)
    rows = read_csv_rows(path, "a CSV with header class,split,<attributes...> (and/or a description column)")
    if not rows:
        raise DataError(f"{path}: empty; expected a header class,split,<attributes...> and one row per class.")
    header = rows[0][1]
    if len(header) < 3 or header[0].lower() != "class" or header[1].lower() != "split":
        raise DataError(f"{path}: the header must start with class,split followed by attribute names and/or a "
                        f"description column; got {header[:3]}.")
    lowered = [cell.lower() for cell in header]
    if lowered.count("description") > 1:
        raise DataError(f"{path}: the header has {lowered.count('description')} description columns; keep one.")
    text_column = lowered.index("description") if "description" in lowered else None
    attribute_columns = [j for j in range(2, len(header)) if j != text_column]
    attribute_names = [header[j] for j in attribute_columns]
    names, splits, values, descriptions = [], [], [], {}
    for line_number, cells in rows[1:]:
        name = cells[0]
        if len(cells) != len(header):
            raise DataError(f"{path}, line {line_number} (class {name!r}): {len(cells)} values but the header has "
                            f"{len(header)} columns; every row needs a value in every column (quote a description "
                            "that contains a comma).")
        split = cells[1].lower()
        if split not in ("seen", "unseen"):
            raise DataError(f"{path}, line {line_number} (class {name!r}): split must be 'seen' or 'unseen', "
                            f"got {cells[1]!r}.")
        if name in names:
            raise DataError(f"{path}, line {line_number}: class {name!r} appears twice (first on line "
                            f"{rows[1 + names.index(name)][0]}); keep one row per class.")
        if attribute_columns and all(cells[j] == "" for j in attribute_columns):
            raise DataError(f"{path}, line {line_number}: {split} class {name!r} has no attribute values; "
                            "every class needs its attribute row.")
        row_values = []
        for column, j in zip(attribute_names, attribute_columns):
            where = f"{path}, line {line_number} (class {name!r}), column {column!r}"
            try:
                value = float(cells[j])
            except ValueError:
                raise DataError(f"{where}: {cells[j]!r} is not a number.") from None
            if not math.isfinite(value):
                raise DataError(f"{where}: {cells[j]!r} is not a finite number (NaN or infinity); fill in every "
                                "attribute value.")
            row_values.append(value)
        if text_column is not None:
            if cells[text_column]:
                descriptions[name] = cells[text_column]
            else:
                logger.warning("%s, line %d (class %r): empty description; the class name is used instead. Write a "
                               "description to describe it in words.", path, line_number, name)
        names.append(name)
        splits.append(split)
        values.append(row_values)
    if not names:
        raise DataError(f"{path}: no class rows below the header.")
    return ClassTable(names, splits, attribute_names, np.array(values, dtype=np.float64).reshape(len(names), -1),
                      descriptions)


def load_own_data(images_root: str | Path, attributes_csv: str | Path, *, seed: int = 0,
                  holdout_fraction: float = 0.2) -> ZSLSplit:
    """Your folder + CSV as a ZSLSplit with image_files and labels (see module doc). DataError when wrong."""
    from bsegn.datasets.image_folders import list_images

    images_root = Path(images_root)
    if not images_root.is_dir():
        raise DataError(f"{images_root}: no such image folder; expected one sub-folder of images per class.")
    table = read_class_table(attributes_csv)
    names, splits, attribute_names, values = table.names, table.splits, table.attribute_names, table.values
    files = list_images(images_root, "own")
    by_class: dict[str, list[int]] = {}
    for i, path in enumerate(files):
        if "/" not in path:
            raise DataError(f"{images_root / path}: images must sit in class sub-folders (<class>/<file>), "
                            "not directly in the image folder.")
        by_class.setdefault(path.split("/", 1)[0], []).append(i)
    index = {name: i for i, name in enumerate(names)}
    folders_without_row = sorted(set(by_class) - set(index))
    if folders_without_row:
        raise DataError(f"{images_root / folders_without_row[0]}: class folder has no row in {attributes_csv}; "
                        f"every class needs attributes ({len(folders_without_row)} such folders).")
    empty = [name for name in names if name not in by_class]
    if empty:
        raise DataError(f"class {empty[0]!r} (in {attributes_csv}) has no images in {images_root / empty[0]}; "
                        f"add images or remove its row ({len(empty)} such classes).")
    norms = np.linalg.norm(values, axis=1) if attribute_names else np.ones(len(names))
    if (norms == 0).any():
        zero = names[int(np.flatnonzero(norms == 0)[0])]
        raise DataError(f"{attributes_csv}: class {zero!r} has all attribute values 0; its semantic vector would be "
                        "empty.")

    labels = np.array([index[path.split("/", 1)[0]] for path in files], dtype=np.int64)
    seen = np.array([i for i, s in enumerate(splits) if s == "seen"], dtype=np.int64)
    unseen = np.array([i for i, s in enumerate(splits) if s == "unseen"], dtype=np.int64)
    if seen.size == 0:
        raise DataError(f"{attributes_csv}: no class is marked seen; training needs seen classes.")
    rng = np.random.default_rng(seed)
    trainval, test_seen = [], []
    for class_id in seen:
        members = rng.permutation(np.flatnonzero(labels == class_id))
        cut = min(max(int(round(holdout_fraction * len(members))), 1), len(members) - 1) if len(members) > 1 else 0
        test_seen.append(members[:cut])
        trainval.append(members[cut:])
    notes = [f"own data from {images_root} and {attributes_csv}; {holdout_fraction:.0%} of each seen class's images "
             f"held out as test_seen (seed {seed})."]
    train = val = None
    if seen.size >= MIN_SEEN_CLASSES_FOR_VALIDATION:
        shuffled = rng.permutation(seen)
        num_val = max(1, int(round(seen.size / 3)))
        val_classes, train_classes = shuffled[:num_val], shuffled[num_val:]
        train = np.flatnonzero(np.isin(labels, train_classes))
        val = np.flatnonzero(np.isin(labels, val_classes))
    else:
        notes.append(f"fewer than {MIN_SEEN_CLASSES_FOR_VALIDATION} seen classes: no train/val class split (the "
                     "validation protocol is unavailable).")
    if unseen.size == 0:
        notes.append("no unseen class: only seen-class (GZSL S) results can be measured.")
    split = ZSLSplit(
        benchmark="own",
        class_names=names,
        semantics=(values / norms[:, None]).astype(np.float32),
        locs={
            "trainval": np.sort(np.concatenate(trainval)).astype(np.int64),
            "test_seen": np.sort(np.concatenate(test_seen)).astype(np.int64),
            "test_unseen": np.flatnonzero(np.isin(labels, unseen)).astype(np.int64),
            "train": train,
            "val": val,
        },
        seen_classes=seen,
        unseen_classes=unseen,
        labels=labels,
        image_files=files,
        original_semantics=values.astype(np.float32) if attribute_names else None,
        attribute_names=attribute_names or None,
        semantic_kind="attributes" if attribute_names else "none",
        descriptions=table.descriptions or None,
        notes=notes,
        sources=[str(images_root), str(attributes_csv)],
    )
    return split
