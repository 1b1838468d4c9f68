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

The fitted parts (Gaussian means and precision, the MLP) are buffers/parameters of the gate module, so a
bundle stores them in safetensors; kind and threshold go to JSON (`gate.metadata()`, `gate_from_state`).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from bsegn.core.errors import ConfigError
from bsegn.generative.adam import Adam

GATES = ("stacking", "max_softmax", "energy", "gaussian", "learned", "cosmo", "semantic", "combined")
LEARNED_GATE_HIDDEN = 256
LEARNED_GATE_EPOCHS = 20
LEARNED_GATE_LR = 1e-3
LEARNED_GATE_BATCH = 256
GAUSSIAN_SHRINKAGE = 0.1  # covariance shrunk towards its diagonal mean: mFIM features outnumber seen images
# combined standardises its log gaussian distance on held-out distances, from Gaussians fitted on the other folds
GAUSSIAN_FOLDS = 2
THRESHOLD_CANDIDATES = 201  # quantiles of the validation scores the threshold is chosen among


def check_gate(kind: str) -> str:
    if kind not in GATES:
        raise ConfigError(f"unknown gate {kind!r}; valid gates: {', '.join(GATES)} (run.gate)")
    return kind


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
    return kind in ("gaussian", "learned", "cosmo", "combined")


def needs_semantic(kind: str, trained) -> bool:
    """The semantic margin is read by the semantic gate, and by combined when the model has a decoder."""
    return kind == "semantic" or (kind == "combined" and "decoder" in trained.parts)


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


def _split_max(scores: torch.Tensor, seen_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return scores[:, seen_columns].max(1).values, scores[:, ~seen_columns].max(1).values


class DomainGate(nn.Module):
    """One gate: `domain_score` (N,) and the decision `score > threshold`. Subclasses fit their parts."""

    kind = "base"

    def __init__(self):
        super().__init__()
        self.threshold = 0.0
        self.temperature = 1.0  # p_unseen's scale: fitted where the threshold is chosen (gate_evaluation)

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


class StackingGate(DomainGate):
    kind = "stacking"

    def domain_score(self, inputs):
        best_seen, best_unseen = _split_max(inputs.scores, inputs.seen_columns)
        return best_unseen - best_seen

    def predict(self, inputs, threshold=None, score=None):
        # Bit for bit what calibrated stacking has always computed: argmax of scores - gamma on seen columns.
        from bsegn.generative.metrics import calibrated_predictions

        gamma = -(self.threshold if threshold is None else threshold)
        return calibrated_predictions(inputs.scores, inputs.seen_columns, gamma)


class SemanticGate(DomainGate):
    """The semantic margin (see semantic_margin): nothing to fit."""

    kind = "semantic"

    def domain_score(self, inputs):
        if inputs.semantic_margin is None:
            raise ValueError("the semantic gate needs GateInputs.semantic_margin (gate_inputs computes it)")
        return inputs.semantic_margin


class MaxSoftmaxGate(DomainGate):
    kind = "max_softmax"

    def domain_score(self, inputs):
        return -torch.softmax(inputs.scores[:, inputs.seen_columns], dim=1).max(1).values


class EnergyGate(DomainGate):
    kind = "energy"

    def domain_score(self, inputs):
        return -torch.logsumexp(inputs.scores[:, inputs.seen_columns], dim=1)


class GaussianGate(DomainGate):
    """Class means (S, D) of real seen mFIM features and one shared precision matrix (D, D)."""

    kind = "gaussian"

    def __init__(self, dim: int, num_seen: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_seen, dim))
        self.register_buffer("precision", torch.eye(dim))

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


class LearnedGate(DomainGate):
    """A 2-layer MLP (D -> hidden -> 1) whose output is logit p(unseen | x)."""

    kind = "learned"

    def __init__(self, dim: int, hidden: int = LEARNED_GATE_HIDDEN):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

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


class CosmoGate(LearnedGate):
    kind = "cosmo"

    def domain_score(self, inputs):
        seen = torch.log_softmax(inputs.scores[:, inputs.seen_columns], dim=1).max(1).values
        unseen = torch.log_softmax(inputs.scores[:, ~inputs.seen_columns], dim=1).max(1).values
        return self.logit(inputs.integrated) + unseen - seen


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


class CombinedGate(DomainGate):
    """Standardised stacking margin + log gaussian distance + learned logit (+ semantic margin, when the
    model has a semantic decoder). Parts: `gaussian`, `learned`; buffers centre and scale (3 or 4,): each
    score's mean and standard deviation on real seen training features, the log gaussian distance's on
    cross-fitted held-out ones (cross_fitted_log_distances; bundles written before keep their own)."""

    kind = "combined"

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


def _empty_gate(kind: str, dim: int = 0, num_seen: int = 0, hidden: int = LEARNED_GATE_HIDDEN,
                num_parts: int = 4) -> DomainGate:
    check_gate(kind)
    with torch.random.fork_rng(devices=[]):  # building layers draws from the global RNG: leave it alone
        if kind == "combined":
            return CombinedGate(dim, num_seen, hidden, num_parts)
        if kind == "gaussian":
            return GaussianGate(dim, num_seen)
        if kind in ("learned", "cosmo"):
            return (LearnedGate if kind == "learned" else CosmoGate)(dim, hidden)
        return {"stacking": StackingGate, "max_softmax": MaxSoftmaxGate, "energy": EnergyGate,
                "semantic": SemanticGate}[kind]()


