"""Raw benchmark image folders: the image list the split locs index, and a check before training.

The rule (docs/data.md): xlsa17 locs index the ALPHABETICALLY SORTED list of image paths relative to
the image root. VERIFIED for AWA2 and CUB (all 37,322 / 11,788 paths, see docs/data.md);
UNVERIFIED for AWA1, SUN, FLO and APY (no image list is available here): `check_images` therefore
also validates class-consistency of every split wherever the folder names give the classes, which
catches a wrong order.

Layouts (`root` may be the dataset folder or the image folder itself):

| benchmark | image root | relative path | class of an image |
|---|---|---|---|
| CUB | CUB_200_2011/images | `<class>/<file>.jpg` | first folder (e.g. 001.Black_footed_Albatross) |
| AWA1, AWA2 | JPEGImages | `<class>/<file>.jpg` | first folder |
| SUN | SUN/images | `<letter>/<category>[/<sub>]/<file>.jpg` | folders after the letter joined by "_" (unverified) |
| FLO | 102flowers/jpg | `image_<nnnnn>.jpg` | imagelabels.mat `labels` (1-based), beside jpg/ |
| APY | its image folder | as found | unknown (counts only) |
| demo, own | the class folder | `<class>/<file>` | first folder |
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.datasets.splits import SPLIT_NAMES, ZSLSplit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGE_SUBFOLDER = {"CUB": "images", "CUB-sent": "images", "AWA1": "JPEGImages", "AWA2": "JPEGImages",
                    "SUN": "images", "FLO": "jpg", "demo": "images"}
VERIFIED_ORDER = ("CUB", "CUB-sent", "AWA2", "demo", "own")


def resolve_image_root(root: str | Path, benchmark: str) -> Path:
    """The folder the relative image paths start from: `root`, or its standard sub-folder when present."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such image folder for {benchmark}.")
    sub = _IMAGE_SUBFOLDER.get(benchmark)
    if sub and (root / sub).is_dir():
        return root / sub
    return root


