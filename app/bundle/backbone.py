"""A bundle's backbone read back: built as a timm model (build_backbone), or kept as the stored tensors
(StoredBackbone) where only the classifiers change and the bundle is written again (add-class)."""
from __future__ import annotations

from typing import Any

import torch

from bsegn.core.errors import BundleError


class StoredBackbone:
    """A bundle's backbone as stored: its identity and state_dict, no network (save_bundle writes it back as
    it reads a FeatureBackbone: model_name, weights_id, num_features, model.state_dict())."""

    def __init__(self, info: dict[str, Any], state: dict[str, torch.Tensor]):
        self.model_name, self.weights_id = info["model_name"], info.get("weights_id", "")
        self.num_features = info.get("num_features")
        self.model = self
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)

    def to(self, *_, **__) -> "StoredBackbone":
        return self

    def eval(self) -> "StoredBackbone":
        return self


def build_backbone(info: dict[str, Any], data_config: dict[str, Any], state: dict[str, torch.Tensor]):
    """A FeatureBackbone from the bundle's identity + state_dict; timm builds the architecture only
    (pretrained=False): the weights come from model.safetensors."""
    import timm

    from bsegn.backbone.factory import FeatureBackbone

    try:
        model = timm.create_model(info["model_name"], pretrained=False, num_classes=0)
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        raise BundleError(f"the bundle's backbone weights do not fit {info.get('model_name')} "
                          f"({str(error)[:300]})") from None
    return FeatureBackbone(model, model_name=info["model_name"], data_config=data_config,
                           weights_id=info.get("weights_id", ""), weights_source="bundle")