@torch.no_grad()
def fit_gates(kinds, trained, real_features, real_labels, class_ids, *, seed: int | None = None,
              semantics=None, classifiers=None, unseen_ranking: str = "gzsl",
              seen_parts_of: "CombinedGate | None" = None) -> dict[str, DomainGate]:
    """Fit gates on TRAINING data only: real seen features (N, d) with labels (N,) (rows of classes outside
    trained.seen_classes are ignored) and, for the learned gates, synthetic features of every class in
    class_ids (config.syn_num each; `semantics` (C, k) when the classes are not all in trained.semantics).
    cosmo shares the learned gate's network (fitted once). combined is made of the fitted gaussian and
    learned gates and standardised on the real features' scores under `classifiers` (gzsl, zsl), which it
    needs. seen_parts_of: a fitted combined gate whose parts that read the real seen features only (the
    Gaussian, and its log distance's centre and scale) are re-used instead of refitted: adding unseen classes
    (add-class) does not change them, and the three covariance fits are most of a refit's cost after the
    learned network. Thresholds are 0 until chosen or set. Returns {kind: gate} in the order asked."""
    kinds = [check_gate(kind) for kind in kinds]
    if "combined" in kinds and classifiers is None:
        raise ConfigError("the combined gate is standardised on the classifiers' scores: fit_gates needs "
                          "classifiers=(gzsl, zsl) when it fits run.gate combined")
    seed = trained.seed if seed is None else seed
    gates: dict[str, DomainGate] = {kind: _empty_gate(kind) for kind in kinds if not needs_integrated(kind)}
    if len(gates) == len(kinds):
        return {kind: gates[kind] for kind in kinds}
    labels = torch.as_tensor(real_labels, dtype=torch.long).cpu()
    keep = torch.isin(labels, trained.seen_classes)
    real_seen = torch.as_tensor(real_features, dtype=torch.float32)[keep]
    real = trained.integrate(real_seen).cpu()
    if seen_parts_of is not None and "gaussian" not in kinds:
        gates["gaussian"] = seen_parts_of.gaussian
    elif "gaussian" in kinds or "combined" in kinds:
        gates["gaussian"] = GaussianGate(real.shape[1], len(torch.unique(labels[keep]))).fit(real, labels[keep])
    learned_kinds = [kind for kind in kinds if kind in ("learned", "cosmo", "combined")]
    if learned_kinds:
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).cpu()
        seen_ids = class_ids[torch.isin(class_ids, trained.seen_classes)]
        unseen_ids = class_ids[~torch.isin(class_ids, trained.seen_classes)]
        syn_num = trained.config.syn_num
        # Seeds apart from the final classifiers' (seed + 1): the gate sees other synthetic draws.
        fake_seen, _ = trained.synthesize(seen_ids, syn_num, semantics=semantics, seed=seed + 11)
        fake_unseen, _ = trained.synthesize(unseen_ids, syn_num, semantics=semantics, seed=seed + 12)
        fitted = _empty_gate("learned", real.shape[1]).fit(
            [real, trained.integrate(fake_seen).cpu(), trained.integrate(fake_unseen).cpu()], [0.0, 0.0, 1.0],
            seed=seed + 13)
        for kind in learned_kinds:
            if kind != "combined":
                gate = _empty_gate(kind, real.shape[1])
                gate.load_state_dict(fitted.state_dict())
                gates[kind] = gate.eval()
        if "combined" in kinds:
            gate = _empty_gate("combined", real.shape[1], gates["gaussian"].means.shape[0],
                               num_parts=4 if needs_semantic("combined", trained) else 3)
            gate.gaussian.load_state_dict(gates["gaussian"].state_dict())
            gate.learned.load_state_dict(fitted.state_dict())
            training = gate_inputs(trained, *classifiers, real_seen, unseen_ranking=unseen_ranking,
                                   kinds=["combined"], integrated=real)
            if seen_parts_of is None:
                held_out = cross_fitted_log_distances(real, labels[keep], seed=seed + 14).double()
                gaussian_centre_scale = (held_out.mean(), held_out.std())
            else:
                gaussian_centre_scale = (seen_parts_of.centre[1], seen_parts_of.scale[1])
            gates["combined"] = gate.standardise_on(training, gaussian_centre_scale).eval()
    return {kind: gates[kind] for kind in kinds}


def fit_gate(kind: str, trained, real_features, real_labels, class_ids, **options) -> DomainGate:
    """One gate: fit_gates([kind], ...)[kind]."""
    return fit_gates([kind], trained, real_features, real_labels, class_ids, **options)[kind]


def gate_from_state(metadata: dict, state: dict[str, torch.Tensor]) -> DomainGate:
    """A saved gate from its metadata ({"kind", "threshold", "temperature"}) and tensors (its state_dict)."""
    kind = check_gate(metadata["kind"])
    dim = num_seen = 0
    hidden, num_parts = LEARNED_GATE_HIDDEN, 4
    if kind == "gaussian":
        num_seen, dim = state["means"].shape
    elif kind in ("learned", "cosmo"):
        hidden, dim = state["network.0.weight"].shape
    elif kind == "combined":
        num_seen, dim = state["gaussian.means"].shape
        hidden = state["learned.network.0.weight"].shape[0]
        num_parts = state["centre"].shape[0]  # 3: a model without a semantic decoder, or a bundle before it
    gate = _empty_gate(kind, dim, num_seen, hidden, num_parts)
    gate.load_state_dict(state)
    gate.threshold = float(metadata["threshold"])
    gate.temperature = float(metadata.get("temperature", 1.0))  # bundles before it: the score's own units
    return gate.eval()
