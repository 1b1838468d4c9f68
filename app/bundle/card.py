"""The bundle's README.md: what the model is, what it was trained on, how well it did, how to use it.

    model_card(config) -> str       from the bundle's (checked) config.json
    markdown_code(text) -> str      text shown as a Markdown code span, never read as Markdown or HTML
"""
from __future__ import annotations

import re
from typing import Any

from bsegn.app.bundle.gate import gate_card_lines
from bsegn.app.bundle.open_world import open_world_card_lines
from bsegn.app.bundle.semantics import uses_text


def model_card(config: dict[str, Any]) -> str:
    """README.md: what the model is, what it was trained on, how well it did, how to use it."""
    classes = config["classes"]
    seen = [c["name"] for c in classes if c["seen"]]
    unseen = [c["name"] for c in classes if not c["seen"]]
    metrics = config.get("metrics") or {}
    backbone = config.get("backbone") or {}
    lines = [
        f"# bsegn model: {markdown_code(config.get('benchmark') or 'custom')}",
        "",
        "Generative zero-shot image classifier (BSeGN): a timm backbone turns an image into a feature; "
        "a final classifier trained on real seen-class features and BSeGN-synthesised unseen-class "
        "features (on multilevel mFIM features) names the class, including classes never seen in training.",
        "",
        "## Contents",
        f"- backbone: {markdown_code(backbone.get('model_name', 'none (feature-only bundle)'))} "
        f"(weights id {backbone.get('weights_id', '-')}, {backbone.get('num_features', '-')}-d features)",
        f"- input: {config.get('data_config', {}).get('input_size')}",
        f"- classes: {len(classes)} ({len(seen)} seen, {len(unseen)} unseen), "
        f"semantics: {config.get('semantic_kind')} of dimension {len(config['bsegn']['semantics'][0])}"
        + (f" (text encoder {markdown_code(config.get('text_encoder_id'))}, each class text embedded "
           f"{'as the mean of its words' if config.get('text_pooling') == 'words' else 'whole'})"
           if uses_text(config.get('semantic_kind')) else ""),
        f"- unseen classes: {', '.join(map(markdown_code, unseen[:30]))}{' ...' if len(unseen) > 30 else ''}",
        *gate_card_lines(config),
        *open_world_card_lines(config),
        f"- unseen classes ranked by the {config.get('unseen_ranking', 'gzsl').upper()} classifier",
        "",
        "## Results (percent; T1: ZSL mean per-class top-1 on unseen; U/S/H: GZSL)",
    ]
    if metrics:
        lines.append("| protocol | T1 | U | S | H |")
        lines.append("|---|---|---|---|---|")
        lines.append(f"| {metrics.get('protocol', '?')} | " + " | ".join(
            f"{metrics[key]:.1f}" if isinstance(metrics.get(key), (int, float)) else "-"
            for key in ("T1", "U", "S", "H"))
            + " |")
    else:
        lines.append("not evaluated")
    # a model trained on pre-extracted features has no backbone: it answers features of that kind, never images
    options = "--model THIS_FOLDER [--top-k 5] [--mode gzsl|zsl|seen] [--explain] [--json]"
    backbone = config.get("backbone")
    use = [f"predict IMAGE_OR_FOLDER {options}", f"predict --features FEATURES.safetensors {options}"] if backbone \
        else [f"predict --features FEATURES.safetensors {options}"]
    dim = config["bsegn"].get("feature_dim")
    lines += [
        "",
        "## Use",
        ("`--features` takes a feature cache of this backbone's (the run's features/ folder, or `bsegn extract` "
         "with the same weights), one answer per row; in Python `bsegn.load_model(THIS_FOLDER).predict(image)` or "
         "`.predict_features(rows)`." if backbone else
         f"Trained on pre-extracted features, this bundle has no backbone: it classifies features of that kind "
         f"({dim} per image), never images. `predict --features` takes a feature cache (`bsegn extract`), one answer "
         "per row; in Python `bsegn.load_model(THIS_FOLDER).predict_features(rows)`. bsegn serve needs a bundle "
         "trained from images."),
        "```",
        *use,
        _add_class_line(config.get("semantic_kind")),
        "```",
        "",
        "## Limits",
        "- Unseen classes are recognised from their semantic vectors only; quality depends on how well "
        "the attributes (or descriptions) describe them.",
        "- Images unlike the training domain give confident but meaningless answers.",
        "",
        f"Format {config['format']} v{config['format_version']}; written with {config.get('versions')}.",
        "",
    ]
    return "\n".join(lines)


def markdown_code(text) -> str:
    """`text` as a Markdown code span: shown as it is, never read as Markdown or HTML (a class name such as
    `<img src=x onerror=...>` stays text), fenced with more backticks than it holds in a row."""
    text = " ".join(str(text).split())  # a code span is one line
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _add_class_line(kind: str | None) -> str:
    words = '--description "WORDS" (or a CSV name,description)'
    given = words if kind == "text" else ("--attributes VALUES_OR_CSV " + words if uses_text(kind) else
                                          "--attributes VALUES_OR_CSV")
    return f"bsegn add-class --model THIS_FOLDER --name NAME {given} --out NEW_FOLDER"
