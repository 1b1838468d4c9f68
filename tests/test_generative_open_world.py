"""The open-world answer (generative/open_world.py, generative/open_world_choice.py): scores that rise away
from every listed class, their standardisation on generated features, the rule's decision and p_unknown, its round trip,
its refit after add-class, and the threshold choice by hand-made cases."""
import pytest
import torch

from bsegn.generative.open_world import (
    BANK_PER_CLASS,
    REFERENCE_SEED,
    SCORES,
    OpenWorldRule,
    fit_open_world,
    refit_open_world,
    rule_from_state,
)
from bsegn.generative.open_world_choice import (
    choose_open_world_threshold,
    fit_unknown_temperature,
    known_accuracy,
    open_world_metrics,
)

# --- the rule's bookkeeping, by hand ---------------------------------------------------------------


def test_known_accuracy_counts_an_image_answered_unknown_as_wrong():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # 0, 1 seen; 2 unseen
    correct = torch.tensor([True, True, True, False, True, True])
    off = known_accuracy(correct, labels, [0, 1], [2])
    assert off["S"] == pytest.approx(75.0) and off["U"] == pytest.approx(100.0)
    on = known_accuracy(correct, labels, [0, 1], [2], rejected=torch.tensor([True, False, False, False, False, True]))
    assert on["S"] == pytest.approx(50.0) and on["U"] == pytest.approx(50.0) and on["H"] == pytest.approx(50.0)


def test_threshold_is_the_lowest_that_keeps_within_the_h_budget():
    # 20 known images, all right, 10 per class (0 seen, 1 unseen); 10 unknowns scoring 5..14
    labels = torch.tensor([0] * 10 + [1] * 10)
    correct = torch.ones(20, dtype=torch.bool)
    z_known = torch.cat([torch.linspace(-3, 0, 19), torch.tensor([4.0])])  # one known image scores high
    z_unknown = torch.arange(5.0, 15.0)
    threshold, curve = choose_open_world_threshold(z_known, z_unknown, correct, labels, [0], [1], budget=1.0)
    # rejecting the image at 4 costs U 10 points: the threshold must stay at or above it, and catches all unknowns
    assert threshold >= 4.0 and threshold < 5.0
    assert open_world_metrics(z_known, z_unknown, threshold, correct, labels, [0], [1])["caught"] == 100.0
    loose, _ = choose_open_world_threshold(z_known, z_unknown, correct, labels, [0], [1], budget=10.0)
    assert loose < 4.0  # a budget that allows that one loss goes lower
    assert all(row["H_drop"] >= 0 for row in curve)


def test_no_threshold_when_every_rejection_costs_more_than_the_budget():
    labels, correct = torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool)
    threshold, _ = choose_open_world_threshold(torch.tensor([9.0, 10.0]), torch.tensor([1.0, 2.0]), correct,
                                               labels, [0], [1], budget=1.0)
    assert threshold is None
    metrics = open_world_metrics(torch.tensor([9.0, 10.0]), torch.tensor([1.0, 2.0]), None, correct, labels, [0], [1])
    assert metrics["caught"] == 0.0 and metrics["H_drop"] == 0.0 and metrics["auroc"] == 0.0


def test_p_unknown_is_one_half_at_the_threshold_and_the_temperature_is_positive():
    rule = OpenWorldRule(scorer=None, threshold=2.0, temperature=0.5)
    z = torch.tensor([1.0, 2.0, 3.0])
    assert rule.unknown(z).tolist() == [False, False, True]
    assert rule.p_unknown(z).tolist() == pytest.approx([torch.sigmoid(torch.tensor(-2.0)).item(), 0.5,
                                                        torch.sigmoid(torch.tensor(2.0)).item()])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        OpenWorldRule(scorer=None, threshold=0.0, temperature=0.0)
    separated = fit_unknown_temperature(torch.tensor([-2.0, -1.0]), torch.tensor([1.0, 2.0]), 0.0)
    assert separated > 0


