"""Config, networks and losses of bsegn.generative: shapes, gradients, hand-computed loss values; the
generator step's draws and its balance reference."""
import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from bsegn.core.errors import ConfigError
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.losses import balance_gap, contrastive_from_logits, critic_loss, cycle_loss
from bsegn.generative.metrics import (
    calibrated_predictions,
    harmonic_mean,
    mean_per_class_accuracy,
    per_class_accuracy,
    rank_unseen_with,
)
from bsegn.generative.networks import (
    Critic,
    FeatureGenerator,
    FinalClassifier,
    MultilevelIntegration,
    SemanticDecoder,
    SemanticEmbedder,
    build_networks,
)


def test_config_round_trip_and_unknown_keys():
    config = BSeGNConfig.from_dict({"epochs": 3, "mfim_levels": ["x", "s"]})
    assert config.mfim_levels == ("x", "s")
    assert BSeGNConfig.from_dict(config.to_dict()) == config
    assert config.replace(lr=1e-3) == BSeGNConfig(epochs=3, mfim_levels=("x", "s"), lr=1e-3)
    with pytest.raises(ConfigError, match="epochz"):
        BSeGNConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="generative.epochs must be an integer"):
        BSeGNConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ConfigError, match="seed"):  # a run option, no longer a generative key
        BSeGNConfig.from_dict({"seed": 1})
    with pytest.raises(Exception):  # frozen
        config.epochs = 4
    assert len(dataclasses.fields(BSeGNConfig)) == 20
    assert all(f.metadata.get("help") for f in dataclasses.fields(BSeGNConfig))


