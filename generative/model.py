"""The trained BSeGN the rest of the application uses: `train_bsegn` -> `TrainedBSeGN`.

    trained = train_bsegn(features, labels, semantics, seen_classes, unseen_classes, config, seed=0,
                          accelerator=None, run_dir=None)
    feats, labs = trained.synthesize(class_ids, n_per_class)       # fake features (K*n, d), labels (K*n,)
    z = trained.integrate(x)                                        # mFIM features (N, D_mfim)
    trained.state_dict() / TrainedBSeGN.from_state(meta, state)     # bundle round trip (safetensors-able)
    new_id = trained.add_class(attribute_vector)                    # a new unseen class, from semantics alone

`features` are real SEEN training features (N, d); `labels` (N,) index rows of `semantics` (C, k).
The critic is a training device only and is not part of TrainedBSeGN.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsegn.generative.config import BSeGNConfig
from bsegn.generative.networks import MultilevelIntegration, build_networks


class TrainedBSeGN(nn.Module):
    """Generator (+ decoder, embedder when on) and the fitted mFIM statistics.

    Attributes (not in the state_dict, because add_class changes them): semantics (C, k) float32,
    seen_classes / unseen_classes (sorted long tensors), config, seed (the training seed: the default
    seed of synthesize and of the final classifiers' fits).
    """

    def __init__(self, config: BSeGNConfig, feature_dim: int, semantic_dim: int, semantics,
                 seen_classes, unseen_classes, *, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = int(seed)
        self.feature_dim, self.semantic_dim = int(feature_dim), int(semantic_dim)
        parts = build_networks(config, feature_dim, semantic_dim)
        del parts["critic"]
        self.parts = parts
        self.semantics = torch.as_tensor(semantics, dtype=torch.float32).cpu()
        self.seen_classes = torch.as_tensor(seen_classes, dtype=torch.long).cpu()
        self.unseen_classes = torch.as_tensor(unseen_classes, dtype=torch.long).cpu()
        dims = {"x": feature_dim, "h_R": config.hidden, "a_hat": semantic_dim, "s": semantic_dim}
        self.mfim = MultilevelIntegration({lvl: dims[lvl] for lvl in config.effective_mfim_levels})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_classes(self) -> int:
        return int(self.semantics.shape[0])

    # --- features ----------------------------------------------------------------------------

    @torch.no_grad()
    def levels(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, d) -> the mFIM levels this config uses, each (B, dim)."""
        out = {"x": features}
        if "decoder" in self.parts:
            out["a_hat"], out["h_R"] = self.parts["decoder"](features)
        if "embedder" in self.parts:
            out["s"], _ = self.parts["embedder"].embed(features)
        return {lvl: out[lvl] for lvl in self.mfim.levels}

    @torch.no_grad()
    def fit_integration(self, real_seen_features: torch.Tensor, batch_size: int = 4096) -> None:
        """Fit mFIM's standardisation on real seen training features (N, d)."""
        chunks = [self.levels(real_seen_features[i:i + batch_size].to(self.device))
                  for i in range(0, len(real_seen_features), batch_size)]
        self.mfim.fit({lvl: torch.cat([c[lvl] for c in chunks]) for lvl in self.mfim.levels})

    @torch.no_grad()
    def integrate(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """features (N, d) -> mFIM features (N, D_mfim) on this model's device."""
        features = torch.as_tensor(features, dtype=torch.float32)
        return torch.cat([self.mfim(self.levels(features[i:i + batch_size].to(self.device)))
                          for i in range(0, len(features), batch_size)]) if len(features) else \
            torch.zeros(0, self.mfim.output_dim, device=self.device)

    @torch.no_grad()
    def synthesize(self, class_ids, n_per_class: int, *, semantics: torch.Tensor | None = None,
                   seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake features for each class: class_ids (K,) rows of self.semantics (or of `semantics` (C, k)
        when given) -> (features (K*n, d), labels (K*n,)), class-major order."""
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).cpu()
        table = self.semantics if semantics is None else torch.as_tensor(semantics, dtype=torch.float32).cpu()
        labels = class_ids.repeat_interleave(n_per_class)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        noise = torch.randn(len(labels), self.parts["generator"].noise_dim, generator=generator)
        out = [self.parts["generator"](noise[start:start + 8192].to(self.device),
                                       table[labels[start:start + 8192]].to(self.device))
               for start in range(0, len(labels), 8192)]
        features = torch.cat(out) if out else torch.zeros(0, self.feature_dim, device=self.device)
        return features, labels.to(self.device)

    @torch.no_grad()
    def fem_log_probs(self, features: torch.Tensor, class_ids) -> torch.Tensor:
        """The FEM's own log-probabilities over `class_ids` (K,): (N, d) -> (N, K). Needs fem on."""
        if "embedder" not in self.parts:
            raise ValueError("this model has no FEM (fem is off); fusion needs it")
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).cpu()
        semantics = self.semantics[class_ids].to(self.device)
        out = [torch.log_softmax(self.parts["embedder"](features[i:i + 4096].to(self.device), semantics), dim=1)
               for i in range(0, len(features), 4096)]
        return torch.cat(out)

    def add_class(self, semantic_vector) -> int:
        """Append a new UNSEEN class known only by its semantic vector (k,); returns its class id."""
        vector = torch.as_tensor(semantic_vector, dtype=torch.float32).reshape(1, -1).cpu()
        if vector.shape[1] != self.semantic_dim:
            raise ValueError(f"semantic vector has {vector.shape[1]} values; this model needs {self.semantic_dim}")
        self.semantics = torch.cat([self.semantics, vector])
        new_id = self.num_classes - 1
        self.unseen_classes = torch.cat([self.unseen_classes, torch.tensor([new_id])])
        return new_id

    # --- persistence -------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """JSON-safe facts needed to rebuild this object around a state_dict."""
        return {"config": self.config.to_dict(), "seed": self.seed, "feature_dim": self.feature_dim,
                "semantic_dim": self.semantic_dim, "semantics": self.semantics.tolist(),
                "seen_classes": self.seen_classes.tolist(), "unseen_classes": self.unseen_classes.tolist()}

    @classmethod
    def from_state(cls, metadata: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> "TrainedBSeGN":
        """Rebuild from `metadata()` and `state_dict()` (e.g. read from JSON + safetensors)."""
        model = cls(BSeGNConfig.from_dict(metadata["config"]), metadata["feature_dim"], metadata["semantic_dim"],
                    metadata["semantics"], metadata["seen_classes"], metadata["unseen_classes"],
                    seed=metadata.get("seed", 0))
        model.load_state_dict(state_dict)
        return model.eval()


def train_bsegn(features, labels, semantics, seen_classes, unseen_classes, config: BSeGNConfig, *,
                seed: int = 0, accelerator=None, run_dir: str | Path | None = None, show_progress: bool = True,
                max_epochs: int | None = None) -> TrainedBSeGN:
    """Train BSeGN on real seen features and return the inference parts with mFIM fitted.

    Args:
        features: (N, d) real SEEN training features (tensor or numpy).
        labels: (N,) class ids indexing rows of `semantics`.
        semantics: (C, k) semantic vectors of all classes.
        seen_classes / unseen_classes: class ids.
        config: BSeGNConfig; seed: initialisation and training draws; accelerator: accelerate.Accelerator or
        None; run_dir: checkpoint + losses.csv (resumes from a matching checkpoint there).
        max_epochs: stop after this many more epochs (interruption tests, epoch-by-epoch scoring).
    Returns a TrainedBSeGN in eval mode on the accelerator's device; `.history` holds per-epoch losses.
    """
    from bsegn.generative.trainer import BSeGNTrainer

    trainer = BSeGNTrainer(features, labels, semantics, seen_classes, unseen_classes, config, seed=seed,
                           accelerator=accelerator, run_dir=run_dir, show_progress=show_progress)
    trainer.fit(max_epochs=max_epochs)
    model = TrainedBSeGN(config, trainer.feature_dim, trainer.semantic_dim, semantics, seen_classes,
                         unseen_classes, seed=seed).to(trainer.accelerator.device)
    for name, module in model.parts.items():
        module.load_state_dict(trainer.unwrapped(name).state_dict())
    model.eval()
    model.fit_integration(trainer.features)
    model.history = trainer.history
    model.epochs_trained = trainer.epoch
    return model
