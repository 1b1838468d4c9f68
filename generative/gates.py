"""The seen-or-unseen decision: gates that send each image to the seen or the unseen expert.

    gate = fit_gate("learned", trained, real_features, real_labels, class_ids)   # on TRAINING data only
    inputs = gate_inputs(trained, gzsl, zsl, features, unseen_ranking="zsl")      # GateInputs for N images
    score = gate.domain_score(inputs)           # (N,): higher = more likely an unseen class
    columns = gate.predict(inputs)              # (N,): the column of gzsl.class_ids each image gets

A gate calls an image unseen when its domain score is above `gate.threshold`; the seen expert (the seen
columns of the GZSL scores) or the unseen expert (their unseen columns: the ZSL classifier's ranking when
unseen_ranking is "zsl") then names the class. The threshold is chosen on the VALIDATION protocol
(`choose_threshold`, best H) and carried to the final one, exactly as calibrated stacking's gamma is.

GATES (domain score s(x)):
    stacking     max unseen score - max seen score of the GZSL scores; threshold = -gamma, so "unseen iff
                 s > threshold" is calibrated stacking (Chao et al. 2016), computed by the same argmax
    max_softmax  -max_c softmax over the seen columns (Hendrycks & Gimpel 2017, on the seen expert)
    energy       -logsumexp over the seen columns (Liu et al. 2020; the scores are log-probabilities, so
                 this is -log p(seen | x) of the GZSL classifier)
    gaussian     min over seen classes of the Mahalanobis distance of the mFIM feature to the class mean,
                 one shared covariance (Lee et al. 2018), fitted on real seen training features
    learned      logit p(unseen | x) of a small MLP on mFIM features: real seen AND synthetic seen features
                 (domain 0, equal weight, so it cannot learn "real vs synthetic") against synthetic unseen
                 features (domain 1)
    cosmo        the soft combination p(c|x) = p(s|x) p(c|x,s) + p(u|x) p(c|x,u) (Atzmon & Chechik 2019)
                 with the learned gate's p(u|x): its argmax is unseen iff
                 logit p(u|x) + log max_c p(c|x,u) - log max_c p(c|x,s) > 0, which is s(x) (threshold 0 is
                 COSMO's own decision; the validation-chosen threshold plays its smoothing prior's part)
    semantic     max cosine of the semantic decoder's reading a_hat (the cycle branch) with an unseen class's
                 vector minus that with a seen class's: an image of a new combination is read nearer to its
                 own class's vector (attribute-based detection, as in DAP, Lampert et al. 2009); needs the
                 decoder (lambda_cyc > 0)
    combined     the sum of four scores, each standardised by its mean and spread over the real seen
                 TRAINING features (so it means the same in the validation and the final protocol): the
                 stacking margin, the log of the gaussian distance, the learned gate's logit and the semantic
                 margin (three without a decoder). On the demo's validation protocol it separated the domains
                 better than any of them alone (docs/results.md)

Each gate is registered (bsegn.generative.gate_registry: what a gate kind declares, and why); run.gate,
fit_gates, gate_from_state, the bundle and add-class know the gates from GATE_REGISTRY, which importing
this module fills with the ones above.

The fitted parts (Gaussian means and precision, the MLP) are buffers/parameters of the gate module, so a
bundle stores them in safetensors; kind and threshold go to JSON (`gate.metadata()`, `gate_from_state`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from bsegn.core.errors import ConfigError
from bsegn.generative.adam import Adam
from bsegn.generative.gate_registry import (
    GATE_REGISTRY,
    GATES,
    DomainGate,
    GateInputs,
    gate_class,
    gate_inputs,
    gate_summaries,
    needs_integrated,
    needs_semantic,
    register_gate,
    routed_predictions,
    semantic_margin,
)

# callers import the gates' API from here: importing this module is what registers the gates below
__all__ = ["GATE_REGISTRY", "GATES", "DomainGate", "GateFitting", "GateInputs", "fit_gate", "fit_gates",
           "gate_class", "gate_from_state", "gate_inputs", "gate_summaries", "needs_integrated", "needs_semantic",
           "register_gate", "routed_predictions", "semantic_margin"]

LEARNED_GATE_HIDDEN = 256
LEARNED_GATE_EPOCHS = 20
LEARNED_GATE_LR = 1e-3
LEARNED_GATE_BATCH = 256
GAUSSIAN_SHRINKAGE = 0.1  # covariance shrunk towards its diagonal mean: mFIM features outnumber seen images
# combined standardises its log gaussian distance on held-out distances, from Gaussians fitted on the other folds
GAUSSIAN_FOLDS = 2
THRESHOLD_CANDIDATES = 201  # quantiles of the validation scores the threshold is chosen among


def _split_max(scores: torch.Tensor, seen_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return scores[:, seen_columns].max(1).values, scores[:, ~seen_columns].max(1).values


@register_gate
class StackingGate(DomainGate):
    kind = "stacking"
    summary = ("the best unseen score beats the best seen score lowered by gamma (calibrated stacking, Chao et al. "
               "2016; threshold = -gamma)")

    def domain_score(self, inputs):
        best_seen, best_unseen = _split_max(inputs.scores, inputs.seen_columns)
        return best_unseen - best_seen

    def predict(self, inputs, threshold=None, score=None):
        # Bit for bit what calibrated stacking has always computed: argmax of scores - gamma on seen columns.
        from bsegn.generative.metrics import calibrated_predictions

        gamma = -(self.threshold if threshold is None else threshold)
        return calibrated_predictions(inputs.scores, inputs.seen_columns, gamma)


@register_gate
class MaxSoftmaxGate(DomainGate):
    kind = "max_softmax"
    summary = "the seen classes' softmax peak is low (Hendrycks & Gimpel 2017)"

    def domain_score(self, inputs):
        return -torch.softmax(inputs.scores[:, inputs.seen_columns], dim=1).max(1).values


@register_gate
class EnergyGate(DomainGate):
    kind = "energy"
    summary = "the seen classes' total probability is low (Liu et al. 2020)"

    def domain_score(self, inputs):
        return -torch.logsumexp(inputs.scores[:, inputs.seen_columns], dim=1)


@register_gate
class GaussianGate(DomainGate):
    """Class means (S, D) of real seen mFIM features and one shared precision matrix (D, D)."""

    kind = "gaussian"
    summary = ("the image's mFIM feature is far (Mahalanobis, shared covariance) from every seen class mean (Lee et "
               "al. 2018)")
    reads_integrated = True

    def __init__(self, dim: int, num_seen: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_seen, dim))
        self.register_buffer("precision", torch.eye(dim))

    @classmethod
    def fit_on(cls, fitting):
        return fitting.gaussian

    @classmethod
    def from_state(cls, state):
        num_seen, dim = state["means"].shape
        return cls(dim, num_seen)

    @property
    def feature_dim(self):
        return self.means.shape[1]

    def fit(self, integrated: torch.Tensor, labels: torch.Tensor) -> "GaussianGate":
        classes, index = torch.unique(labels, return_inverse=True)
        x = integrated.double()
        means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, index, x)
        means /= torch.bincount(index, minlength=len(classes)).double()[:, None]
        centred = x - means[index]
        covariance = centred.T @ centred / max(len(x) - len(classes), 1)
        shrunk = (1 - GAUSSIAN_SHRINKAGE) * covariance + GAUSSIAN_SHRINKAGE * \
            covariance.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64)
        self.means = means.float()
        self.precision = torch.linalg.inv(shrunk).float()
        return self

    def _whitening(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(center (D,), factor L (D, D) with precision = L L^T, whitened means (S, D), their squared
        norms (S,)), float32, computed once per set of buffers (fit, load_state_dict and .to() replace or
        bump them, so the key changes)."""
        key = tuple((t.data_ptr(), t._version, t.device) for t in (self.precision, self.means))
        if getattr(self, "_whitening_key", None) != key:
            precision = self.precision.double()
            factor = torch.linalg.cholesky((precision + precision.T) / 2)  # an inverse: symmetric up to rounding
            center = self.means.double().mean(0)
            whitened_means = (self.means.double() - center) @ factor
            self._whitening_cache = (center.float(), factor.float(), whitened_means.float(),
                                     whitened_means.pow(2).sum(1).float())
            self._whitening_key = key
        return self._whitening_cache

    def domain_score(self, inputs):
        # (x - m)^T P (x - m) = |L^T (x - m)|^2 = |z|^2 - 2 z.w + |w|^2 with z, w the whitened feature and
        # mean, all seen means at once. Centring on the means' average first keeps |z|^2 near the size of
        # the distance itself, so float32 loses nothing that matters (relative error ~1e-6 against float64)
        # at half float64's cost: this matmul is the gate's whole cost in predict.
        center, factor, whitened_means, mean_norms = self._whitening()
        z = (inputs.integrated.float() - center) @ factor                       # (N, D)
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ whitened_means.T + mean_norms
        return distances.min(1).values.clamp_min(0.0)


