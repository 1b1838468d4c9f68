"""Open world: a third answer beside seen and unseen, "unknown" (none of the model's classes).

    scorer = fit_open_world(kind, trained, gzsl, real_features, real_labels)    # TRAINING data only
    z = scorer.score(trained, gzsl, features)       # (N,) higher = further from every class in the list
    rule = OpenWorldRule(scorer, threshold, temperature)
    rule.unknown(z), rule.p_unknown(z)             # (N,) bool, (N,) in [0, 1]
    rule = refit_open_world(rule, trained, gzsl, real_features, real_labels)   # after add-class / remove-class

A GZSL model always names one of its classes; this module scores how far an image lies from ALL of them,
seen and unseen alike (not which of the two groups wins: that is the gate, bsegn.generative.gates).

SCORES (raw score r(x), higher = less like any listed class):
    max_softmax  -max_c softmax of the GZSL classifier (Hendrycks & Gimpel 2017), over every class
    energy       -logsumexp of the GZSL classifier's logits over every class (Liu et al. 2020)
    gaussian     log of the smallest Mahalanobis distance of the mFIM feature to a class mean, one shared
                 covariance: seen means from real training features, unseen means from generated ones
    prototype    1 - the largest cosine of the backbone feature with a class mean (real seen, generated unseen)
    knn          1 - the cosine with the k-th nearest of a bank: real seen training features and generated
                 features of every unseen class (Sun et al. 2022's deep nearest neighbours, on the features)
    semantic     1 - the largest cosine of the semantic decoder's reading a_hat with a class vector: a photo
                 of no listed class reads near none of them (needs the decoder, lambda_cyc > 0)
    combined     the sum of the standardised max_softmax, gaussian, knn and semantic scores

Every score is standardised, z = (r - centre) / scale, by its mean and spread over FRESH generated features
of every class in the list: the generator stands in for the known classes, so the units mean the same for
a validation model and a final one, and again after add-class, which needs no photo to refit them. The
threshold on z and p_unknown's temperature are chosen on each run's validation protocol
(bsegn.generative.open_world_choice: val classes withheld from the validation model's list play unknown); a rule
records where its threshold was chosen (`chosen_on`: "validation", or None for a bundle written before train.py
chose it per run, whose threshold is one constant from the flowers); docs/results.md, "Open world".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bsegn.core.errors import ConfigError
from bsegn.generative.gates import GaussianGate

SCORES = ("max_softmax", "energy", "gaussian", "prototype", "knn", "semantic", "combined")
COMBINED_PARTS = ("max_softmax", "gaussian", "knn", "semantic")
KNN_K = 10
BANK_PER_CLASS = 100  # rows of each class in the knn bank (real seen ones subsampled): bounds a bundle's size
REFERENCE_SEED = 21  # generated reference features are drawn apart from the classifier's (seed + 1) and gates'
# The score train.py's rule uses: on bench/open_world.py's validation model of the flowers it caught the most
# withheld-class photos for at most 1 point of known-class H (21.9 %; max_softmax, the best AUROC, caught 7.1 %;
# docs/results.md, "Open world"). Its threshold and p_unknown's temperature are chosen on each run's own
# validation protocol (bsegn.generative.open_world_choice); z is in units of the generated features' spread.
OPEN_WORLD_SCORE = "knn"


def check_score(kind: str) -> str:
    if kind not in SCORES:
        raise ConfigError(f"unknown open-world score {kind!r}; valid scores: {', '.join(SCORES)}")
    return kind


def needs_decoder(kind: str) -> bool:
    """The score reads the semantic decoder (a model trained with lambda_cyc 0 has none)."""
    return kind in ("semantic", "combined")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x.float(), dim=1)


class OpenWorldScore(nn.Module):
    """One open-world score fitted to a model's class list (`class_ids` (C,) buffer: the GZSL classifier's).
    Fitted parts are buffers, so a bundle keeps them in safetensors: gaussian (means (C, D), precision),
    prototypes (C, d), bank (M, d); centre and scale () standardise the raw score (module docstring)."""

    def __init__(self, kind: str, class_ids, dim: int = 0, feature_dim: int = 0, bank_size: int = 0):
        super().__init__()
        self.kind = check_score(kind)
        self.register_buffer("class_ids", torch.as_tensor(class_ids, dtype=torch.long).clone())
        self.register_buffer("centre", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        parts = self.parts_needed()
        if "gaussian" in parts:
            self.gaussian = GaussianGate(dim, len(self.class_ids))
        if "prototype" in parts:
            self.register_buffer("prototypes", torch.zeros(len(self.class_ids), feature_dim))
        if "knn" in parts:
            self.register_buffer("bank", torch.zeros(bank_size, feature_dim))
        if kind == "combined":
            self.register_buffer("part_centre", torch.zeros(len(COMBINED_PARTS)))
            self.register_buffer("part_scale", torch.ones(len(COMBINED_PARTS)))

    def parts_needed(self) -> tuple[str, ...]:
        return COMBINED_PARTS if self.kind == "combined" else (self.kind,)

    @torch.no_grad()
    def raw_parts(self, trained, gzsl, features: torch.Tensor, integrated: torch.Tensor | None = None
                  ) -> dict[str, torch.Tensor]:
        """features (N, d) -> {part: raw score (N,)} for parts_needed()."""
        features = torch.as_tensor(features, dtype=torch.float32).cpu()  # the fitted parts stay on the CPU
        parts = self.parts_needed()
        if integrated is None and {"max_softmax", "energy", "gaussian"} & set(parts):
            integrated = trained.integrate(features)
        out = {}
        if {"max_softmax", "energy"} & set(parts):
            logits = gzsl(integrated.to(trained.device)).float().cpu()
            if "max_softmax" in parts:
                out["max_softmax"] = -torch.softmax(logits, dim=1).max(1).values
            if "energy" in parts:
                out["energy"] = -torch.logsumexp(logits, dim=1)
        if "gaussian" in parts:
            distance = self.gaussian.domain_score(_Integrated(integrated.cpu()))
            out["gaussian"] = distance.clamp_min(1e-6).log()
        if "prototype" in parts:
            out["prototype"] = 1 - (_unit(features) @ self.prototypes.T).max(1).values
        if "knn" in parts:
            similarity = _unit(features) @ self.bank.T
            k = min(KNN_K, similarity.shape[1])
            out["knn"] = 1 - similarity.topk(k, dim=1).values[:, -1]
        if "semantic" in parts:
            out["semantic"] = 1 - decoder_cosines(trained, features, self.class_ids).max(1).values
        return out

    def raw(self, trained, gzsl, features, integrated=None) -> torch.Tensor:
        """(N,) the raw score r(x); combined: the sum of its parts, each standardised by part_centre/scale."""
        parts = self.raw_parts(trained, gzsl, features, integrated)
        if self.kind != "combined":
            return parts[self.kind]
        stacked = torch.stack([parts[name] for name in COMBINED_PARTS], 1)
        return ((stacked - self.part_centre) / self.part_scale).sum(1)

    def score(self, trained, gzsl, features, integrated=None) -> torch.Tensor:
        """(N,) z = (r - centre) / scale: the score in units of its spread over generated known features."""
        self.check_classes(gzsl)
        return (self.raw(trained, gzsl, features, integrated) - self.centre) / self.scale

    def check_classes(self, gzsl) -> None:
        """The score must describe the classifier's class list: a class added later (add-class) that the
        score never saw would look "unknown" to it. refit_open_world brings it up to date."""
        if not torch.equal(self.class_ids.cpu(), gzsl.class_ids.cpu()):
            raise ValueError(f"the open-world score was fitted on classes {self.class_ids.tolist()} but the "
                             f"classifier has {gzsl.class_ids.tolist()}; refit it (refit_open_world)")


class _Integrated:
    """What GaussianGate.domain_score reads: `.integrated` (N, D)."""

    def __init__(self, integrated: torch.Tensor):
        self.integrated = integrated


@torch.no_grad()
def decoder_cosines(trained, features: torch.Tensor, class_ids: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """(N, C): cosine of the decoder's semantic reading a_hat of each feature (N, d) with each class vector."""
    if "decoder" not in trained.parts:
        raise ConfigError("the semantic open-world score reads the semantic decoder, and this model has none "
                          "(generative.lambda_cyc 0); use another score")
    vectors = _unit(trained.semantics[class_ids.cpu()]).to(trained.device)
    out = [(_unit(trained.parts["decoder"](features[i:i + batch_size].to(trained.device))[0]) @ vectors.T).cpu()
           for i in range(0, len(features), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(class_ids))


def _class_rows(trained, class_ids, real_features, real_labels, per_class: int, seed: int):
    """Backbone features (M, d) and labels (M,) standing for every class of class_ids: the real training
    rows of the classes that have them (at most per_class each, a seeded draw), generated ones otherwise."""
    class_ids = torch.as_tensor(class_ids, dtype=torch.long).cpu()
    xs, ys, have = [], [], set()
    if real_features is not None and len(real_features):
        real_features = torch.as_tensor(real_features, dtype=torch.float32).cpu()
        real_labels = torch.as_tensor(real_labels, dtype=torch.long).cpu()
        generator = torch.Generator().manual_seed(seed)
        for c in class_ids.tolist():
            rows = torch.nonzero(real_labels == c).flatten()
            if len(rows):
                rows = rows[torch.randperm(len(rows), generator=generator)[:per_class]]
                xs.append(real_features[rows])
                ys.append(real_labels[rows])
                have.add(c)
    missing = [c for c in class_ids.tolist() if c not in have]
    if missing:
        fake, labels = trained.synthesize(missing, per_class, seed=seed + 1)
        xs.append(fake.cpu())
        ys.append(labels.cpu())
    return torch.cat(xs), torch.cat(ys)


def _class_means(features: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([features[labels == c].mean(0) for c in class_ids.tolist()])


@torch.no_grad()
def fit_open_world(kind: str, trained, gzsl, real_features=None, real_labels=None, *,
                   seed: int | None = None) -> OpenWorldScore:
    """Fit `kind` to the GZSL classifier's class list on TRAINING data only: real seen features (N, d) with
    labels (N,) (rows of other classes ignored; None after the fact: every class is then generated) and
    generated features of every class without real ones; then standardise it on fresh generated features
    of every class (module docstring)."""
    seed = trained.seed if seed is None else seed
    class_ids = gzsl.class_ids.cpu()
    features, labels = _class_rows(trained, class_ids, real_features, real_labels, BANK_PER_CLASS, seed + 31)
    scorer = OpenWorldScore(kind, class_ids, feature_dim=features.shape[1])
    parts = scorer.parts_needed()
    if "gaussian" in parts:
        integrated = trained.integrate(features).cpu()
        scorer.gaussian = GaussianGate(integrated.shape[1], len(class_ids)).fit(integrated, labels)
    if "prototype" in parts:
        scorer.prototypes = _unit(_class_means(_unit(features), labels, class_ids))
    if "knn" in parts:
        scorer.bank = _unit(features)
    return standardise(scorer, trained, gzsl, seed=seed)


@torch.no_grad()
def standardise(scorer: OpenWorldScore, trained, gzsl, *, seed: int) -> OpenWorldScore:
    """centre, scale (and a combined score's part_centre, part_scale) := mean and std of the raw score(s) on
    config.syn_num fresh generated features of every class of the scorer."""
    reference, _ = trained.synthesize(scorer.class_ids, trained.config.syn_num, seed=seed + REFERENCE_SEED)
    reference = reference.cpu()
    if scorer.kind == "combined":
        parts = scorer.raw_parts(trained, gzsl, reference)
        stacked = torch.stack([parts[name] for name in COMBINED_PARTS], 1).double()
        scorer.part_centre = stacked.mean(0).float()
        scorer.part_scale = stacked.std(0).clamp_min(1e-6).float()
    raw = scorer.raw(trained, gzsl, reference).double()
    scorer.centre = raw.mean().float()
    scorer.scale = raw.std().clamp_min(1e-6).float()
    return scorer.eval()


@dataclass(frozen=True, eq=False)
class OpenWorldRule:
    """A fitted score and its decision: unknown iff z > threshold; p_unknown = sigmoid((z - threshold) /
    temperature), 0.5 exactly at the decision. chosen_on: "validation" when the threshold and temperature were
    chosen on the run's own validation protocol (open_world_choice); None: not (a bundle from before that)."""

    scorer: OpenWorldScore
    threshold: float
    temperature: float = 1.0
    chosen_on: str | None = None

    @property
    def validated(self) -> bool:
        return self.chosen_on == "validation"

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"p_unknown's temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "temperature", float(self.temperature))

    def unknown(self, z: torch.Tensor) -> torch.Tensor:
        return z > self.threshold

    def p_unknown(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((z - self.threshold) / self.temperature)

    def metadata(self) -> dict:
        return {"score": self.scorer.kind, "threshold": self.threshold, "temperature": self.temperature,
                "classes": len(self.scorer.class_ids), "chosen_on": self.chosen_on}


def rule_from_state(metadata: dict, state: dict[str, torch.Tensor]) -> OpenWorldRule:
    """A saved rule from its metadata (OpenWorldRule.metadata()) and tensors (the scorer's state_dict)."""
    kind = check_score(metadata["score"])
    dim = state["gaussian.means"].shape[1] if "gaussian.means" in state else 0
    feature_dim = next((state[k].shape[1] for k in ("prototypes", "bank") if k in state), 0)
    bank_size = state["bank"].shape[0] if "bank" in state else 0
    scorer = OpenWorldScore(kind, state["class_ids"], dim, feature_dim, bank_size)
    scorer.load_state_dict(state)
    # a bundle written before the threshold was chosen per run has no chosen_on: its rule is not validated
    return OpenWorldRule(scorer.eval(), metadata["threshold"], metadata.get("temperature", 1.0),
                         metadata.get("chosen_on"))


def refit_open_world(rule: OpenWorldRule, trained, gzsl, real_features=None, real_labels=None) -> OpenWorldRule:
    """The rule fitted again to the classifier's (changed) class list after add-class or remove-class: the
    same score, threshold, temperature and chosen_on, its parts and standardisation refitted (fit_open_world) on the
    real seen training features when given (a bundle's replay features: the fit training made), generated
    ones otherwise. The threshold keeps its meaning because z is standardised on the new list's classes."""
    scorer = fit_open_world(rule.scorer.kind, trained, gzsl, real_features, real_labels)
    return OpenWorldRule(scorer, rule.threshold, rule.temperature, rule.chosen_on)


def open_world_rule(trained, gzsl, real_features, real_labels, choice: dict) -> OpenWorldRule | None:
    """The rule train.py puts in a bundle: choice["score"] (open_world_choice.choose_open_world's record, made
    on the run's validation protocol) fitted to this model on its real seen training features (N, d) / labels
    (N,), with the threshold and temperature chosen there; None (a closed-world bundle) when validation chose no
    threshold (choice["reason"] says why) or the score reads a semantic decoder the model does not have."""
    if choice.get("threshold") is None:
        return None
    kind = choice["score"]
    if needs_decoder(kind) and "decoder" not in trained.parts:
        return None
    return OpenWorldRule(fit_open_world(kind, trained, gzsl, real_features, real_labels), choice["threshold"],
                         choice["temperature"], choice["chosen_on"])