def list_images(root: str | Path, benchmark: str) -> list[str]:
    """All image files under the benchmark's image root, as sorted POSIX paths relative to it.

    This sorted list is what the split locs index (verified for AWA2 and CUB; see module doc).
    Hidden files and non-image files are ignored.
    """
    image_root = resolve_image_root(root, benchmark)
    files = []
    for path in image_root.rglob("*"):
        relative = path.relative_to(image_root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            files.append(relative.as_posix())
    return sorted(files)


def folder_class(relative_path: str, benchmark: str) -> str | None:
    """The class name a path's folders give, or None where the layout does not say (FLO, APY)."""
    parts = relative_path.split("/")
    if benchmark == "SUN":
        return "_".join(parts[1:-1]) if len(parts) >= 3 else None
    if benchmark in ("FLO", "APY"):
        return None
    return parts[0] if len(parts) >= 2 else None


def labels_from_folders(files: list[str], split: ZSLSplit, benchmark: str,
                        image_root: Path | None = None) -> np.ndarray | None:
    """(N,) 0-based class ids of `files` from folder names (FLO: imagelabels.mat), or None when unknown.

    Raises DataError naming the first file whose folder is not a class of the split.
    """
    if benchmark == "FLO":
        return _flo_labels(files, image_root)
    index = {name: i for i, name in enumerate(split.class_names)}
    labels = np.empty(len(files), dtype=np.int64)
    for i, path in enumerate(files):
        name = folder_class(path, benchmark)
        if name is None:
            return None
        if name not in index:
            raise DataError(f"{path}: its folder {name!r} is not a class of {benchmark} "
                            f"(classes are e.g. {split.class_names[:3]}); is this the right image folder?")
        labels[i] = index[name]
    return labels


def _flo_labels(files: list[str], image_root: Path | None) -> np.ndarray | None:
    """FLO: labels from 102flowers' imagelabels.mat (1-based, in image_00001.. order), if found."""
    if image_root is None:
        return None
    for candidate in (image_root / "imagelabels.mat", image_root.parent / "imagelabels.mat"):
        if candidate.is_file():
            import scipy.io

            labels = np.asarray(scipy.io.loadmat(str(candidate))["labels"]).astype(np.int64).ravel() - 1
            if len(labels) != len(files):
                raise DataError(f"{candidate}: {len(labels)} labels but {len(files)} images in {image_root}.")
            return labels
    return None


def expected_image_list(benchmark: str, splits_dir: str | Path | None) -> tuple[list[str] | None, str | None]:
    """The full expected image list when the metadata holds one: (sorted relative paths, source file).

    CUB: images.txt; AWA2: image_label_PS.txt + test_seen_PS.txt (bookworm's derived lists);
    demo: image_labels.txt. Otherwise (None, None): only counts can be checked.
    """
    if splits_dir is None:
        return None, None
    splits_dir = Path(splits_dir)
    folder = benchmark.split("-")[0]
    for base in (splits_dir, splits_dir / folder):
        if benchmark in ("CUB", "CUB-sent") and (base / "images.txt").is_file():
            lines = (base / "images.txt").read_text().splitlines()
            return sorted(line.split()[1] for line in lines if line.strip()), str(base / "images.txt")
        if benchmark == "AWA2" and (base / "image_label_PS.txt").is_file() and (base / "test_seen_PS.txt").is_file():
            paths = []
            for name in ("image_label_PS.txt", "test_seen_PS.txt"):
                paths += [line.split()[0] for line in (base / name).read_text().splitlines() if line.strip()]
            return sorted(paths), str(base / "image_label_PS.txt")
        if benchmark == "demo" and (base / "image_labels.txt").is_file():
            lines = (base / "image_labels.txt").read_text().splitlines()
            return sorted(line.rsplit(" ", 1)[0] for line in lines if line.strip()), str(base / "image_labels.txt")
    return None, None


@dataclass
class ImageCheckReport:
    """What `check_images` found. `ok` is False when anything would make the split wrong."""

    benchmark: str
    images_root: str
    expected_images: int
    found_images: int
    splits: dict[str, dict[str, int] | None]  # name -> {"expected": n, "present": m} or None
    missing: list[str] = field(default_factory=list)     # first few expected files not found
    unexpected: list[str] = field(default_factory=list)  # first few found files not expected
    num_missing: int = 0
    num_unexpected: int = 0
    unreadable: list[str] = field(default_factory=list)  # first few "path: why" of files that do not decode
    num_empty: int = 0        # 0-byte image files
    num_undecodable: int = 0  # non-empty files that are corrupt, truncated or not images
    decoded: bool = False     # whether every image was decoded (else only names and counts were checked)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["ok"] = self.ok
        return out

    def format(self) -> str:
        lines = [f"{self.benchmark}: {self.found_images} images found in {self.images_root}, "
                 f"{self.expected_images} indexed by the split"]
        for name, counts in self.splits.items():
            if counts is None:
                lines.append(f"  {name:<12} not defined by the split files")
            else:
                lines.append(f"  {name:<12} {counts['present']:>6} / {counts['expected']} present")
        if self.num_missing:
            lines.append(f"  missing ({self.num_missing}): " + ", ".join(self.missing))
        if self.num_unexpected:
            lines.append(f"  unexpected ({self.num_unexpected}): " + ", ".join(self.unexpected))
        if self.num_empty or self.num_undecodable:
            lines.append(f"  unreadable ({self.num_empty} empty, {self.num_undecodable} undecodable): "
                         + "; ".join(self.unreadable))
        lines += [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        lines.append("OK" if self.ok else "NOT OK: fix the data before training")
        return "\n".join(lines)


def find_unreadable_images(image_root: str | Path, files: list[str], *, workers: int = 4) -> list[tuple[str, str]]:
    """(relative path, reason) of every file that bsegn.datasets.images.open_rgb cannot decode, in
    `files` order; the reason starts with "empty" for a 0-byte file. Decoded in `workers` threads
    (PIL releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    from bsegn.core.errors import ImageError
    from bsegn.datasets.images import open_rgb

    image_root = Path(image_root)

    def problem(name: str) -> str | None:
        path = image_root / name
        if path.is_file() and path.stat().st_size == 0:
            return "empty (0 bytes)"
        try:
            open_rgb(path)
        except ImageError as error:
            return str(error).removeprefix(f"{path}: ")
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(problem, files))
    return [(name, reason) for name, reason in zip(files, reasons) if reason is not None]


def check_images(benchmark: str, images_root: str | Path, splits_dir: str | Path | None = None, *,
                 split: ZSLSplit, show: int = 5, decode: bool = False) -> ImageCheckReport:
    """Verify an image folder against the benchmark's `split` before any training.

    Compares the sorted relative paths with the expected image list when the split or the metadata
    in `splits_dir` has one (CUB, AWA2, demo), else the count with the number of indexed images;
    validates every split's class-consistency where folders give classes. Lists the first `show`
    missing/unexpected files. With `decode`, every image is also decoded as training would read it,
    and 0-byte and undecodable files are counted and named (a problem). Without, no image is decoded.
    (`bsegn.datasets.benchmarks.check_benchmark_images` loads the split.)
    """
    from bsegn.datasets.xlsa17 import validate_split

    image_root = resolve_image_root(images_root, benchmark)
    found = list_images(image_root, benchmark)
    all_locs = [loc for loc in split.locs.values() if loc is not None]
    expected_n = int(max(int(loc.max()) for loc in all_locs if loc.size) + 1)
    expected, source = (split.image_files, "the split") if split.image_files is not None else \
        expected_image_list(benchmark, splits_dir)
    report = ImageCheckReport(benchmark, str(image_root), expected_n, len(found), {})
    if benchmark not in VERIFIED_ORDER:
        report.notes.append(f"the sorted-path image order is verified for AWA2 and CUB only; for {benchmark} it is "
                            "assumed (class-consistency is checked where the folders name classes)")
    if expected is not None:
        if len(expected) != expected_n:
            report.problems.append(f"{source} lists {len(expected)} images but the split indexes {expected_n}")
        found_set, expected_set = set(found), set(expected)
        missing = [p for p in expected if p not in found_set]
        unexpected = [p for p in found if p not in expected_set]
        report.missing, report.num_missing = missing[:show], len(missing)
        report.unexpected, report.num_unexpected = unexpected[:show], len(unexpected)
        present = np.array([p in found_set for p in expected] + [False] * max(0, expected_n - len(expected)))
        if missing:
            report.problems.append(f"{len(missing)} expected images are missing (first: {missing[0]})")
        if unexpected:
            report.problems.append(f"{len(unexpected)} images are not in the benchmark's list (first: "
                                   f"{unexpected[0]}); "
                                   "they would shift every index after them")
    else:
        present = np.arange(expected_n) < len(found)
        if len(found) != expected_n:
            report.problems.append(f"found {len(found)} images but the split indexes {expected_n}; every index "
                                   "after the first missing or extra file would point at the wrong image")
            report.num_missing = max(0, expected_n - len(found))
            report.num_unexpected = max(0, len(found) - expected_n)
        report.notes.append(f"no expected image list for {benchmark} in the split folder: only counts and "
                            "class-consistency are checked")
    for name in SPLIT_NAMES:
        loc = split.locs.get(name)
        report.splits[name] = None if loc is None else {"expected": int(len(loc)), "present": int(present[loc].sum())}
    if decode:
        _check_decoding(report, image_root, found, show)

    if not report.problems:
        try:
            labels = labels_from_folders(found, split, benchmark, image_root)
        except DataError as error:
            report.problems.append(str(error))
        else:
            if labels is not None:
                try:
                    validate_split(split, labels, source=str(image_root), image_files=found)
                except DataError as error:
                    report.problems.append(str(error))
            else:
                report.notes.append("the folder layout does not give classes: class-consistency not checked")
    return report


def _check_decoding(report: ImageCheckReport, image_root: Path, files: list[str], show: int) -> None:
    bad = find_unreadable_images(image_root, files)
    report.decoded = True
    report.num_empty = sum(reason.startswith("empty") for _, reason in bad)
    report.num_undecodable = len(bad) - report.num_empty
    report.unreadable = [f"{name}: {reason}" for name, reason in bad[:show]]
    if bad:
        report.problems.append(
            f"{len(bad)} image files cannot be read ({report.num_empty} empty, {report.num_undecodable} corrupt, "
            f"truncated or not images; first: {bad[0][0]}); training would skip them: "
            + ("re-copy or remove them" if report.benchmark == "own" else "re-copy them from the original "
               "download (removing one would shift the split's index of every image after it)"))