@register_gate
class LearnedGate(DomainGate):
    """A 2-layer MLP (D -> hidden -> 1) whose output is logit p(unseen | x)."""

    kind = "learned"
    summary = "a small network trained on real and synthetic seen features against synthetic unseen ones says so"
    reads_integrated = True
    refit_when_classes_change = True  # trained on synthetic features of every unseen class

    def __init__(self, dim: int, hidden: int = LEARNED_GATE_HIDDEN):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # building layers draws from the global RNG: leave it alone
            self.network = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @property
    def feature_dim(self):
        return self.network[0].in_features

    @classmethod
    def from_state(cls, state):
        hidden, dim = state["network.0.weight"].shape
        return cls(dim, hidden)

    @classmethod
    def fit_on(cls, fitting):
        gate = cls(fitting.integrated.shape[1])  # learned and cosmo share one fitted network
        gate.load_state_dict(fitting.domain_network.state_dict())
        return gate.eval()

    def logit(self, integrated: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.network(integrated.float()).squeeze(1)

    def domain_score(self, inputs):
        return self.logit(inputs.integrated)

    def fit(self, domains: list[torch.Tensor], targets: list[float], *, seed: int) -> "LearnedGate":
        """domains: feature sets (N_i, D), targets: their domain (0 seen, 1 unseen). Each set carries the
        same total weight within its domain and the two domains weigh the same."""
        per_domain = {t: sum(1 for u in targets if u == t) for t in set(targets)}
        x = torch.cat(domains).float()
        y = torch.cat([torch.full((len(d),), float(t)) for d, t in zip(domains, targets)])
        w = torch.cat([torch.full((len(d),), 0.5 / per_domain[t] / max(len(d), 1)) for d, t in zip(domains, targets)])
        w = w * len(x)  # mean weight 1, so the learning rate means the same for any data size
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.network:
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        optimizer = Adam(self.network.parameters(), lr=LEARNED_GATE_LR, betas=(0.5, 0.999))
        self.train()
        for _ in range(LEARNED_GATE_EPOCHS):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(order), LEARNED_GATE_BATCH):
                index = order[start:start + LEARNED_GATE_BATCH]
                with torch.enable_grad():
                    loss = nn.functional.binary_cross_entropy_with_logits(
                        self.network(x[index]).squeeze(1), y[index], weight=w[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self.eval()


@register_gate
class CosmoGate(LearnedGate):
    kind = "cosmo"
    summary = ("the learned gate's p(unseen) times the unseen expert's confidence beats the seen side's (Atzmon & "
               "Chechik 2019)")

    def domain_score(self, inputs):
        seen = torch.log_softmax(inputs.scores[:, inputs.seen_columns], dim=1).max(1).values
        unseen = torch.log_softmax(inputs.scores[:, ~inputs.seen_columns], dim=1).max(1).values
        return self.logit(inputs.integrated) + unseen - seen


@register_gate
class SemanticGate(DomainGate):
    """The semantic margin (see semantic_margin): nothing to fit."""

    kind = "semantic"
    summary = ("the semantic decoder reads from the image a class vector nearer (cosine) to an unseen class's than "
               "to any seen class's (needs generative.lambda_cyc > 0)")
    reads_semantic_margin = True
    requires_decoder = True

    def domain_score(self, inputs):
        if inputs.semantic_margin is None:
            raise ValueError("the semantic gate needs GateInputs.semantic_margin (gate_inputs computes it)")
        return inputs.semantic_margin


def cross_fitted_log_distances(integrated: torch.Tensor, labels: torch.Tensor, *, folds: int = GAUSSIAN_FOLDS,
                               seed: int = 0) -> torch.Tensor:
    """(N,) the log gaussian distance of each of N real seen features (N, D) under a GaussianGate fitted on
    the other folds (a seeded random split into `folds`): how far a seen image the Gaussian did not see
    scores. The features inside the fit score closer, by an amount that depends on how many there are (the
    covariance of 1280-d features from 600 or 1,140 of them), so a threshold in those units did not carry
    from the validation model to the final one (docs/results.md, "The demo on ImageNet features")."""
    order = torch.randperm(len(integrated), generator=torch.Generator().manual_seed(seed))
    held_out = torch.empty(len(integrated))
    for fold in range(folds):
        rows = order[fold::folds]
        rest = torch.ones(len(integrated), dtype=torch.bool)
        rest[rows] = False
        gaussian = GaussianGate(integrated.shape[1], len(torch.unique(labels[rest])))
        gaussian.fit(integrated[rest], labels[rest])
        held_out[rows] = gaussian.domain_score(SimpleNamespace(integrated=integrated[rows])).clamp_min(1e-6).log()
    return held_out


@register_gate
class CombinedGate(DomainGate):
    """Standardised stacking margin + log gaussian distance + learned logit (+ semantic margin, when the
    model has a semantic decoder). Parts: `gaussian`, `learned`; buffers centre and scale (3 or 4,): each
    score's mean and standard deviation on real seen training features, the log gaussian distance's on
    cross-fitted held-out ones (cross_fitted_log_distances; bundles written before keep their own)."""

    kind = "combined"
    summary = ("the sum of the stacking margin, the log gaussian distance, the learned logit and the semantic margin, "
               "each standardised on the seen training features (the distance on held-out ones: cross-fitted)")
    reads_integrated = True
    reads_semantic_margin = True  # its fourth part, when the model has a semantic decoder
    needs_classifiers = True  # standardised on the classifiers' scores
    refit_when_classes_change = True  # its learned part

    def __init__(self, dim: int, num_seen: int, hidden: int = LEARNED_GATE_HIDDEN, num_parts: int = 4):
        super().__init__()
        self.gaussian = GaussianGate(dim, num_seen)
        self.learned = LearnedGate(dim, hidden)
        self.stacking = StackingGate()
        self.semantic = SemanticGate()  # nothing fitted: no tensors in the state_dict
        self.register_buffer("centre", torch.zeros(num_parts))
        self.register_buffer("scale", torch.ones(num_parts))

    def parts(self, inputs: GateInputs) -> torch.Tensor:
        """(N, 3 or 4): the stacking margin, log gaussian distance, learned logit (and semantic margin)."""
        distance = self.gaussian.domain_score(inputs).clamp_min(1e-6)
        parts = [self.stacking.domain_score(inputs), distance.log(), self.learned.domain_score(inputs)]
        if len(self.centre) == 4:
            parts.append(self.semantic.domain_score(inputs))
        return torch.stack(parts, 1)

    def standardise_on(self, training_inputs: GateInputs,
                       gaussian_centre_scale: tuple[float, float] | None = None) -> "CombinedGate":
        """centre and scale from the parts of the training features; the log gaussian distance's are
        `gaussian_centre_scale` when given (from cross-fitted distances, or a fitted gate's)."""
        parts = self.parts(training_inputs).double()
        centre, scale = parts.mean(0), parts.std(0)
        if gaussian_centre_scale is not None:
            centre[1], scale[1] = (float(value) for value in gaussian_centre_scale)
        self.centre = centre.float()
        self.scale = scale.clamp_min(1e-6).float()
        return self

    def domain_score(self, inputs):
        return ((self.parts(inputs) - self.centre) / self.scale).sum(1)

    @property
    def feature_dim(self):
        return self.gaussian.feature_dim

    @property
    def uses_semantic_margin(self):
        return len(self.centre) == 4

    @classmethod
    def from_state(cls, state):
        num_seen, dim = state["gaussian.means"].shape
        num_parts = state["centre"].shape[0]  # 3: a model without a semantic decoder, or a bundle before it
        if num_parts not in (3, 4):
            raise ValueError(f"a combined gate has 3 or 4 parts, not {num_parts}")
        return cls(dim, num_seen, state["learned.network.0.weight"].shape[0], num_parts)

    @classmethod
    def fit_on(cls, fitting):
        """Made of the fitted gaussian and learned gates, standardised on the real seen features' scores.
        Refitting a combined gate (fitting.previous, add-class) keeps its parts that read the real seen
        features only (the Gaussian, and its log distance's centre and scale): adding unseen classes does not
        change them, and the three covariance fits are most of a refit's cost after the learned network."""
        previous = fitting.previous if isinstance(fitting.previous, CombinedGate) else None
        gaussian = fitting.gaussian if previous is None else previous.gaussian
        gate = cls(fitting.integrated.shape[1], gaussian.means.shape[0],
                   num_parts=4 if needs_semantic(cls.kind, fitting.trained) else 3)
        gate.gaussian.load_state_dict(gaussian.state_dict())
        gate.learned.load_state_dict(fitting.domain_network.state_dict())
        training = gate_inputs(fitting.trained, *fitting.classifiers, fitting.real_seen,
                               unseen_ranking=fitting.unseen_ranking, kinds=[cls.kind], integrated=fitting.integrated)
        if previous is None:
            held_out = cross_fitted_log_distances(fitting.integrated, fitting.seen_labels,
                                                  seed=fitting.seed + 14).double()
            gaussian_centre_scale = (held_out.mean(), held_out.std())
        else:
            gaussian_centre_scale = (previous.centre[1], previous.scale[1])
        return gate.standardise_on(training, gaussian_centre_scale).eval()


@dataclass
class GateFitting:
    """What fit_gates fits on, and the parts several gates share, each computed once when first asked:
    real features (N, d) with labels (N,) (rows outside trained.seen_classes ignored), class_ids (the classes
    the learned gates see synthetic features of; `semantics` (C, k) when not all in trained.semantics), the
    classifiers (gzsl, zsl) and unseen_ranking a gate that reads their scores is fitted under, and
    `previous`: the gate this fit replaces (add-class), whose parts that read the seen classes only may stay."""

    trained: Any
    real_features: Any
    real_labels: Any
    class_ids: Any
    seed: int
    semantics: Any = None
    classifiers: tuple | None = None
    unseen_ranking: str = "gzsl"
    previous: DomainGate | None = None

    @cached_property
    def _labels_and_seen_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(self.real_labels, dtype=torch.long).cpu()
        return labels, torch.isin(labels, self.trained.seen_classes)

    @cached_property
    def real_seen(self) -> torch.Tensor:
        """(M, d) the real features of seen classes."""
        _, seen_rows = self._labels_and_seen_rows
        return torch.as_tensor(self.real_features, dtype=torch.float32)[seen_rows]

    @cached_property
    def seen_labels(self) -> torch.Tensor:
        """(M,) their labels."""
        labels, seen_rows = self._labels_and_seen_rows
        return labels[seen_rows]

    @cached_property
    def integrated(self) -> torch.Tensor:
        """(M, D) their mFIM features."""
        return self.trained.integrate(self.real_seen).cpu()

    @cached_property
    def gaussian(self) -> GaussianGate:
        """The Gaussian of the real seen mFIM features (the gaussian gate; combined's part)."""
        return GaussianGate(self.integrated.shape[1], len(torch.unique(self.seen_labels))).fit(
            self.integrated, self.seen_labels)

    @cached_property
    def domain_network(self) -> LearnedGate:
        """The learned gates' network: real and synthetic seen features (domain 0) against synthetic unseen
        ones (domain 1), from seeds apart from the final classifiers' (seed + 1): other synthetic draws."""
        class_ids = torch.as_tensor(self.class_ids, dtype=torch.long).cpu()
        seen_ids = class_ids[torch.isin(class_ids, self.trained.seen_classes)]
        unseen_ids = class_ids[~torch.isin(class_ids, self.trained.seen_classes)]
        syn_num = self.trained.config.syn_num
        fake_seen, _ = self.trained.synthesize(seen_ids, syn_num, semantics=self.semantics, seed=self.seed + 11)
        fake_unseen, _ = self.trained.synthesize(unseen_ids, syn_num, semantics=self.semantics, seed=self.seed + 12)
        return LearnedGate(self.integrated.shape[1]).fit(
            [self.integrated, self.trained.integrate(fake_seen).cpu(), self.trained.integrate(fake_unseen).cpu()],
            [0.0, 0.0, 1.0], seed=self.seed + 13)


@torch.no_grad()
def fit_gates(kinds, trained, real_features, real_labels, class_ids, *, seed: int | None = None,
              semantics=None, classifiers=None, unseen_ranking: str = "gzsl",
              previous: DomainGate | None = None) -> dict[str, DomainGate]:
    """Fit gates of the registered `kinds` on TRAINING data only (the arguments: GateFitting; seed default
    trained.seed). The parts gates share are fitted once: one network for learned, cosmo and combined, one
    Gaussian for gaussian and combined. Thresholds are 0 until chosen or set. Returns {kind: gate} in the
    order asked."""
    classes = [gate_class(kind) for kind in kinds]
    for cls in classes:
        if cls.needs_classifiers and classifiers is None:
            raise ConfigError(f"the {cls.kind} gate is fitted on the classifiers' scores: fit_gates needs "
                              f"classifiers=(gzsl, zsl) when it fits run.gate {cls.kind}")
    fitting = GateFitting(trained, real_features, real_labels, class_ids, trained.seed if seed is None else seed,
                          semantics, classifiers, unseen_ranking, previous)
    return {cls.kind: cls.fit_on(fitting) for cls in classes}


def fit_gate(kind: str, trained, real_features, real_labels, class_ids, **options) -> DomainGate:
    """One gate: fit_gates([kind], ...)[kind]."""
    return fit_gates([kind], trained, real_features, real_labels, class_ids, **options)[kind]


def gate_from_state(metadata: dict, state: dict[str, torch.Tensor]) -> DomainGate:
    """A saved gate from its metadata ({"kind", "threshold", "temperature"}) and tensors (its state_dict)."""
    gate = gate_class(metadata["kind"]).from_state(state)
    gate.load_state_dict(state)
    gate.threshold = float(metadata["threshold"])
    gate.temperature = float(metadata.get("temperature", 1.0))  # bundles before it: the score's own units
    return gate.eval()
