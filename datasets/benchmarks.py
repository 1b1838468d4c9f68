"""One door to every benchmark: `load_benchmark(name, ...) -> Benchmark`.

Names: "demo" (synthetic, generated on first use), the xlsa17 benchmarks CUB, CUB-sent, AWA1, AWA2,
SUN, FLO, APY (split files from `splits_dir`, which the user gives; images optional), and "own"
(your class folders + attributes CSV), and "AWA1-Lampert2009": the AwA1 v1 image features (no
images; `Benchmark.features` holds them; see `bsegn.datasets.lampert.load_awa1_lampert`).

Semantics: `semantics="attributes"` (the default) keeps what the files hold; "text" or
"attributes+text" replace them by sentence embeddings of each class's description or readable name
(`descriptions`: a class,description CSV or a dict; `encoder`: "minilm" or "local-dir:PATH"), see
bsegn.datasets.text_semantics.apply_semantics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bsegn.core.errors import DataError
from bsegn.datasets.features import FeatureSet
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.text_encoder import DEFAULT_ENCODER

XLSA17_NAMES = ("CUB", "CUB-sent", "AWA1", "AWA2", "SUN", "FLO", "APY")
LAMPERT_NAME = "AWA1-Lampert2009"
BENCHMARK_NAMES = ("demo",) + XLSA17_NAMES + ("own", LAMPERT_NAME)


@dataclass
class Benchmark:
    """A benchmark ready to use: its split, and where its images are (when known).

    image_root / image_files: the folder and the N sorted relative paths the locs index; None when
    only split files were given. features: pre-extracted per-image features (AWA1-Lampert2009 only).
    """

    name: str
    split: ZSLSplit
    image_root: Path | None
    image_files: list[str] | None
    features: FeatureSet | None = None


def canonical_name(name: str) -> str:
    for known in BENCHMARK_NAMES:
        if name.lower() == known.lower():
            return known
    raise DataError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARK_NAMES)}.")


def _require_splits_dir(name: str, splits_dir: str | Path | None) -> Path:
    # No default folder: the library reads only what the user names (docs/data.md says where the files come from)
    if splits_dir is None:
        folder = name.split("-")[0]
        raise DataError(f"{name}: no split folder given; pass the folder holding xlsa17's att_splits.mat for "
                        f"{folder} (e.g. --data.splits_dir data/xlsa17/{folder}; docs/data.md says where to get it).")
    return Path(splits_dir)


def load_split(name: str, splits_dir: str | Path | None = None, *, semantics: str = "attributes",
               descriptions=None, encoder: str = DEFAULT_ENCODER, **demo_kwargs) -> ZSLSplit:
    """Only the split metadata of benchmark `name` (no image folder needed; "own" is not possible here),
    with the semantics asked for (module doc)."""
    split = _load_split(name, splits_dir, **demo_kwargs)
    return _with_semantics(split, semantics, descriptions, encoder)


def _with_semantics(split: ZSLSplit, semantics: str, descriptions, encoder: str) -> ZSLSplit:
    from bsegn.datasets.text_semantics import apply_semantics, parse_semantics

    if parse_semantics(semantics)[0] == "attributes" and descriptions is not None:
        raise DataError("descriptions were given but semantics is 'attributes'; set semantics to 'text' or "
                        "'attributes+text' to use them.")
    return apply_semantics(split, semantics, descriptions, encoder)


def _load_split(name: str, splits_dir: str | Path | None = None, **demo_kwargs) -> ZSLSplit:
    name = canonical_name(name)
    if name == "demo":
        from bsegn.datasets.demo import ensure_demo_dataset, read_demo_split

        if splits_dir is not None:  # an already generated demo folder (holding att_splits.mat)
            folder = Path(splits_dir)
            folder = folder.parent if folder.name == "images" else folder
            if not (folder / "att_splits.mat").is_file():
                raise DataError(f"{folder}: no att_splits.mat; expected a generated demo folder (demo-<hash>/).")
            return read_demo_split(folder)
        return ensure_demo_dataset(**demo_kwargs)[1]
    if name == LAMPERT_NAME:
        from bsegn.datasets.lampert import load_awa1_lampert

        return load_awa1_lampert(splits_dir=_require_splits_dir(name, splits_dir))[1]
    if name == "own":
        raise DataError("the 'own' benchmark is defined by its image folder and attributes CSV: pass both.")
    from bsegn.datasets.xlsa17 import load_xlsa17

    return load_xlsa17(name, _require_splits_dir(name, splits_dir))


def check_benchmark_images(name: str, images_root: str | Path, splits_dir: str | Path | None = None, *,
                           split: ZSLSplit | None = None, show: int = 5, decode: bool = True):
    """`image_folders.check_images` for benchmark `name`, loading its split when none is given
    (a demo image folder's split files sit beside it); `decode`: also decode every image.

    For your own data the class table is checked too: a class table the default run cannot train on
    (no unseen class; fewer seen classes than the validation protocol needs) is a problem.
    """
    from bsegn.datasets.image_folders import check_images, resolve_image_root
    from bsegn.datasets.protocol import protocol_problems

    name = canonical_name(name)
    if split is None:
        if name == "demo" and splits_dir is None:
            splits_dir = resolve_image_root(images_root, name).parent
        split = load_split(name, splits_dir)
    report = check_images(name, images_root, splits_dir, split=split, show=show, decode=decode)
    if name == "own":
        report.problems += protocol_problems(split, "final", needs_validation=True)
    return report


def load_benchmark(name: str, *, splits_dir: str | Path | None = None, images_root: str | Path | None = None,
                   attributes_csv: str | Path | None = None, semantics: str = "attributes", descriptions=None,
                   encoder: str = DEFAULT_ENCODER, **demo_kwargs) -> Benchmark:
    """Load benchmark `name` (see module doc) with the semantics asked for.

    `semantics`, `descriptions`, `encoder`: see bsegn.datasets.text_semantics.apply_semantics.

    Args:
        splits_dir: xlsa17 benchmarks: folder with att_splits.mat (or its parent); required. AWA1-Lampert2009:
            AWA1's folder (or its parent), with the features in AWA1_Lampert2009/feat beside it.
        images_root: the benchmark's image folder (optional for xlsa17; required for "own"). When given,
            the sorted image list must match the split exactly (else DataError; `bsegn data check`
            says which files differ), and the folder classes must be consistent with the split.
        attributes_csv: "own" only: the class,split,<attributes...>[,description] CSV.
        demo_kwargs: "demo" only: images_per_class, image_size, seed, root.
    """
    benchmark = _load_benchmark(name, splits_dir=splits_dir, images_root=images_root, attributes_csv=attributes_csv,
                                **demo_kwargs)
    benchmark.split = _with_semantics(benchmark.split, semantics, descriptions, encoder)
    return benchmark


def _load_benchmark(name: str, *, splits_dir=None, images_root=None, attributes_csv=None, **demo_kwargs) -> Benchmark:
    name = canonical_name(name)
    if demo_kwargs and name != "demo":
        raise DataError(f"{name}: options {sorted(demo_kwargs)} apply to the demo benchmark only.")
    if name == "demo":
        from bsegn.datasets.demo import ensure_demo_dataset

        image_root, split = ensure_demo_dataset(**demo_kwargs)
        return Benchmark("demo", split, image_root, split.image_files)
    if name == LAMPERT_NAME:
        from bsegn.datasets.lampert import load_awa1_lampert

        features, split = load_awa1_lampert(splits_dir=_require_splits_dir(name, splits_dir))
        return Benchmark(name, split, None, None, features=features)
    if name == "own":
        if images_root is None or attributes_csv is None:
            raise DataError("the 'own' benchmark needs an image folder (class sub-folders) and an attributes CSV "
                            "(class,split,<attributes...>).")
        from bsegn.datasets.own_data import load_own_data

        split = load_own_data(images_root, attributes_csv)
        return Benchmark("own", split, Path(images_root), split.image_files)

    split = _load_split(name, splits_dir)
    if images_root is None:
        return Benchmark(name, split, None, None)
    from bsegn.datasets.image_folders import check_images, labels_from_folders, list_images, resolve_image_root

    report = check_images(name, images_root, splits_dir, split=split)
    if not report.ok:
        raise DataError(f"{name}: the image folder {report.images_root} does not match the split: "
                        f"{report.problems[0]}. Run `bsegn data check --data.benchmark {name} "
                        f"--data.images_root {images_root}` "
                        "for the full report.")
    image_root = resolve_image_root(images_root, name)
    files = list_images(image_root, name)
    split.image_files = files
    labels = labels_from_folders(files, split, name, image_root)
    if labels is not None:
        split.labels = labels
    return Benchmark(name, split, image_root, files)
