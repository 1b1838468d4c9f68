"""Config, networks and losses of bsegn.generative: shapes, gradients, hand-computed loss values."""
import math

import pytest
import torch

from bsegn.generative.config import BSeGNConfig, ConfigError
from bsegn.generative.losses import (balance_gap, balance_loss, bidirectional_contrastive, critic_loss, cycle_loss,
                                     gradient_penalty)
from bsegn.generative.metrics import (calibrated_predictions, harmonic_mean, mean_per_class_accuracy, per_class_accuracy,
                                     rank_unseen_with)
from bsegn.generative.networks import (Critic, FeatureGenerator, FeedbackModule, FinalClassifier,
                                       MultilevelIntegration, SemanticDecoder, SemanticEmbedder)


def test_config_round_trip_and_unknown_keys():
    config = BSeGNConfig(epochs=3, mfim_levels=["x", "s"])
    assert BSeGNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="epochz"):
        BSeGNConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="mfim_levels"):
        BSeGNConfig(mfim_levels=["x", "bogus"])
    base = BSeGNConfig.f_clswgan()
    assert not (base.fem or base.cycle or base.cls_loss) and base.mfim_levels == ("x",)
    assert BSeGNConfig(cycle=False).effective_mfim_levels == ("x", "s")
    assert BSeGNConfig().without("mfim_levels").mfim_levels == ("x",)


def test_module_shapes_and_gradients():
    torch.manual_seed(0)
    b, d, k, c = 5, 12, 4, 7
    x, a, z = torch.rand(b, d), torch.rand(b, k), torch.randn(b, k)
    generator = FeatureGenerator(k, k, d, hidden=16)
    critic = Critic(d, k, hidden=16)
    decoder = SemanticDecoder(d, k, hidden=10)
    feedback = FeedbackModule(10, 16)
    embedder = SemanticEmbedder(d, k, hidden=9, embed_dim=6)
    fake = generator(z, a)
    assert fake.shape == (b, d) and (fake >= 0).all()
    a_hat, h = decoder(fake)
    assert a_hat.shape == (b, k) and h.shape == (b, 10)
    fake2 = generator(z, a, feedback=feedback(h))
    assert fake2.shape == (b, d)
    assert critic(x, a).shape == (b,)
    s, _ = embedder.embed(x)
    assert s.shape == (b, 6) and torch.allclose(s.norm(dim=1), torch.ones(b))
    logits = embedder(x, torch.rand(c, k))
    assert logits.shape == (b, c)
    mfim = MultilevelIntegration({"x": d, "h_R": 10, "a_hat": k, "s": 6})
    levels = {"x": x, "h_R": decoder(x)[1], "a_hat": decoder(x)[0], "s": s}
    mfim.fit(levels)
    out = mfim(levels)
    assert out.shape == (b, d + 10 + k + 6) == (b, mfim.output_dim)
    assert torch.allclose(out.mean(0), torch.zeros_like(out[0]), atol=1e-5)
    classifier = FinalClassifier(mfim.output_dim, [3, 4, 6])
    assert classifier(out).shape == (b, 3)
    total = critic(fake2, a).sum() + logits.sum() + classifier(out).sum() + a_hat.sum()
    total.backward()
    for module in (generator, critic, decoder, feedback, embedder, classifier):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


class LinearCritic(torch.nn.Module):
    """D(x, a) = w.x + v.a: its input gradient is w everywhere, so GP = (||w|| - 1)^2 exactly."""

    def __init__(self, w, v):
        super().__init__()
        self.w, self.v = torch.nn.Parameter(w), torch.nn.Parameter(v)

    def forward(self, x, a):
        return x @ self.w + a @ self.v


def test_gradient_penalty_and_critic_loss_hand_computed():
    critic = LinearCritic(torch.tensor([3.0, 4.0]), torch.tensor([1.0]))
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fake = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    a = torch.tensor([[1.0], [2.0]])
    assert gradient_penalty(critic, real, fake, a).item() == pytest.approx(16.0)  # (5 - 1)^2
    loss, parts = critic_loss(critic, real, fake, a, lambda_gp=10.0)
    # E[D(real)] = (3+1 + 4+2)/2 = 5, E[D(fake)] = (0+1 + 7+2)/2 = 5 -> W = 0; loss = 0 + 10*16
    assert parts["wasserstein"].item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(160.0)
    loss.backward()
    assert critic.w.grad is not None


