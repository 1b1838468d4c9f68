"""The Bundle: one trained model with everything `predict` and `add-class` need, in memory.

save_bundle(bundle, folder) writes exactly these fields (app.bundle.save) and load_bundle gives them back
(app.bundle.load); add-class and remove-class change a loaded Bundle with dataclasses.replace.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bsegn.app.bundle.semantics import uses_text


@dataclass
class Bundle:
    """A loaded (or about to be saved) model.

    backbone: FeatureBackbone or None (feature-only bundles cannot read images).
    trained: TrainedBSeGN (its semantics (C, k), seen_classes, unseen_classes define the classes).
    gzsl: FinalClassifier over all C classes; zsl: FinalClassifier over the unseen classes.
    class_names: C names; gate: the DomainGate (bsegn.generative.gates) that decides seen or unseen, its
    threshold set (default: calibrated stacking at threshold 0, i.e. no correction);
    unseen_ranking: "gzsl" or "zsl" (the ZSL classifier re-ranks the unseen columns), as in training.
    train_features (M, d) float32 / train_labels (M,): the real seen trainval features (stored as replay.*).
    data_config: the timm data config the features were extracted with (input size included).
    """

    backbone: Any
    trained: Any
    gzsl: Any
    zsl: Any
    class_names: list[str]
    gate: Any = None
    unseen_ranking: str = "gzsl"  # which classifier names an unseen class in GZSL mode (run.unseen_ranking)
    attribute_names: list[str] | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    train_features: torch.Tensor | None = None  # add_class refits on these real seen trainval features
    train_labels: torch.Tensor | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    open_world: Any = None  # the OpenWorldRule that answers "unknown" (bsegn.generative.open_world); None: closed world
    run_config: dict[str, Any] = field(default_factory=dict)
    benchmark: str = ""
    semantic_kind: str = "attributes"  # attributes, sentences, text, attributes+text (app.bundle.semantics)
    text_encoder: str | None = None  # text semantics: the encoder as named ("minilm", "local-dir:PATH")
    text_encoder_id: str | None = None  # and its identity (a class added by description must use the same)
    text_pooling: str | None = None  # and how a class text became one vector ("sentence" when None)
    attribute_dim: int | None = None  # the attribute part of a semantic vector (None: all of it)
    text_dim: int = 0  # the text part (after the attribute part)
    class_texts: list[str] | None = None  # the text of every class (text semantics)
    path: Path | None = None  # the folder it was loaded from
    info: dict[str, Any] = field(default_factory=dict)  # config.json as read

    def __post_init__(self):
        self.class_names = list(self.class_names)
        # the training features may come as numpy rows (run_outputs) or float16 (a loaded bundle's replay.*)
        if self.train_features is not None:
            self.train_features = torch.as_tensor(self.train_features).float()
            self.train_labels = torch.as_tensor(self.train_labels).long()
        if self.gate is None:
            from bsegn.generative.gates import StackingGate

            self.gate = StackingGate()
        if self.text_pooling is None and uses_text(self.semantic_kind):
            self.text_pooling = "sentence"  # what every text bundle did before pooling was recorded

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.trained.seen_classes] = True
        return mask
