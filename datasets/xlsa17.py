"""Xian et al.'s "proposed split" files (xlsa17 `att_splits.mat`, CUB `sent_splits.mat`) as a ZSLSplit.

`att_splits.mat` holds `att` (k x C), `original_att`, `allclasses_names` and 1-based locs into the
benchmark's image list; it has no per-image labels. Which classes are seen therefore comes from the
class lists xlsa17 ships beside it (`trainvalclasses.txt`, `testclasses.txt`), or from per-image
labels when a caller knows them (then `validate_split` checks every index).

Per-benchmark facts (checked on the real files, see docs/data.md):
* CUB: the re-saved att_splits.mat has no train/val locs; they come from `sent_splits.mat` beside
  it (identical trainval/test locs). "CUB-sent" (or semantics="sent") uses its 1024-d sentence
  embeddings instead of the 312 attributes.
* FLO: no class names and no class lists in the file: classes are named "class_001".."class_102"
  in column order, and seen/unseen stay None unless labels are given.
* APY: no train/val locs (None).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.datasets.splits import SPLIT_NAMES, ZSLSplit

BENCHMARKS = ("CUB", "CUB-sent", "AWA1", "AWA2", "SUN", "FLO", "APY")
SENTENCE_BENCHMARKS = ("FLO",)  # their `att` is a sentence embedding, not named attributes


def _canonical(benchmark: str) -> str:
    for name in BENCHMARKS:
        if benchmark.upper() == name.upper():
            return name
    raise DataError(f"unknown xlsa17 benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}.")


def find_split_file(benchmark: str, splits_dir: str | Path, filename: str = "att_splits.mat") -> Path:
    """`splits_dir/filename`, or `splits_dir/<BENCHMARK>/filename` when given the parent folder.

    Raises DataError saying where it looked and what file is expected.
    """
    splits_dir = Path(splits_dir)
    folder = benchmark.split("-")[0]
    candidates = [splits_dir / filename, splits_dir / folder / filename]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{benchmark}: no {filename} found (looked at {', '.join(str(c) for c in candidates)}). "
        f"Pass --data.splits_dir the folder holding xlsa17's {filename} for {folder} "
        f"(Xian et al.'s 'proposed split' files)."
    )


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises several types for a corrupt file
        raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({error}).") from error


def _locs(mat: dict, path: Path) -> dict[str, np.ndarray | None]:
    """1-based MATLAB locs -> 0-based int64 arrays; None where the file has no such key."""
    locs: dict[str, np.ndarray | None] = {}
    for name in SPLIT_NAMES:
        value = mat.get(f"{name}_loc")
        if value is None:
            locs[name] = None
            continue
        array = np.asarray(value).astype(np.int64).ravel()
        if array.size and array.min() < 1:
            raise DataError(f"{path}: {name}_loc holds index {int(array.min())}; xlsa17 locs are 1-based (>= 1).")
        locs[name] = array - 1
    return locs


def _class_names(mat: dict) -> list[str] | None:
    names = mat.get("allclasses_names")
    if names is None:
        return None
    return [str(np.asarray(item).ravel()[0]).strip() for item in np.asarray(names).ravel()]


def _read_class_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _class_ids(names: list[str], listed: list[str], path: Path) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in listed if name not in index]
    if missing:
        raise DataError(f"{path}: class {missing[0]!r} is not in att_splits.mat's allclasses_names "
                        f"({len(missing)} unknown names); is this the class list of the same benchmark?")
    return np.array(sorted(index[name] for name in listed), dtype=np.int64)


def _attribute_names(folder: Path, dim: int) -> list[str] | None:
    """Names of the k attributes from the raw release files beside the split (AwA predicates.txt,
    CUB attributes.txt: "<1-based id> <name>" per line), when present and of the right length."""
    for filename in ("predicates.txt", "attributes.txt"):
        path = folder / filename
        if path.is_file():
            lines = [line.split(None, 1) for line in path.read_text().splitlines() if line.strip()]
            names = [parts[-1].strip() for parts in lines]
            if len(names) == dim:
                return names
    return None


def load_xlsa17_file(path: str | Path, *, benchmark: str, semantic_kind: str = "attributes",
                     labels: np.ndarray | None = None) -> ZSLSplit:
    """Read one xlsa17-form split file (att, allclasses_names, *_loc) plus the class lists beside it.

    Seen/unseen classes come from `trainvalclasses.txt` / `testclasses.txt` in the same folder, else
    from `labels` (N,) when given, else stay None (with a note).
    """
    path = Path(path)
    mat = _loadmat(path)
    notes: list[str] = []
    sources = [str(path)]
    locs = _locs(mat, path)
    att = mat.get("att")
    if att is None:
        raise DataError(f"{path}: has no 'att' matrix; is it an xlsa17 split file?")
    semantic_matrix = np.asarray(att, dtype=np.float64).T.astype(np.float32)  # (C, k)
    num_classes = semantic_matrix.shape[0]
    class_names = _class_names(mat)
    named = class_names is not None
    if class_names is None:
        class_names = [f"class_{i + 1:03d}" for i in range(num_classes)]
        notes.append(f"{benchmark}: the split file has no class names; classes are named class_001.."
                     f"class_{num_classes:03d} in the file's column order (stable across runs).")
    if len(class_names) != num_classes:
        raise DataError(f"{path}: {len(class_names)} class names but att has {num_classes} columns.")

    seen = unseen = None
    trainval_list, test_list = path.parent / "trainvalclasses.txt", path.parent / "testclasses.txt"
    if named and trainval_list.is_file() and test_list.is_file():
        seen = _class_ids(class_names, _read_class_list(trainval_list), trainval_list)
        unseen = _class_ids(class_names, _read_class_list(test_list), test_list)
        sources += [str(trainval_list), str(test_list)]
        if np.intersect1d(seen, unseen).size:
            raise DataError(f"{trainval_list} and {test_list} share classes; seen and unseen must be disjoint.")
    elif labels is None:
        notes.append(f"{benchmark}: no trainvalclasses.txt/testclasses.txt beside {path.name} and no per-image "
                     "labels: which classes are seen or unseen is unknown (None).")
    original = mat.get("original_att")
    split = ZSLSplit(
        benchmark=benchmark,
        class_names=class_names,
        semantics=semantic_matrix,
        locs=locs,
        seen_classes=seen,
        unseen_classes=unseen,
        original_semantics=None if original is None else np.asarray(original, dtype=np.float64).T.astype(np.float32),
        semantic_kind=semantic_kind,
        notes=notes,
        sources=sources,
    )
    if labels is not None:
        attach_labels(split, labels, source=str(path))
    return split


def load_xlsa17(benchmark: str, splits_dir: str | Path, *, semantics: str = "att",
                labels: np.ndarray | None = None) -> ZSLSplit:
    """Read one benchmark's xlsa17 split files into a ZSLSplit.

    Args:
        benchmark: CUB, CUB-sent, AWA1, AWA2, SUN, FLO or APY (case-insensitive).
        splits_dir: folder holding att_splits.mat (or its parent holding `<BENCHMARK>/att_splits.mat`).
        semantics: "att" (attributes) or "sent" (CUB only: sent_splits.mat's 1024-d sentences).
        labels: optional (N,) 0-based per-image class ids in allclasses_names order; when given, the
            split is validated against them and seen/unseen classes are derived if no lists exist.

    Returns:
        ZSLSplit with semantics (C, k) float32 (`att` transposed), 0-based int64 locs.
    """
    name = _canonical(benchmark)
    if name == "CUB-sent":
        name, semantics = "CUB", "sent"
    if semantics not in ("att", "sent"):
        raise DataError(f"semantics must be 'att' or 'sent', got {semantics!r}.")
    if semantics == "sent" and name != "CUB":
        raise DataError(f"{name}: sentence semantics (sent_splits.mat) exist here for CUB only.")

    if semantics == "sent":
        path = find_split_file("CUB", splits_dir, "sent_splits.mat")
        split = load_xlsa17_file(path, benchmark="CUB-sent", semantic_kind="sentences")
        split.notes.append("CUB with 1024-d sentence embeddings (sent_splits.mat); not comparable with "
                           "312-attribute results.")
    else:
        path = find_split_file(name, splits_dir)
        kind = "sentences" if name in SENTENCE_BENCHMARKS else "attributes"
        split = load_xlsa17_file(path, benchmark=name, semantic_kind=kind)
        if name == "CUB" and split.locs["train"] is None:
            try:
                sent_path = find_split_file("CUB", path.parent, "sent_splits.mat")
            except DataError:
                split.notes.append("CUB att_splits.mat has no train/val locs and no sent_splits.mat was found "
                                   "beside it: train/val are unknown.")
            else:
                sent_locs = _locs(_loadmat(sent_path), sent_path)
                for split_name in ("trainval", "test_seen", "test_unseen"):
                    if not np.array_equal(np.sort(sent_locs[split_name]), np.sort(split.locs[split_name])):
                        raise DataError(f"{sent_path}: its {split_name}_loc differs from {path}'s; "
                                        "these files are not of the same CUB split.")
                split.locs["train"], split.locs["val"] = sent_locs["train"], sent_locs["val"]
                split.sources.append(str(sent_path))
                split.notes.append("CUB train/val locs come from sent_splits.mat (att_splits.mat has none).")
        if name == "APY":
            split.notes.append("APY's att_splits.mat defines no train/val split (train/val are None).")
        if kind == "attributes":
            split.attribute_names = _attribute_names(path.parent, split.semantic_dim)
    if labels is not None:
        attach_labels(split, labels, source=str(path))
    return split


def attach_labels(split: ZSLSplit, labels: np.ndarray, source: str) -> ZSLSplit:
    """Give `split` its per-image labels (N,) 0-based (from a feature file, say), deriving the seen and
    unseen classes from trainval / test_unseen when the split files did not list them, and validate."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if split.seen_classes is None:
        split.seen_classes = np.unique(labels[split.loc("trainval")])
        split.unseen_classes = np.unique(labels[split.loc("test_unseen")])
    split.labels = labels
    validate_split(split, labels, source=source)
    return split


def validate_split(split: ZSLSplit, labels: np.ndarray, source: str, image_files: list[str] | None = None) -> None:
    """Check a split against known per-image labels (N,) 0-based; raise DataError on the first violation.

    Rules: every loc is a valid index; trainval and test_seen hold only seen classes; test_unseen
    only unseen classes; train and val classes are disjoint. The error names `source` and the first
    offending (0-based) index, and its file when `image_files` (N) is given.
    """
    def file_of(index: int) -> str:
        return f" ({image_files[index]})" if image_files is not None and index < len(image_files) else ""

    labels = np.asarray(labels).ravel()
    n = len(labels)
    for name in SPLIT_NAMES:
        loc = split.locs.get(name)
        if loc is None:
            continue
        bad = np.flatnonzero((loc < 0) | (loc >= n))
        if bad.size:
            raise DataError(f"{source}: {name} loc position {int(bad[0])} is image index {int(loc[bad[0]])}, "
                            f"outside the {n} labelled images; the split and the image list do not match.")
    if labels.size and (labels.min() < 0 or labels.max() >= split.num_classes):
        raise DataError(f"{source}: labels must be 0-based class ids below {split.num_classes}; "
                        f"found {int(labels.min())}..{int(labels.max())}.")

    def check(name: str, allowed: np.ndarray | None, what: str) -> None:
        loc = split.locs.get(name)
        if loc is None or allowed is None:
            return
        bad = np.flatnonzero(~np.isin(labels[loc], allowed))
        if bad.size:
            index = int(loc[bad[0]])
            raise DataError(
                f"{source}: {name} holds image index {index}{file_of(index)} (0-based; position {int(bad[0])} in "
                f"{name}) of class "
                f"{split.class_names[labels[index]]!r}, which is not {what}; "
                f"{bad.size} such images. The image list or labels do not match this split file."
            )

    check("trainval", split.seen_classes, "a seen class")
    check("test_seen", split.seen_classes, "a seen class")
    check("test_unseen", split.unseen_classes, "an unseen class")
    if split.locs.get("train") is not None and split.locs.get("val") is not None:
        train_classes = np.unique(labels[split.locs["train"]])
        val_loc = split.locs["val"]
        bad = np.flatnonzero(np.isin(labels[val_loc], train_classes))
        if bad.size:
            index = int(val_loc[bad[0]])
            raise DataError(
                f"{source}: val holds image index {index}{file_of(index)} (position {int(bad[0])} in val) of class "
                f"{split.class_names[labels[index]]!r}, which is also a train class; train and val classes "
                "must be disjoint."
            )