def test_bidirectional_contrastive_hand_computed():
    # two classes, orthogonal prototypes, tau = 1
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embedded = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    f2s, s2f = bidirectional_contrastive(embedded, prototypes, labels, tau=1.0)
    e = math.e
    # each sample: logit 1 for its class, 0 for the other -> -log(e / (e + 1))
    assert f2s.item() == pytest.approx(-math.log(e / (e + 1)), rel=1e-6)
    # class 0 prototype vs features: logits [1, 0, 1]; positives samples 0 and 2: -log(e / (2e + 1)) each
    # class 1 prototype: logits [0, 1, 0]; positive sample 1: -log(e / (e + 2))
    expected = 0.5 * (-math.log(e / (2 * e + 1)) - math.log(e / (e + 2)))
    assert s2f.item() == pytest.approx(expected, rel=1e-6)
    _, none = bidirectional_contrastive(embedded, prototypes, labels, tau=1.0, semantic_to_feature=False)
    assert none.item() == 0.0


def test_balance_loss_hand_computed():
    probs = torch.tensor([[0.7, 0.2, 0.1],    # real seen: max over seen {0,1} = 0.7
                          [0.5, 0.1, 0.4],    # real seen: 0.5
                          [0.6, 0.1, 0.3]])   # fake unseen: max over unseen {2} = 0.3
    loss = balance_loss(probs, torch.tensor([True, True, False]), torch.tensor([True, True, False]))
    assert loss.item() == pytest.approx((0.6 - 0.3) ** 2)
    assert balance_loss(probs, torch.tensor([True, True, False]), torch.tensor([True, True, True])).item() == 0.0
    # One-sided: a seen domain answered more confidently (gap +0.3) is penalised, the reverse is not.
    assert balance_loss(probs, torch.tensor([True, True, False]), torch.tensor([True, True, False]),
                        one_sided=True).item() == pytest.approx((0.6 - 0.3) ** 2)
    assert balance_loss(probs, torch.tensor([False, False, True]), torch.tensor([False, False, True]),
                        one_sided=True).item() == 0.0
    # The signed gap m_S - m_U: positive when the seen domain is answered more confidently.
    assert balance_gap(probs, torch.tensor([True, True, False]), torch.tensor([True, True, False])).item() == \
        pytest.approx(0.6 - 0.3)
    assert balance_gap(probs, torch.tensor([False, False, True]), torch.tensor([False, False, True])).item() == \
        pytest.approx(0.3 - 0.6)  # seen class {2}: row 2 gives 0.3; rows 0, 1 over {0, 1}: 0.7, 0.5


def test_cycle_loss_hand_computed():
    assert cycle_loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, -1.0]])).item() \
        == pytest.approx((3.0 + 2.0) / 2)


def test_per_class_accuracy_and_h_hand_computed():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    acc = per_class_accuracy(predicted, labels, torch.tensor([0, 1, 2]))
    assert acc.tolist() == pytest.approx([0.75, 1.0, 0.5])
    # per-class mean, not overall accuracy (5/7)
    assert mean_per_class_accuracy(predicted, labels, torch.tensor([0, 1, 2])) == pytest.approx(0.75)
    assert harmonic_mean(0.5, 0.75) == pytest.approx(0.6)
    assert harmonic_mean(0.0, 0.0) == 0.0
    scores = torch.tensor([[2.0, 1.5], [1.0, 0.0]])
    seen = torch.tensor([True, False])
    assert calibrated_predictions(scores, seen, 0.0).tolist() == [0, 0]
    assert calibrated_predictions(scores, seen, 0.6).tolist() == [1, 0]


