"""The final classifier: a linear softmax on mFIM features of real seen + synthetic unseen features.

    classifier = fit_final_classifier(trained, real_features, real_labels, class_ids, semantics=None, config=None)
    log_probs = class_log_probs(trained, classifier, features)     # (N, K) over classifier.class_ids
    scores = gzsl_scores(trained, gzsl, zsl, features, unseen_ranking="gzsl")   # (N, C)

GZSL: class_ids = all classes, real seen trainval features + config.syn_num synthetic features per
class that has no real feature. ZSL: class_ids = unseen classes, real_features None (synthetic only).
A FIXED number of epochs (config.classifier_epochs): never an epoch picked on test data.
"""
from __future__ import annotations

import torch
from torch import nn

from bsegn.generative.adam import Adam
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.metrics import rank_unseen_with
from bsegn.generative.networks import FinalClassifier

CLASSIFIER_LR = 1e-3  # Adam, betas (0.5, 0.999): docs/method.md's final classifier
UNSEEN_RANKINGS = ("gzsl", "zsl")


def fit_final_classifier(trained, real_features, real_labels, class_ids, semantics=None,
                         config: BSeGNConfig | None = None, *, seed: int | None = None) -> FinalClassifier:
    """Train a FinalClassifier over `class_ids` (K,) on mFIM features.

    Args:
        trained: TrainedBSeGN.
        real_features: (N, d) real features (rows whose label is not in class_ids are ignored) or None.
        real_labels: (N,) class ids, or None.
        class_ids: the label space, benchmark class ids (rows of the semantics table).
        semantics: (C, k) table to synthesise from (default trained.semantics; pass it for new classes).
        config: hyperparameters (default trained.config): syn_num, classifier_epochs, classifier_batch_size.
        seed: the draws of the synthetic features and of training (default trained.seed).
    Returns the classifier (on trained's device, eval mode), its `class_ids` buffer set.
    """
    config = config or trained.config
    seed = trained.seed if seed is None else seed
    device = trained.device
    class_ids = torch.as_tensor(class_ids, dtype=torch.long).cpu()
    column = {int(c): j for j, c in enumerate(class_ids.tolist())}
    parts_x, parts_y = [], []
    have_real = set()
    if real_features is not None and len(real_features):
        real_features = torch.as_tensor(real_features, dtype=torch.float32)
        real_labels = torch.as_tensor(real_labels, dtype=torch.long).cpu()
        keep = torch.isin(real_labels, class_ids)
        parts_x.append(trained.integrate(real_features[keep]))
        parts_y.append(real_labels[keep])
        have_real = set(real_labels[keep].tolist())
    to_synthesise = [c for c in class_ids.tolist() if c not in have_real]
    if to_synthesise:
        fake, fake_labels = trained.synthesize(to_synthesise, config.syn_num, semantics=semantics,
                                               seed=seed + 1)
        parts_x.append(trained.integrate(fake))
        parts_y.append(fake_labels.cpu())
    x = torch.cat(parts_x).to(device)
    y = torch.tensor([column[int(c)] for c in torch.cat(parts_y).tolist()], dtype=torch.long, device=device)

    generator = torch.Generator().manual_seed(seed + 2)
    torch.manual_seed(seed + 3)
    classifier = FinalClassifier(x.shape[1], class_ids).to(device)
    optimizer = Adam(classifier.parameters(), lr=CLASSIFIER_LR, betas=(0.5, 0.999))
    batch = config.classifier_batch_size
    classifier.train()
    for _ in range(config.classifier_epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            loss = nn.functional.cross_entropy(classifier(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def class_log_probs(trained, classifier: FinalClassifier, features, *, fusion: bool | None = None,
                    batch_size: int = 4096, integrated: torch.Tensor | None = None) -> torch.Tensor:
    """features (N, d) -> (N, K) log-probabilities over classifier.class_ids; with fusion (default
    config.uses_fusion) the FEM's log-probabilities over the same classes are added with weight
    config.fusion_weight. integrated: trained.integrate(features) when the caller has it (saves the pass)."""
    features = torch.as_tensor(features, dtype=torch.float32)
    fusion = trained.config.uses_fusion if fusion is None else fusion
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size].to(trained.device)
        if integrated is None:
            mfim = trained.integrate(chunk)
        else:
            mfim = integrated[start:start + batch_size].to(trained.device)
        scores = torch.log_softmax(classifier(mfim), dim=1)
        if fusion:
            scores = scores + trained.config.fusion_weight * trained.fem_log_probs(chunk, classifier.class_ids)
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, len(classifier.class_ids), device=trained.device)


@torch.no_grad()
def gzsl_scores(trained, gzsl: FinalClassifier, zsl: FinalClassifier | None, features, *, integrated=None,
                unseen_ranking: str = "gzsl", zsl_scores: torch.Tensor | None = None) -> torch.Tensor:
    """The GZSL scores (N, C) over gzsl.class_ids that predictions and calibration use: class_log_probs of
    the GZSL classifier, with the unseen columns re-ranked by the ZSL classifier when unseen_ranking is
    "zsl" (which unseen class wins is then the ZSL classifier's choice; the seen-vs-unseen decision, and
    calibrated stacking's gamma, stay the GZSL classifier's: metrics.rank_unseen_with).
    zsl_scores: class_log_probs(trained, zsl, features) when the caller has them already (saves a pass);
    integrated: trained.integrate(features), likewise."""
    if unseen_ranking not in UNSEEN_RANKINGS:
        raise ValueError(f"unseen_ranking {unseen_ranking!r}: expected one of {', '.join(UNSEEN_RANKINGS)}")
    scores = class_log_probs(trained, gzsl, features, integrated=integrated)
    if unseen_ranking != "zsl":
        return scores
    if zsl is None:
        raise ValueError("unseen_ranking 'zsl' needs the ZSL (unseen-only) classifier; none was given")
    unseen_columns = ~torch.isin(gzsl.class_ids.cpu(), trained.seen_classes)
    unseen_ids = gzsl.class_ids.cpu()[unseen_columns]
    position = {int(c): j for j, c in enumerate(zsl.class_ids.cpu().tolist())}
    if sorted(position) != sorted(unseen_ids.tolist()):
        raise ValueError(f"the ZSL classifier's classes {sorted(position)} differ from the GZSL classifier's "
                         f"unseen classes {unseen_ids.tolist()}; refit both (they must cover the same classes)")
    if zsl_scores is None:
        zsl_scores = class_log_probs(trained, zsl, features, integrated=integrated)
    within = zsl_scores.to(scores.device)[:, [position[int(c)] for c in unseen_ids.tolist()]]
    return rank_unseen_with(scores, unseen_columns.to(scores.device), within)