@pytest.mark.parametrize("key, value, says", [
    ("mfim_levels", ["x", "bogus"], "mfim_levels"), ("mfim_levels", ["s"], "include 'x'"),
    ("mfim_levels", [], "mfim_levels"), ("mfim_levels", ["x", "x"], "once"),
    ("hidden", 0, "generative.hidden must be >= 1"), ("n_critic", 0, "n_critic must be >= 1"),
    ("iterations_per_epoch", 0, "iterations_per_epoch must be >= 1"), ("epochs", 0, "epochs must be >= 1"),
    ("classifier_batch_size", 0, ">= 1"), ("lr", 0.0, "generative.lr must be > 0"), ("lr", -1, "got -1"),
    ("tau", 0.0, "tau must be > 0"), ("lambda_s2f", -0.5, "lambda_s2f must be >= 0"),
    ("lambda_bal", -1.0, "lambda_bal"), ("lambda_emb", -1.0, "lambda_emb"), ("lambda_cyc", -1.0, "lambda_cyc"),
    ("lambda_cls", -1.0, "lambda_cls"), ("lambda_gp", -1.0, "lambda_gp"), ("fusion_weight", -1.0, "fusion_weight"),
])
def test_config_check_refuses_impossible_values(key, value, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        BSeGNConfig.from_dict({key: value})
    with pytest.raises(ConfigError, match=re.escape(says)):
        BSeGNConfig().replace(**{key: value})


def test_derived_parts_follow_the_switches():
    full = BSeGNConfig(fusion_weight=1.0, lambda_cls=0.01)
    assert full.uses_decoder and full.uses_fusion and full.effective_mfim_levels == ("x", "h_R", "a_hat", "s")
    no_cycle, no_fem = full.replace(lambda_cyc=0.0), full.replace(fem=False)
    assert no_cycle.effective_mfim_levels == ("x", "s") and not no_cycle.uses_decoder
    assert no_fem.effective_mfim_levels == ("x", "h_R", "a_hat") and not no_fem.uses_fusion
    assert not BSeGNConfig().uses_fusion  # fusion_weight 0 by default


def test_build_networks_builds_only_the_parts_in_use_with_k_sized_noise_and_embedding():
    torch.manual_seed(0)
    parts = build_networks(BSeGNConfig(hidden=16, embedder_hidden=8), feature_dim=12, semantic_dim=5)
    assert list(parts) == ["generator", "critic", "decoder", "embedder"]
    assert parts["generator"].noise_dim == 5 and parts["generator"].hidden.out_features == 16
    assert parts["critic"].hidden.out_features == 16 and parts["decoder"].hidden.out_features == 16
    assert parts["embedder"].output.out_features == 5 and parts["embedder"].hidden.out_features == 8
    assert list(build_networks(BSeGNConfig(hidden=16, lambda_cyc=0.0), 12, 5)) == ["generator", "critic", "embedder"]
    assert list(build_networks(BSeGNConfig(hidden=16, fem=False), 12, 5)) == ["generator", "critic", "decoder"]


def test_fem_logits_are_the_cosine_matrix_divided_by_tau():
    torch.manual_seed(0)
    x, semantics = torch.rand(6, 12), torch.rand(4, 5)
    embedder = build_networks(BSeGNConfig(hidden=16, embedder_hidden=8, tau=0.25), 12, 5)["embedder"]
    s, _ = embedder.embed(x)
    prototypes = embedder.prototypes(semantics)
    cosine = torch.nn.functional.cosine_similarity(s.unsqueeze(1), prototypes.unsqueeze(0), dim=2)
    logits = embedder(x, semantics)
    assert torch.allclose(logits, cosine / 0.25, atol=1e-5)
    assert not torch.allclose(logits, cosine, atol=1e-3)  # tau is really applied


def test_module_shapes_and_gradients():
    torch.manual_seed(0)
    b, d, k, c = 5, 12, 4, 7
    x, a, z = torch.rand(b, d), torch.rand(b, k), torch.randn(b, k)
    generator = FeatureGenerator(k, k, d, hidden=16)
    critic = Critic(d, k, hidden=16)
    decoder = SemanticDecoder(d, k, hidden=10)
    embedder = SemanticEmbedder(d, k, hidden=9)
    fake = generator(z, a)
    assert fake.shape == (b, d) and (fake >= 0).all()
    a_hat, h = decoder(fake)
    assert a_hat.shape == (b, k) and h.shape == (b, 10)
    assert critic(x, a).shape == (b,)
    s, _ = embedder.embed(x)
    assert s.shape == (b, k) and torch.allclose(s.norm(dim=1), torch.ones(b))
    logits = embedder(x, torch.rand(c, k))
    assert logits.shape == (b, c)
    mfim = MultilevelIntegration({"x": d, "h_R": 10, "a_hat": k, "s": k})
    levels = {"x": x, "h_R": decoder(x)[1], "a_hat": decoder(x)[0], "s": s}
    mfim.fit(levels)
    out = mfim(levels)
    assert out.shape == (b, d + 10 + k + k) == (b, mfim.output_dim)
    assert torch.allclose(out.mean(0), torch.zeros_like(out[0]), atol=1e-5)
    classifier = FinalClassifier(mfim.output_dim, [3, 4, 6])
    assert classifier(out).shape == (b, 3)
    total = critic(fake, a).sum() + logits.sum() + classifier(out).sum() + a_hat.sum()
    total.backward()
    for module in (generator, critic, decoder, embedder, classifier):
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
    loss, parts = critic_loss(critic, real, fake, a, lambda_gp=10.0)
    assert parts["gp"].item() == pytest.approx(16.0)  # the gradient is (3, 4) everywhere: (5 - 1)^2
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
    f2s, s2f = contrastive_from_logits(embedded @ prototypes.t() / 1.0, labels)
    e = math.e
    # each sample: logit 1 for its class, 0 for the other -> -log(e / (e + 1))
    assert f2s.item() == pytest.approx(-math.log(e / (e + 1)), rel=1e-6)
    # class 0 prototype vs features: logits [1, 0, 1]; positives samples 0 and 2: -log(e / (2e + 1)) each
    # class 1 prototype: logits [0, 1, 0]; positive sample 1: -log(e / (e + 2))
    expected = 0.5 * (-math.log(e / (2 * e + 1)) - math.log(e / (e + 2)))
    assert s2f.item() == pytest.approx(expected, rel=1e-6)
    _, none = contrastive_from_logits(embedded @ prototypes.t(), labels, semantic_to_feature=False)
    assert none.item() == 0.0


def test_balance_loss_hand_computed():
    probs = torch.tensor([[0.7, 0.2, 0.1],    # real seen: max over seen {0,1} = 0.7
                          [0.5, 0.1, 0.4],    # real seen: 0.5
                          [0.6, 0.1, 0.3]])   # fake unseen: max over unseen {2} = 0.3
    # one domain only: no gap to balance
    assert balance_gap(probs, torch.tensor([True, True, False]), torch.tensor([True, True, True])).item() == 0.0
    # The signed gap m_S - m_U (the balance loss is its square, so a seen domain answered LESS confidently is
    # penalised as well): positive when the seen domain is answered more confidently.
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


def test_stacking_threshold_is_the_best_h_gamma_of_the_grid():
    from bsegn.generative.evaluation import CALIBRATION_GRID, evaluate_scores
    from bsegn.generative.gate_evaluation import choose_threshold
    from bsegn.generative.gates import GateInputs, StackingGate

    # the grid's values: 0.5-nat steps from 1 to 15, finer below 1, coarser above 15
    assert CALIBRATION_GRID[:6] == (0.0, 0.1, 0.2, 0.3, 0.5, 0.75) and CALIBRATION_GRID[-5:] == (16.0, 18.0, 20.0, 25.0, 30.0)
    assert CALIBRATION_GRID[6:-5] == tuple(x / 2 for x in range(2, 31)) and len(CALIBRATION_GRID) == 40

    class_ids = torch.tensor([0, 1, 2])
    seen = torch.tensor([0, 1])
    seen_columns = torch.tensor([True, True, False])
    # seen images: scores favour the right seen class by margin 1; unseen images (class 2) lose to
    # seen class 0 by 0.5 -> gamma in (0.5, 2) gives U = S = 100 % (0.75 to 1.5 on the grid): the
    # smallest correction, 0.75, is chosen.
    seen_scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    unseen_scores = torch.tensor([[1.5, 0.0, 1.0], [1.5, 0.0, 1.0]])
    threshold, curve = choose_threshold(StackingGate(), (GateInputs(seen_scores, seen_columns), torch.tensor([0, 1])),
                                        (GateInputs(unseen_scores, seen_columns), torch.tensor([2, 2])), class_ids, seen)
    assert threshold == -0.75
    assert [row["threshold"] for row in curve] == [-gamma for gamma in CALIBRATION_GRID]
    h = [row["H"] for row in curve]
    assert h[:9] == pytest.approx([0.0] * 5 + [100.0] * 4) and h[10:] == pytest.approx([0.0] * 30)  # 2.0: a tie
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


# --- the generator step: its draws and its balance reference (generative/steps.py) ----------------------
# Issue 13 measured the alternative (fresh draws for the generator step, m_S over the REAL seen batch in
# both steps) on the AwA1-Lampert validation protocol: it lost (docs/results.md, "Balance loss: one
# reference, fresh generator samples"). These tests pin the form that won, so that changing it is deliberate.

def _trainer_and_batch(**changes):
    from test_generative_training import TINY, gaussian_benchmark, make_trainer

    trainer = make_trainer(gaussian_benchmark(), BSeGNConfig(epochs=1, iterations_per_epoch=1, **{**TINY, **changes}))
    draws = trainer.draw(torch.Generator().manual_seed(3))
    index = draws["batches"][-1]
    return trainer, draws, trainer.features[index], trainer.labels[index]


def test_generator_step_takes_the_last_critic_noise_and_the_fem_steps_unseen_draws():
    trainer, draws, _, labels = _trainer_and_batch()
    calls = []
    original = trainer._generate

    def recording(noise, semantics, *, grad):
        calls.append((noise.clone(), semantics.clone(), grad))
        return original(noise, semantics, grad=grad)

    trainer._generate = recording
    trainer.iteration(torch.Generator().manual_seed(3))  # the same draws as `draws`
    (g_noise, g_semantics), = [(noise, semantics) for noise, semantics, grad in calls if grad]
    b, unseen = len(labels), trainer.unseen_classes[draws["unseen_pick"]]
    assert torch.equal(g_noise, torch.cat([draws["noise"][-1], draws["noise_unseen"]]))
    assert torch.equal(g_semantics, torch.cat([trainer.semantics[labels], trainer.semantics[unseen]]))
    fem_noise, fem_semantics, _ = calls[-2]  # the FEM step's fake unseen features: the same conditions
    assert torch.equal(fem_noise, g_noise[b:]) and torch.equal(fem_semantics, g_semantics[b:])


def test_every_draw_is_global_and_each_rank_keeps_its_slice():
    from types import SimpleNamespace

    trainer, single, _, _ = _trainer_and_batch()
    ranks = []
    for rank in range(2):
        trainer.accelerator = SimpleNamespace(num_processes=2, process_index=rank, device=torch.device("cpu"))
        ranks.append(trainer.draw(torch.Generator().manual_seed(3)))
    for key, value in single.items():
        dim = 1 if value.dim() > 1 and value.shape[0] == trainer.config.n_critic else 0
        assert torch.equal(torch.cat([r[key] for r in ranks], dim), value), key


def test_generator_step_balance_and_bicon_are_on_gs_fake_seen_and_fake_unseen_features():
    trainer, draws, real, labels = _trainer_and_batch(lambda_bal=0.5)
    _, logs = trainer.generator_loss(draws, labels)
    unseen = trainer.unseen_classes[draws["unseen_pick"]]
    with torch.no_grad():
        fake = trainer._generate(torch.cat([draws["noise"][-1], draws["noise_unseen"]]),
                                 torch.cat([trainer.semantics[labels], trainer.semantics[unseen]]), grad=False)
        embedder, b = trainer.prepared["embedder"], len(labels)
        logits = embedder(fake, trainer.semantics)
        seen_cols = trainer.seen_class_mask
        m_s_fake = torch.softmax(logits[:b], 1)[:, seen_cols].amax(1).mean()
        m_s_real = torch.softmax(embedder(real, trainer.semantics), 1)[:, seen_cols].amax(1).mean()
        m_u = torch.softmax(logits[b:], 1)[:, ~seen_cols].amax(1).mean()
    gap = float(m_s_fake - m_u)
    assert logs["generator_balance_gap"] == pytest.approx(gap, abs=1e-6)
    assert abs(float(m_s_real - m_u) - gap) > 1e-3  # the real-seen reference would be told apart
    f2s, s2f = contrastive_from_logits(logits, torch.cat([labels, unseen]))  # logits = s.p_c / tau
    assert logs["generator_fem"] == pytest.approx(float(f2s + s2f + 0.5 * gap ** 2), abs=1e-5)


def test_adam_matches_torch_optim_adam_to_the_bit():
    """generative.adam.Adam stands in for torch.optim.Adam in the final classifier and the learned gate:
    the same parameters after many steps (betas as those fits use them), a parameter without a gradient
    left alone, and the step counts per parameter as torch keeps them."""
    from bsegn.generative.adam import Adam

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 3))

    ours, theirs = model(), model()
    unused = nn.Parameter(torch.ones(4))  # never gets a gradient
    mine = Adam(list(ours.parameters()) + [unused], lr=1e-3, betas=(0.5, 0.999))
    reference = torch.optim.Adam(theirs.parameters(), lr=1e-3, betas=(0.5, 0.999))
    data = torch.Generator().manual_seed(1)
    for step in range(60):
        x, y = torch.randn(32, 7, generator=data), torch.randint(0, 3, (32,), generator=data)
        # the last layer's gradient is withheld on a few steps: per-parameter step counts then differ
        for net, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if step % 7 == 3:
                net[2].weight.grad = None
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(unused, torch.ones(4))
    assert not torch.equal(ours[0].weight, model()[0].weight)  # it did train
    with pytest.raises(ValueError, match="no parameter"):
        Adam([torch.zeros(2)], lr=1e-3)
