"""The networks of BSeGN (docs/method.md), implemented from the published description;
component forms follow the direct predecessors named there (f-CLSWGAN, TF-VAEGAN, CE-GZSL, RGEN).

Shapes: B a batch, d the visual feature size, k the semantic size (also the noise and the embedding
size, as docs/method.md says), C the number of classes.

    build_networks(config, feature_dim, semantic_dim) -> nn.ModuleDict of the parts a config asks for

    FeatureGenerator      G(z (B,k), a (B,k)) -> fake features (B, d)
    Critic                D(x (B,d), a (B,k)) -> (B,) Wasserstein critic values
    SemanticDecoder       R(x (B,d)) -> (a_hat (B,k), h_R (B,hidden))       the cycle branch
    SemanticEmbedder      FEM: x (B,d) -> s (B,k) unit vectors; a (C,k) -> prototypes (C,k);
                          scores s . p_c / tau over ALL classes
    MultilevelIntegration mFIM: concatenation of standardised levels [x, h_R, a_hat, s]
    FinalClassifier       linear softmax on mFIM features -> logits (B, C)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _init_linear(module: nn.Module) -> None:
    # N(0, 0.02) weights as in the predecessors' WGAN feature generators: keeps early critic values small.
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FeatureGenerator(nn.Module):
    """G(z, a): [z; a] -> hidden -> LeakyReLU(0.2) -> d -> ReLU (pooled CNN features are non-negative)."""

    def __init__(self, semantic_dim: int, noise_dim: int, feature_dim: int, hidden: int = 4096):
        super().__init__()
        self.semantic_dim, self.noise_dim, self.feature_dim = semantic_dim, noise_dim, feature_dim
        self.hidden = nn.Linear(noise_dim + semantic_dim, hidden)
        self.output = nn.Linear(hidden, feature_dim)
        self.output_activation = nn.ReLU()
        _init_linear(self)

    def forward(self, noise: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        """noise (B, nz), semantics (B, k) -> (B, d)."""
        h = F.leaky_relu(self.hidden(torch.cat([noise, semantics], dim=1)), 0.2)
        return self.output_activation(self.output(h))


class Critic(nn.Module):
    """D(x, a): [x; a] -> hidden -> LeakyReLU(0.2) -> 1. No normalisation layers (WGAN-GP's
    penalty is per sample, and BatchNorm would couple the samples)."""

    def __init__(self, feature_dim: int, semantic_dim: int, hidden: int = 4096):
        super().__init__()
        self.hidden = nn.Linear(feature_dim + semantic_dim, hidden)
        self.output = nn.Linear(hidden, 1)
        _init_linear(self)

    def forward(self, features: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        """features (B, d), semantics (B, k) -> (B,)."""
        h = F.leaky_relu(self.hidden(torch.cat([features, semantics], dim=1)), 0.2)
        return self.output(h).squeeze(1)


class SemanticDecoder(nn.Module):
    """R(x): x -> hidden (LeakyReLU) = h_R(x) -> k = a_hat(x). The cycle-consistency branch."""

    def __init__(self, feature_dim: int, semantic_dim: int, hidden: int = 4096):
        super().__init__()
        self.hidden = nn.Linear(feature_dim, hidden)
        self.output = nn.Linear(hidden, semantic_dim)
        _init_linear(self)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, d) -> (a_hat (B, k), h_R (B, hidden))."""
        h = F.leaky_relu(self.hidden(features), 0.2)
        return self.output(h), h