# --- on a trained model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_world_model():
    """A tiny BSeGN on the gaussian benchmark with 20 seen and 3 unseen classes; classes 23 and 24 are in no
    list (their images play unknown), and a far-off blob plays a photo of something else entirely."""
    from test_generative_training import TINY, gaussian_benchmark

    from bsegn.generative.classifier import fit_final_classifier
    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.model import train_bsegn

    data = gaussian_benchmark(seed=3)
    config = BSeGNConfig.from_dict({**TINY, "epochs": 3, "syn_num": 30, "classifier_epochs": 5})
    unseen = torch.tensor([20, 21, 22])
    trained = train_bsegn(*data["train"], data["semantics"], data["seen"], unseen, config, seed=0,
                          show_progress=False)
    gzsl = fit_final_classifier(trained, *data["train"], torch.cat([data["seen"], unseen]))
    x_unseen, y_unseen = data["test_unseen"]
    known_x = torch.cat([data["test_seen"][0], x_unseen[y_unseen < 23]])
    unknown_x = x_unseen[y_unseen >= 23]
    far = 40 + torch.rand(10, known_x.shape[1], generator=torch.Generator().manual_seed(0))
    return trained, gzsl, data, known_x, unknown_x, far


@pytest.mark.parametrize("kind", SCORES)
def test_every_score_puts_a_photo_of_something_else_above_every_known_photo(open_world_model, kind):
    from bsegn.generative.metrics import auroc

    trained, gzsl, data, known_x, _, far = open_world_model
    scorer = fit_open_world(kind, trained, gzsl, *data["train"])
    z_known, z_far = scorer.score(trained, gzsl, known_x), scorer.score(trained, gzsl, far)
    assert z_known.shape == (len(known_x),) and torch.isfinite(z_known).all()
    if kind not in ("max_softmax", "energy", "semantic"):  # the distances must see it; the others may not
        assert auroc(z_known, z_far) == 1.0


def test_scores_are_standardised_on_fresh_generated_features_of_every_class(open_world_model):
    trained, gzsl, data, *_ = open_world_model
    scorer = fit_open_world("knn", trained, gzsl, *data["train"])
    reference, _ = trained.synthesize(gzsl.class_ids, trained.config.syn_num, seed=trained.seed + REFERENCE_SEED)
    z = scorer.score(trained, gzsl, reference)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4) and float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_the_knn_bank_holds_real_seen_rows_and_generated_unseen_rows(open_world_model):
    trained, gzsl, data, *_ = open_world_model
    scorer = fit_open_world("knn", trained, gzsl, *data["train"])
    per_class = min(BANK_PER_CLASS, 20)  # the benchmark has 20 training images per seen class
    assert scorer.bank.shape == (20 * per_class + 3 * BANK_PER_CLASS, data["train"][0].shape[1])
    assert torch.allclose(scorer.bank.norm(dim=1), torch.ones(len(scorer.bank)), atol=1e-5)


def test_a_saved_rule_loads_back_to_the_same_scores(open_world_model):
    trained, gzsl, data, known_x, *_ = open_world_model
    for kind in ("combined", "prototype"):
        rule = OpenWorldRule(fit_open_world(kind, trained, gzsl, *data["train"]), 1.5, 0.7)
        again = rule_from_state(rule.metadata(), rule.scorer.state_dict())
        assert again.metadata() == rule.metadata()
        assert torch.equal(again.scorer.score(trained, gzsl, known_x), rule.scorer.score(trained, gzsl, known_x))


def test_a_class_added_later_is_refused_until_the_rule_is_refitted_then_it_is_known(open_world_model):
    import copy

    from bsegn.generative.classifier import fit_final_classifier

    trained, gzsl, data, *_ = open_world_model
    trained = copy.deepcopy(trained)
    rule = OpenWorldRule(fit_open_world("gaussian", trained, gzsl, *data["train"]), 2.0, 1.0)
    new_id = trained.add_class(data["semantics"][23])  # class 23 becomes a listed (unseen) class
    grown = fit_final_classifier(trained, *data["train"], torch.cat([gzsl.class_ids.cpu(), torch.tensor([new_id])]))
    fresh, _ = trained.synthesize([new_id], 50, seed=99)
    with pytest.raises(ValueError, match="refit it"):
        rule.scorer.score(trained, grown, fresh)
    stale = (rule.scorer.raw(trained, grown, fresh) - rule.scorer.centre) / rule.scorer.scale
    refitted = refit_open_world(rule, trained, grown, *data["train"])
    assert refitted.scorer.class_ids.tolist() == grown.class_ids.tolist()
    assert refitted.scorer.gaussian.means.shape[0] == len(grown.class_ids)
    assert refitted.threshold == rule.threshold and refitted.temperature == rule.temperature
    assert float(refitted.scorer.score(trained, grown, fresh).mean()) < float(stale.mean())
    # the seen classes' means are the ones training fitted, from the same real features
    assert torch.allclose(refitted.scorer.gaussian.means[:20], rule.scorer.gaussian.means[:20])