def test_choose_calibration_picks_best_h_gamma():
    from bsegn.generative.evaluation import choose_calibration, evaluate_scores

    class_ids = torch.tensor([0, 1, 2])
    seen = torch.tensor([0, 1])
    # seen images: scores favour the right seen class by margin 1; unseen images (class 2) lose to
    # seen class 0 by 0.5 -> any gamma in (0.5, 1) gives U = S = 100 %.
    seen_scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    unseen_scores = torch.tensor([[1.5, 0.0, 1.0], [1.5, 0.0, 1.0]])
    gamma, curve = choose_calibration(seen_scores, torch.tensor([0, 1]), unseen_scores, torch.tensor([2, 2]),
                                      class_ids, seen, grid=[0.0, 0.75, 3.0])
    assert gamma == 0.75
    assert [row["H"] for row in curve] == pytest.approx([0.0, 100.0, 0.0])
    result = evaluate_scores(seen_scores, torch.tensor([0, 1]), unseen_scores, torch.tensor([2, 2]), class_ids,
                             seen, gamma=0.0)
    assert result["S"] == 100.0 and result["U"] == 0.0 and result["T1"] == 100.0  # T1: among unseen only


def test_rank_unseen_with_keeps_the_domain_decision_and_takes_the_unseen_class_from_the_zsl_scores():
    # columns: seen 0, unseen 1, seen 2, unseen 3
    unseen = torch.tensor([False, True, False, True])
    scores = torch.tensor([[-1.0, -2.0, -3.0, -0.5],    # unseen wins (column 3) before and after
                           [-0.2, -2.5, -3.0, -1.0]])   # seen 0 wins by 0.8 over the best unseen
    zsl = torch.tensor([[-0.1, -2.0],                   # the ZSL classifier prefers unseen column 1
                        [-3.0, -0.3]])
    merged = rank_unseen_with(scores, unseen, zsl)
    assert torch.equal(merged[:, ~unseen], scores[:, ~unseen])
    # unseen column j = best unseen GZSL score + zsl_j - max zsl
    assert merged[0, [1, 3]].tolist() == pytest.approx([-0.5, -0.5 - 1.9])
    assert merged[1, [1, 3]].tolist() == pytest.approx([-1.0 - 2.7, -1.0])
    assert merged.argmax(1).tolist() == [1, 0]
    # calibrated stacking moves the same images to the unseen side as without re-ranking
    for gamma in (0.0, 0.7, 0.9, 5.0):
        before = unseen[calibrated_predictions(scores, ~unseen, gamma)]
        after = calibrated_predictions(merged, ~unseen, gamma)
        assert torch.equal(before, unseen[after])
    assert calibrated_predictions(merged, ~unseen, 0.9).tolist() == [1, 3]
    with pytest.raises(ValueError, match="unseen columns"):
        rank_unseen_with(scores, unseen, zsl[:, :1])


def test_eszsl_closed_form_solves_a_linear_problem():
    from bsegn.generative.eszsl import eszsl_scores, fit_eszsl

    g = torch.Generator().manual_seed(0)
    semantics = torch.randn(12, 6, generator=g)
    mapping = torch.randn(6, 20, generator=g)
    labels = torch.arange(8).repeat_interleave(15)
    features = semantics[labels] @ mapping + 0.1 * torch.randn(len(labels), 20, generator=g)
    projection = fit_eszsl(features, labels, semantics, torch.arange(8), gamma=0.1, lam=0.1)
    assert projection.shape == (20, 6)
    unseen = torch.arange(8, 12)
    test_labels = unseen.repeat_interleave(10)
    test = semantics[test_labels] @ mapping + 0.1 * torch.randn(len(test_labels), 20, generator=g)
    predicted = unseen[eszsl_scores(projection, test, semantics, unseen).argmax(1)]
    assert (predicted == test_labels).float().mean() > 0.5  # chance 0.25; measured 0.6


def test_unit_norm_generator_outputs_lie_on_the_sphere():
    torch.manual_seed(0)
    generator = FeatureGenerator(6, 6, 10, hidden=16, unit_norm=True)
    out = generator(torch.randn(5, 6), torch.rand(5, 6))
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5) and (out >= 0).all()
    loose = FeatureGenerator(6, 6, 10, hidden=16)
    loose.load_state_dict(generator.state_dict())
    raw = loose(torch.randn(5, 6), torch.rand(5, 6))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(5), atol=1e-2)
