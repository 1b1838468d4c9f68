"""The seen-class heads fine-tuning trains on top of a backbone (bsegn.backbone.finetune).

    softmax     SeenClassHead: a linear layer over the S seen classes
    attribute   AttributeHead: logit_c = x . W . a_c with the seen classes' semantics a_c fixed, so the
                features learn to predict the attributes (what transfers to unseen classes)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

HEAD_KINDS = ("softmax", "attribute")


class SeenClassHead(nn.Module):
    """Linear softmax head over the S seen classes: (B, D) features -> (B, S) logits."""

    def __init__(self, num_features: int, num_seen: int):
        super().__init__()
        self.linear = nn.Linear(num_features, num_seen)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class AttributeHead(nn.Module):
    """Attribute-aware head: logit_c = x · W · a_c, so the features learn to predict the attributes.

    features (B, D), W (D, k) learned, seen-class semantics a (S, k) fixed -> logits (B, S).
    """

    def __init__(self, num_features: int, seen_semantics: np.ndarray):
        super().__init__()
        semantics = torch.as_tensor(np.asarray(seen_semantics), dtype=torch.float32)
        self.register_buffer("seen_semantics", semantics)
        self.projection = nn.Linear(num_features, semantics.shape[1], bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features) @ self.seen_semantics.t()


def build_head(kind: str, num_features: int, seen_semantics: np.ndarray) -> nn.Module:
    """The head `kind` ("softmax" or "attribute") for S = len(seen_semantics) seen classes."""
    if kind == "softmax":
        return SeenClassHead(num_features, len(seen_semantics))
    if kind == "attribute":
        return AttributeHead(num_features, seen_semantics)
    raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_KINDS)}")


class SeenClassifier(nn.Module):
    """Backbone + seen-class head, trained together: images (B, 3, H, W) -> (B, S) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
