"""The embedded default benchmark: a SYNTHETIC, procedurally generated image ZSL dataset ("demo").

Every class is a combination of three generative factors, and its attributes ARE those factors:
shape (6) x colour (5) x pattern (3), one-hot per group (14 attributes, named "shape:star" etc.).
40 of the 90 combinations are classes; 10 of them are unseen. Every attribute value occurs in some
seen class, and also in some class of the seen-class train split, so a model that learns the factors
from seen images can recognise unseen combinations (zero-shot) and the validation protocol works.

Images are real JPEG files (64 px by default): the shape at a random position, scale and rotation,
over a cluttered low-saturation background with pixel noise. The folder looks like a real benchmark:

    demo-<hash>/
        images/<class>/<class>_<nnnn>.jpg
        att_splits.mat          xlsa17 form: att (k x C, L2-normalised per class), original_att (0/1),
                                allclasses_names, 1-based trainval/test_seen/test_unseen/train/val locs
                                into the alphabetically sorted relative image paths
        trainvalclasses.txt, testclasses.txt, attributes.txt, README.txt

Split (like xlsa17's): 80/20 seeded per-class split of seen-class images into trainval/test_seen;
test_unseen = every unseen-class image; train/val = a class split of the seen classes (20 / 10) over
all seen-class images, so (as in xlsa17) val and train contain test_seen images and
`bsegn.datasets.protocol.validation_protocol` must remove them.

Generation is deterministic: the same parameters give byte-identical files (the .mat header's
timestamp is replaced by a fixed text). It runs on first use into cache_dir()/demo-<params hash>
(written to a temp folder, then renamed, so a killed run never leaves a half dataset), in seconds.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.core.files import digest_json
from bsegn.datasets.paths import cache_dir
from bsegn.datasets.splits import ZSLSplit

GENERATOR_VERSION = 1  # bump when the drawing changes: it is part of the folder hash

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = {  # well separated hues, so JPEG artefacts and noise never move one into another
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 205, 30),
    "purple": (150, 55, 185),
}
PATTERNS = ("solid", "striped", "dotted")
ATTRIBUTE_NAMES = ([f"shape:{s}" for s in SHAPES] + [f"colour:{c}" for c in COLOURS]
                   + [f"pattern:{p}" for p in PATTERNS])

NUM_CLASSES = 40
NUM_UNSEEN = 10
NUM_VAL = 10  # of the 30 seen classes; 20 remain train classes
CLASS_SEED = 20261129  # the class list is part of the benchmark's definition, independent of `seed`


def _covers_every_value(classes: list[tuple[str, str, str]]) -> bool:
    return ({c[0] for c in classes} == set(SHAPES) and {c[1] for c in classes} == set(COLOURS)
            and {c[2] for c in classes} == set(PATTERNS))


def demo_classes() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(train classes, val classes, unseen classes) as (shape, colour, pattern) factor triples.

    Fixed for every seed. The seen classes (train + val) cover every attribute value, and so do the
    train classes alone.
    """
    combos = [(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    rng = np.random.default_rng(CLASS_SEED)
    while True:  # rejection sampling; the constraints hold for most draws
        order = rng.permutation(len(combos))[:NUM_CLASSES]
        chosen = [combos[i] for i in order]
        unseen, val, train = chosen[:NUM_UNSEEN], chosen[NUM_UNSEEN:NUM_UNSEEN + NUM_VAL], chosen[NUM_UNSEEN + NUM_VAL:]
        if _covers_every_value(train):
            return sorted(train), sorted(val), sorted(unseen)


def class_name(factors: tuple[str, str, str]) -> str:
    shape, colour, pattern = factors
    return f"{colour}_{pattern}_{shape}"


def class_attributes(factors: tuple[str, str, str]) -> np.ndarray:
    """(14,) 0/1 vector: one-hot shape, colour, pattern."""
    shape, colour, pattern = factors
    vector = np.zeros(len(ATTRIBUTE_NAMES), dtype=np.float64)
    for name in (f"shape:{shape}", f"colour:{colour}", f"pattern:{pattern}"):
        vector[ATTRIBUTE_NAMES.index(name)] = 1.0
    return vector


# --- drawing ----------------------------------------------------------------------------------

def _shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of `shape` centred at (cx, cy) with circumradius `radius`, rotated by `angle` radians."""
    if shape == "circle":
        points = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif shape == "square":
        points = [(math.cos(t), math.sin(t)) for t in (np.arange(4) * math.pi / 2 + math.pi / 4)]
    elif shape == "triangle":
        points = [(math.cos(t), math.sin(t)) for t in (np.arange(3) * 2 * math.pi / 3 - math.pi / 2)]
    elif shape == "hexagon":
        points = [(math.cos(t), math.sin(t)) for t in (np.arange(6) * math.pi / 3)]
    elif shape == "star":
        points = [((1.0 if k % 2 == 0 else 0.42) * math.cos(t), (1.0 if k % 2 == 0 else 0.42) * math.sin(t))
                  for k, t in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    elif shape == "cross":
        a, b = 1.0 / math.sqrt(1 + 0.33 ** 2), 0.33 / math.sqrt(1 + 0.33 ** 2)
        points = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a),
                  (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points]


def _render(factors: tuple[str, str, str], size: int, rng: np.random.Generator):
    """One (size, size) RGB PIL image of the class `factors`, drawn at 2x and downsampled (anti-aliasing)."""
    from PIL import Image, ImageDraw

    shape, colour, pattern = factors
    big = size * 2
    # Background: a random low-saturation tint plus grey clutter strokes, so the object must be found.
    base = rng.integers(90, 200)
    tint = rng.integers(-18, 19, size=3)
    canvas = Image.new("RGB", (big, big), tuple(int(np.clip(base + t, 0, 255)) for t in tint))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 9))):
        grey = int(rng.integers(60, 230))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, big, size=4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=(grey, grey, grey), width=int(rng.integers(1, max(2, big // 24))))
        else:
            r = int(rng.integers(big // 20, big // 8))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), outline=(grey, grey, grey), width=max(1, big // 48))

    radius = big * rng.uniform(0.24, 0.40)
    margin = radius * 0.85
    cx, cy = rng.uniform(margin, big - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    polygon = _shape_polygon(shape, cx, cy, radius, angle)

    # The object's texture, cut out by the shape mask.
    rgb = np.array(COLOURS[colour], dtype=np.float64) * rng.uniform(0.88, 1.08)
    texture = Image.new("RGB", (big, big), tuple(int(v) for v in np.clip(rgb, 0, 255)))
    tdraw = ImageDraw.Draw(texture)
    if pattern == "striped":
        period = big / rng.uniform(7.0, 9.0)
        stripe_angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(stripe_angle), math.sin(stripe_angle)
        width = max(2, int(period * 0.45))
        for k in range(-int(2 * big / period), int(2 * big / period) + 1):
            ox, oy = big / 2 + k * period * -dy, big / 2 + k * period * dx
            tdraw.line((ox - 2 * big * dx, oy - 2 * big * dy, ox + 2 * big * dx, oy + 2 * big * dy),
                       fill=(25, 25, 25), width=width)
    elif pattern == "dotted":
        step = big / rng.uniform(6.0, 7.5)
        r = step * 0.26
        offset = rng.uniform(0, step, size=2)
        for gx in np.arange(offset[0] - step, big + step, step):
            for gy in np.arange(offset[1] - step, big + step, step):
                tdraw.ellipse((gx - r, gy - r, gx + r, gy + r), fill=(245, 245, 245))
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    canvas.paste(texture, (0, 0), mask)
    ImageDraw.Draw(canvas).polygon(polygon, outline=(20, 20, 20), width=max(1, big // 64))

    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float64)
    pixels += rng.normal(0.0, rng.uniform(3.0, 10.0), size=pixels.shape)  # sensor-like noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


# --- the dataset folder -------------------------------------------------------------------------

def _params_hash(images_per_class: int, image_size: int, seed: int) -> str:
    return digest_json({"version": GENERATOR_VERSION, "images_per_class": images_per_class,
                        "image_size": image_size, "seed": seed}, length=12)


def _write_split_mat(path: Path, variables: dict) -> None:
    """savemat with the header's "Created on" timestamp replaced, so the file is byte-reproducible."""
    import scipy.io

    with open(path, "wb") as handle:
        scipy.io.savemat(handle, variables, do_compression=False)
    data = bytearray(path.read_bytes())
    data[:116] = b"MATLAB 5.0 MAT-file, bsegn synthetic demo benchmark (deterministic)".ljust(116, b" ")
    path.write_bytes(bytes(data))


def _generate(folder: Path, images_per_class: int, image_size: int, seed: int) -> None:
    train, val, unseen = demo_classes()
    seen = sorted(train + val)
    all_classes = sorted(seen + unseen, key=class_name)
    names = [class_name(c) for c in all_classes]
    image_root = folder / "images"
    files: list[tuple[str, int]] = []  # (relative path, class id)
    for class_id, factors in enumerate(all_classes):
        # One generator per class, derived from (seed, class): a class's images do not depend on the others.
        rng = np.random.default_rng([seed, class_id, 7919])
        (image_root / names[class_id]).mkdir(parents=True)
        for j in range(images_per_class):
            relative = f"{names[class_id]}/{names[class_id]}_{j:04d}.jpg"
            _render(factors, image_size, rng).save(image_root / relative, format="JPEG", quality=92)
            files.append((relative, class_id))
    files.sort()  # the locs index the alphabetically sorted relative paths, as in the real benchmarks
    labels = np.array([c for _, c in files], dtype=np.int64)

    seen_ids = {names.index(class_name(c)) for c in seen}
    train_ids = {names.index(class_name(c)) for c in train}
    split_rng = np.random.default_rng([seed, 104729])
    trainval, test_seen, test_unseen, train_loc, val_loc = [], [], [], [], []
    for class_id in range(len(names)):
        members = np.flatnonzero(labels == class_id)
        if class_id not in seen_ids:
            test_unseen.extend(members)
            continue
        shuffled = split_rng.permutation(members)
        cut = max(1, int(round(0.2 * len(members)))) if len(members) > 1 else 0
        test_seen.extend(shuffled[:cut])
        trainval.extend(shuffled[cut:])
        (train_loc if class_id in train_ids else val_loc).extend(members)

    binary = np.stack([class_attributes(c) for c in all_classes])  # (C, k)
    att = binary / np.linalg.norm(binary, axis=1, keepdims=True)
    names_cell = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        names_cell[i, 0] = np.array([name])

    def one_based(loc):
        return (np.sort(np.asarray(loc, dtype=np.int64)) + 1).reshape(-1, 1).astype(np.float64)

    _write_split_mat(folder / "att_splits.mat", {
        "att": att.T, "original_att": binary.T, "allclasses_names": names_cell,
        "trainval_loc": one_based(trainval), "test_seen_loc": one_based(test_seen),
        "test_unseen_loc": one_based(test_unseen), "train_loc": one_based(train_loc), "val_loc": one_based(val_loc),
    })
    (folder / "trainvalclasses.txt").write_text("".join(class_name(c) + "\n" for c in seen))
    (folder / "testclasses.txt").write_text("".join(class_name(c) + "\n" for c in unseen))
    (folder / "trainclasses1.txt").write_text("".join(class_name(c) + "\n" for c in train))
    (folder / "valclasses1.txt").write_text("".join(class_name(c) + "\n" for c in val))
    (folder / "attributes.txt").write_text("".join(name + "\n" for name in ATTRIBUTE_NAMES))
    (folder / "image_labels.txt").write_text("".join(f"{path} {cid}\n" for path, cid in files))
    (folder / "README.txt").write_text(
        "SYNTHETIC demo benchmark generated by bsegn (bsegn.datasets.demo): procedurally drawn shapes;\n"
        "attributes are the true generative factors (shape, colour, pattern). Not real photographs.\n"
        f"images_per_class={images_per_class} image_size={image_size} seed={seed} version={GENERATOR_VERSION}\n"
    )


def read_demo_split(folder: str | Path) -> ZSLSplit:
    """The ZSLSplit of a generated demo folder, with labels, image files and attribute names, validated."""
    from bsegn.datasets.xlsa17 import load_xlsa17_file, validate_split

    folder = Path(folder)
    split = load_xlsa17_file(folder / "att_splits.mat", benchmark="demo")
    lines = (folder / "image_labels.txt").read_text().splitlines()
    split.image_files = [line.rsplit(" ", 1)[0] for line in lines]
    split.labels = np.array([int(line.rsplit(" ", 1)[1]) for line in lines], dtype=np.int64)
    split.attribute_names = (folder / "attributes.txt").read_text().split()
    split.notes.append("SYNTHETIC benchmark: procedurally generated shapes; attributes = the generative factors.")
    validate_split(split, split.labels, source=str(folder / "att_splits.mat"))
    return split


def ensure_demo_dataset(root: str | Path | None = None, *, images_per_class: int = 40, image_size: int = 64,
                        seed: int = 0) -> tuple[Path, ZSLSplit]:
    """Generate (once) and read the synthetic demo benchmark.

    Args:
        root: parent folder for `demo-<params hash>/` (default cache_dir()).
        images_per_class: images drawn per class (40 classes).
        image_size: side of the square JPEGs in pixels.
        seed: drives every random choice in the images and the 80/20 image split (not the class list).

    Returns:
        (image root folder holding `<class>/<file>.jpg`, ZSLSplit with labels and image_files).
    """
    if images_per_class < 2:
        raise DataError(f"images_per_class must be >= 2 (one for trainval, one for test_seen); got {images_per_class}.")
    if image_size < 16:
        raise DataError(f"image_size must be >= 16 pixels; got {image_size}.")
    parent = Path(root) if root is not None else cache_dir()
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"demo-{_params_hash(images_per_class, image_size, seed)}"
    if not (folder / "att_splits.mat").is_file():
        # Not core.files.atomic_folder: that replaces a folder already there, and under `accelerate launch`
        # every rank may generate at once; here the first complete folder wins and is never swapped out
        # under a rank that is reading it (the content is the same, being deterministic).
        temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=parent))
        try:
            _generate(temp, images_per_class, image_size, seed)
            try:
                os.rename(temp, folder)  # atomic: either the whole folder exists or none of it
            except OSError:
                if not (folder / "att_splits.mat").is_file():  # not a concurrent winner: a real failure
                    raise
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    return folder / "images", read_demo_split(folder)