class SemanticEmbedder(nn.Module):
    """FEM: E(x) = L2norm(W2 LeakyReLU(W1 x)) (k,), prototypes p_c = L2norm(P a_c) (k,), scores s.p_c / tau.

    Scores cover every class passed in (seen and unseen), which is what lets the balance loss
    compare the seen and unseen domains.
    """

    def __init__(self, feature_dim: int, semantic_dim: int, hidden: int = 2048, tau: float = 0.1):
        super().__init__()
        embed_dim = semantic_dim
        self.tau = tau
        self.hidden = nn.Linear(feature_dim, hidden)
        self.output = nn.Linear(hidden, embed_dim)
        self.prototype_map = nn.Linear(semantic_dim, embed_dim, bias=False)
        nn.init.kaiming_uniform_(self.hidden.weight, a=0.2)
        nn.init.zeros_(self.hidden.bias)
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        nn.init.xavier_uniform_(self.prototype_map.weight)

    def embed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, d) -> (s (B, k) unit rows, h_E (B, hidden))."""
        h = F.leaky_relu(self.hidden(features), 0.2)
        return F.normalize(self.output(h), dim=1), h

    def prototypes(self, semantics: torch.Tensor) -> torch.Tensor:
        """semantics (C, k) -> (C, k) unit rows."""
        return F.normalize(self.prototype_map(semantics), dim=1)

    def forward(self, features: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        """features (B, d), semantics of ALL classes (C, k) -> logits (B, C) = s . p_c / tau."""
        s, _ = self.embed(features)
        return s @ self.prototypes(semantics).t() / self.tau


class MultilevelIntegration(nn.Module):
    """mFIM: concat of the chosen levels, each standardised with statistics of REAL SEEN training features.

    Per level: per-dimension mean, and one scale (the level's overall std after centring) so that every
    level enters with unit variance on average whatever its width. Statistics are buffers, so they
    travel in the state_dict / bundle.
    """

    def __init__(self, level_dims: dict[str, int]):
        super().__init__()
        self.levels = tuple(level_dims)
        self.level_dims = dict(level_dims)
        for name, dim in level_dims.items():
            self.register_buffer(f"mean_{name}", torch.zeros(dim))
            self.register_buffer(f"scale_{name}", torch.ones(()))

    @property
    def output_dim(self) -> int:
        return sum(self.level_dims.values())

    @torch.no_grad()
    def fit(self, levels: dict[str, torch.Tensor]) -> "MultilevelIntegration":
        """levels: name -> (N, dim) values of real seen training features. Sets the buffers."""
        for name in self.levels:
            values = levels[name].float()
            mean = values.mean(0)
            scale = (values - mean).pow(2).mean().sqrt().clamp_min(1e-6)
            getattr(self, f"mean_{name}").copy_(mean)
            getattr(self, f"scale_{name}").copy_(scale)
        return self

    def forward(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """levels: name -> (B, dim) -> (B, sum of dims)."""
        parts = [(levels[name].float() - getattr(self, f"mean_{name}")) / getattr(self, f"scale_{name}")
                 for name in self.levels]
        return torch.cat(parts, dim=1)


class FinalClassifier(nn.Module):
    """Linear softmax classifier: (B, D_in) -> logits (B, num_classes). `class_ids` (buffer) maps
    output column j to the benchmark class id, so the label space (C for GZSL, U for ZSL) is explicit."""

    def __init__(self, input_dim: int, class_ids: torch.Tensor | list[int]):
        super().__init__()
        class_ids = torch.as_tensor(class_ids, dtype=torch.long)
        self.linear = nn.Linear(input_dim, len(class_ids))
        self.register_buffer("class_ids", class_ids.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def build_networks(config, feature_dim: int, semantic_dim: int) -> nn.ModuleDict:
    """The trainable modules a BSeGNConfig asks for, built in this order (it fixes the initialisation
    draws): generator, critic, then the decoder when lambda_cyc > 0 and the embedder when fem is on. A
    part that is off does not exist, so it cannot get gradients. Noise and embedding sizes are k."""
    modules = nn.ModuleDict({
        "generator": FeatureGenerator(semantic_dim, semantic_dim, feature_dim, config.hidden),
        "critic": Critic(feature_dim, semantic_dim, config.hidden),
    })
    if config.uses_decoder:
        modules["decoder"] = SemanticDecoder(feature_dim, semantic_dim, config.hidden)
    if config.fem:
        modules["embedder"] = SemanticEmbedder(feature_dim, semantic_dim, config.embedder_hidden, config.tau)
    return modules
