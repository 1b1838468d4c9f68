"""The gate registry, and what every seen-or-unseen gate shares (the gates: bsegn.generative.gates).

In the spirit of timm's register_model: a gate kind is a DomainGate subclass decorated with @register_gate,
and everything else derives from GATE_REGISTRY: run.gate's valid values and its help, what gate_inputs
computes, fit_gates, gate_from_state, the bundle's checks of a gate's tensors and add-class's refit. A
gate kind declares

    kind, summary              its name, and one line on when it calls an image unseen (run.gate's help)
    reads_integrated           it reads GateInputs.integrated (the mFIM features); feature_dim says their width
    reads_semantic_margin      it reads GateInputs.semantic_margin when the model has a semantic decoder
    requires_decoder           ... and cannot decide without one (run.gate and the bundle refuse it then)
    needs_classifiers          fit_gates needs classifiers=(gzsl, zsl) to fit it
    refit_when_classes_change  it is fitted on synthetic features of every class: add-class refits it
    fit_on(fitting) -> gate    fitted on TRAINING data (GateFitting: the inputs and the parts gates share)
    from_state(state) -> gate  an unfitted gate sized from its own state_dict, for load_state_dict

Adding a gate is one registered class, in a module imported before the gate is named, plus its test.

    inputs = gate_inputs(trained, gzsl, zsl, features, kinds=[...])   GateInputs for N images
    routed_predictions(scores, seen_columns, unseen)                   each image's column within its domain
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bsegn.core.errors import ConfigError

GATE_REGISTRY: dict[str, type[DomainGate]] = {}
GATES = GATE_REGISTRY.keys()  # the registered gate names, in registration order (a live view)


def register_gate(cls: type[DomainGate]) -> type[DomainGate]:
    """Class decorator: makes a DomainGate subclass a gate known by `cls.kind` to run.gate, fit_gates, the
    bundle and add-class. A kind registered twice would silently replace a gate: refused."""
    if not isinstance(cls.kind, str) or not cls.kind.isidentifier() or cls.kind in GATE_REGISTRY:
        raise ValueError(f"gate kind {cls.kind!r} of {cls.__name__} is not a name or is registered already")
    GATE_REGISTRY[cls.kind] = cls
    return cls


def gate_class(kind: str) -> type[DomainGate]:
    """The registered gate class of `kind`; ConfigError listing the valid gates for any other."""
    if kind not in GATE_REGISTRY:
        raise ConfigError(f"unknown gate {kind!r}; valid gates: {', '.join(GATES)} (run.gate)")
    return GATE_REGISTRY[kind]


def gate_summaries() -> dict[str, str]:
    """{kind: one line on when it calls an image unseen} of every registered gate (train.py --help-config)."""
    return {kind: cls.summary for kind, cls in GATE_REGISTRY.items()}


@dataclass
class GateInputs:
    """What gates read for N images: scores (N, C) the GZSL scores (log-probabilities over the classifier's
    columns, unseen_ranking applied), seen_columns (C,) bool, integrated (N, D) the mFIM features and
    semantic_margin (N,) (semantic_margin's; None for gates that do not need them)."""

    scores: torch.Tensor
    seen_columns: torch.Tensor
    integrated: torch.Tensor | None = None
    semantic_margin: torch.Tensor | None = None

    def subset(self, index) -> "GateInputs":
        return GateInputs(self.scores[index], self.seen_columns,
                          None if self.integrated is None else self.integrated[index],
                          None if self.semantic_margin is None else self.semantic_margin[index])


def needs_integrated(kind: str) -> bool:
    return gate_class(kind).reads_integrated


def needs_semantic(kind: str, trained) -> bool:
    """Whether a `kind` gate reads the semantic margin of `trained`: a gate that requires the decoder always
    (semantic_margin then says it is missing), one that only reads it when the model has a decoder."""
    cls = gate_class(kind)
    return cls.reads_semantic_margin and (cls.requires_decoder or "decoder" in trained.parts)


@torch.no_grad()
def semantic_margin(trained, features: torch.Tensor, class_ids: torch.Tensor, seen_columns: torch.Tensor,
                    batch_size: int = 4096) -> torch.Tensor:
    """features (N, d) -> (N,): the cosine of the decoder's semantic reconstruction a_hat (the cycle branch)
    with the nearest unseen class vector minus that with the nearest seen one, over the classifier's columns
    (class_ids (C,)). An unseen image is a new combination of what seen images show, so the decoder reads a
    vector nearer to its own class than to any seen class (attribute-based detection, as in DAP)."""
    if "decoder" not in trained.parts:
        raise ConfigError("the semantic gate reads the semantic decoder, and this model has none "
                          "(generative.lambda_cyc 0); choose another run.gate or set generative.lambda_cyc > 0")
    semantics = torch.nn.functional.normalize(trained.semantics[class_ids.cpu()].to(trained.device), dim=1)
    margins = []
    for start in range(0, len(features), batch_size):
        a_hat, _ = trained.parts["decoder"](features[start:start + batch_size].to(trained.device))
        cosine = torch.nn.functional.normalize(a_hat, dim=1) @ semantics.T
        margins.append((cosine[:, ~seen_columns].max(1).values - cosine[:, seen_columns].max(1).values).cpu())
    return torch.cat(margins) if margins else torch.zeros(0)


@torch.no_grad()
def gate_inputs(trained, gzsl, zsl, features, *, unseen_ranking: str = "gzsl", kinds=GATES,
                scores: torch.Tensor | None = None, integrated: torch.Tensor | None = None) -> GateInputs:
    """GateInputs of real features (N, d) for the given gate kinds (scores: gzsl_scores, integrated:
    trained.integrate(features), when the caller has them; each is computed once otherwise)."""
    from bsegn.generative.classifier import gzsl_scores

    if integrated is None and (scores is None or any(needs_integrated(kind) for kind in kinds)):
        integrated = trained.integrate(torch.as_tensor(features, dtype=torch.float32))
    if scores is None:
        scores = gzsl_scores(trained, gzsl, zsl, features, unseen_ranking=unseen_ranking, integrated=integrated)
    seen_columns = torch.isin(gzsl.class_ids.cpu(), trained.seen_classes)
    if not any(needs_integrated(kind) for kind in kinds):
        integrated = None
    margin = None
    if any(needs_semantic(kind, trained) for kind in kinds):
        margin = semantic_margin(trained, torch.as_tensor(features, dtype=torch.float32), gzsl.class_ids,
                                 seen_columns)
    return GateInputs(scores.cpu().float(), seen_columns, None if integrated is None else integrated.cpu(), margin)


class DomainGate(nn.Module):
    """One gate: `domain_score` (N,) and the decision `score > threshold`. A gate kind declares what it reads
    and how it is fitted and restored (the class attributes and fit_on / from_state: the module's docstring)
    and is registered with @register_gate."""

    kind = "base"
    summary = ""
    reads_integrated = False
    reads_semantic_margin = False
    requires_decoder = False
    needs_classifiers = False
    refit_when_classes_change = False

    def __init__(self):
        super().__init__()
        self.threshold = 0.0
        self.temperature = 1.0  # p_unseen's scale: fitted where the threshold is chosen (gate_evaluation)

    @classmethod
    def fit_on(cls, fitting) -> "DomainGate":
        """The gate fitted on TRAINING data (fitting: bsegn.generative.gates.GateFitting, what fit_gates was
        given and the fitted parts gates share); threshold 0 until chosen. By default nothing to fit."""
        return cls()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "DomainGate":
        """An unfitted gate whose sizes are read from `state` (its own state_dict), for load_state_dict;
        KeyError, IndexError or ValueError when `state` cannot be such a gate's. By default: no tensors."""
        return cls()

    @property
    def feature_dim(self) -> int | None:
        """The mFIM feature dimension a gate that reads_integrated expects (None for the others)."""
        return None

    @property
    def uses_semantic_margin(self) -> bool:
        """Whether this (fitted or restored) gate reads GateInputs.semantic_margin."""
        return self.reads_semantic_margin

    def domain_score(self, inputs: GateInputs) -> torch.Tensor:
        raise NotImplementedError

    # threshold: another than self.threshold; score: this gate's domain_score(inputs) when the caller has it
    # (choosing a threshold tries hundreds on one score; predict reads the decision, p_unseen and the class)

    def margin(self, inputs: GateInputs, threshold: float | None = None,
               score: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) domain score minus threshold: > 0 for the images sent to the unseen expert."""
        score = self.domain_score(inputs) if score is None else score
        return score - (self.threshold if threshold is None else threshold)

    def unseen(self, inputs: GateInputs, threshold: float | None = None, score=None) -> torch.Tensor:
        """(N,) bool: the images this gate sends to the unseen expert."""
        return self.margin(inputs, threshold, score) > 0

    def p_unseen(self, inputs: GateInputs, threshold: float | None = None, score=None) -> torch.Tensor:
        """(N,) sigmoid((score - threshold) / temperature): 0.5 exactly at the decision, above it iff called
        unseen; with the temperature fitted on the validation protocol (gate_evaluation.fit_temperature) a probability
        calibrated there, with 1 (a gate whose threshold was given, a bundle from before) a monotone
        confidence in the score's own units."""
        return torch.sigmoid(self.margin(inputs, threshold, score) / self.temperature)

    def predict(self, inputs: GateInputs, threshold: float | None = None,
                score: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) columns: the best column of the domain the gate picked for each image."""
        return routed_predictions(inputs.scores, inputs.seen_columns, self.unseen(inputs, threshold, score))

    def metadata(self) -> dict:
        return {"kind": self.kind, "threshold": float(self.threshold), "temperature": float(self.temperature)}


def routed_predictions(scores: torch.Tensor, seen_columns: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """scores (N, C), seen_columns (C,) bool, unseen (N,) bool -> (N,) the argmax column within each
    image's domain (the seen columns where unseen is False, the unseen ones where it is True)."""
    allowed = torch.where(unseen[:, None], ~seen_columns[None, :], seen_columns[None, :])
    return scores.masked_fill(~allowed, float("-inf")).argmax(1)
