"""The seen-or-unseen gates (generative/gates.py, gate_evaluation.py) and their use by run_bsegn and the
pipeline: hand-made cases where the right answer is known, formulas checked by hand, no test images used
to choose anything."""
from types import SimpleNamespace

import pytest
import torch

from bsegn.core.errors import ConfigError
from bsegn.generative.gate_evaluation import (
    best_threshold,
    choose_threshold,
    domain_metrics,
    evaluate_gate,
    fit_temperature,
    oracle_domain,
    p_unseen_calibration,
)
from bsegn.generative.gates import (
    GATES,
    GateInputs,
    GaussianGate,
    LearnedGate,
    StackingGate,
    cross_fitted_log_distances,
    fit_gates,
    gate_from_state,
    gate_inputs,
    routed_predictions,
)
from bsegn.generative.metrics import auroc, calibrated_predictions

CLASS_IDS = torch.tensor([0, 1, 2, 3])
SEEN = torch.tensor([0, 1])
SEEN_COLUMNS = torch.tensor([True, True, False, False])


def two_domain_case(n: int = 40, seed: int = 0):
    """Seen images (classes 0, 1) near (+-4, 0), unseen images (classes 2, 3) near (+-4, 6) in a 2-D
    feature space. The class scores name the right class WITHIN each domain, but the seen-vs-unseen
    margin of the scores (best unseen - best seen) is drawn from the SAME distribution for both domains,
    so no stacking offset can tell them apart; a Gaussian on the features can."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [-4.0, 6.0], [4.0, 6.0]])
    features = centres[labels] + 0.5 * torch.randn(len(labels), 2, generator=g)
    margin = torch.randn(len(labels), generator=g)  # best unseen minus best seen: domain-blind
    scores = torch.full((len(labels), 4), -10.0)
    own_domain_best = torch.where(labels < 2, labels, labels)  # the true class wins inside its domain
    other = torch.where(labels < 2, 2 + (labels % 2), labels % 2)  # a class of the other domain
    scores[torch.arange(len(labels)), own_domain_best] = -1.0
    scores[torch.arange(len(labels)), other] = -1.0 + torch.where(labels < 2, margin, -margin)
    seen_rows = labels < 2
    inputs = GateInputs(scores, SEEN_COLUMNS, features)
    return (inputs.subset(seen_rows), labels[seen_rows]), (inputs.subset(~seen_rows), labels[~seen_rows]), \
        features[seen_rows], labels[seen_rows]


def test_auroc_is_the_mann_whitney_probability_with_ties_counting_half():
    # positives 1 and 3 against negatives 0, 1, 2: 1 beats 0, ties 1, loses to 2 (1.5); 3 beats all (3)
    assert auroc(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0])) == pytest.approx(4.5 / 6)
    assert auroc(torch.tensor([0.0, 0.0]), torch.tensor([1.0])) == 1.0
    assert auroc(torch.tensor([2.0]), torch.tensor([1.0, 1.5])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5


def test_routing_keeps_each_image_inside_the_domain_it_was_sent_to():
    scores = torch.tensor([[5.0, 1.0, 4.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    unseen = torch.tensor([True, False])
    assert routed_predictions(scores, SEEN_COLUMNS, unseen).tolist() == [2, 1]
    assert routed_predictions(scores, SEEN_COLUMNS, ~unseen).tolist() == [0, 3]


def test_stacking_gate_is_calibrated_stacking_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(200, 4, generator=g)
    inputs = GateInputs(scores, SEEN_COLUMNS)
    gate = StackingGate()
    for gamma in (0.0, 0.3, 1.5):
        gate.threshold = -gamma
        assert torch.equal(gate.predict(inputs), calibrated_predictions(scores, SEEN_COLUMNS, gamma))
        # and the decision is "unseen iff best unseen - best seen > -gamma"
        unseen_pick = ~SEEN_COLUMNS[gate.predict(inputs)]
        assert torch.equal(unseen_pick, gate.unseen(inputs))


def test_a_gaussian_gate_separates_what_no_stacking_offset_can():
    seen, unseen, train_x, train_y = two_domain_case()
    stacking, gaussian = StackingGate(), GaussianGate(2, 2).fit(train_x, train_y)
    ceiling = oracle_domain(seen, unseen, CLASS_IDS, SEEN)
    assert ceiling["oracle_U"] == ceiling["oracle_S"] == 100.0
    assert domain_metrics(gaussian, seen[0], unseen[0], 0.0)["domain_auroc"] == 1.0
    assert 0.35 < domain_metrics(stacking, seen[0], unseen[0], 0.0)["domain_auroc"] < 0.65
    for gate in (stacking, gaussian):
        gate.threshold, _ = choose_threshold(gate, seen, unseen, CLASS_IDS, SEEN)
    assert evaluate_gate(gaussian, seen, unseen, CLASS_IDS, SEEN)["H"] == 100.0
    assert evaluate_gate(stacking, seen, unseen, CLASS_IDS, SEEN)["H"] < 80.0


def test_gaussian_score_is_the_smallest_mahalanobis_distance_to_a_seen_class_mean():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([1.0, -2.0, 3.0])
    labels = torch.arange(3).repeat_interleave(100)
    x[labels == 1] += torch.tensor([5.0, 1.0, 0.0])
    gate = GaussianGate(3, 3).fit(x, labels)
    means = torch.stack([x[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(gate.means, means, atol=1e-5)
    centred = x - means[labels]
    covariance = centred.T.double() @ centred.double() / (300 - 3)
    shrunk = 0.9 * covariance + 0.1 * covariance.diagonal().mean() * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(gate.precision.double(), torch.linalg.inv(shrunk), rtol=1e-4, atol=1e-6)
    queries = torch.tensor([[0.0, 0.0, 0.0], [6.0, -1.0, 3.0], [20.0, 20.0, 20.0]])
    expected = torch.stack([((queries - m) @ gate.precision * (queries - m)).sum(1) for m in means]).min(0).values
    score = gate.domain_score(GateInputs(torch.zeros(3, 4), SEEN_COLUMNS, queries))
    assert torch.allclose(score, expected, rtol=1e-4)


def test_gaussian_score_in_float32_matches_float64_and_is_never_negative():
    """The score whitens in float32 (predict's cost); against the float64 quadratic form it stays within
    1e-4 relative, and an image exactly at a class mean scores 0, never a rounding-negative distance (the
    combined gate takes its log)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 256, generator=g) * 5
    labels = torch.arange(20).repeat_interleave(100)
    gate = GaussianGate(256, 20).fit(x, labels)
    queries = torch.cat([torch.rand(50, 256, generator=g) * 5, gate.means])
    precision, means = gate.precision.double(), gate.means.double()
    expected = torch.stack([((queries.double() - m) @ precision * (queries.double() - m)).sum(1) for m in means])
    score = gate.domain_score(GateInputs(torch.zeros(70, 4), SEEN_COLUMNS, queries))
    assert score.dtype == torch.float32
    assert torch.allclose(score[:50].double(), expected.min(0).values[:50], rtol=1e-4)
    assert (score[50:] >= 0).all() and score[50:].max() < 1e-3
    # refitting replaces the cached whitening (a stale one would score against the old means)
    gate.fit(x + 10.0, labels)
    assert gate.domain_score(GateInputs(torch.zeros(20, 4), SEEN_COLUMNS, gate.means)).max() < 1e-3


def test_domain_metrics_and_oracle_are_the_hand_counted_rates():
    # two seen images (scores 0.1, 0.9) and two unseen (0.2, 0.8) under a gate reading the score directly
    class ScoreGate(StackingGate):
        kind = "test"

        def domain_score(self, inputs):
            return inputs.integrated[:, 0]

    seen = GateInputs(torch.tensor([[0.0, -5, -1, -5], [-5, 0.0, -5, -1]]), SEEN_COLUMNS, torch.tensor([[0.1], [0.9]]))
    unseen = GateInputs(torch.tensor([[-1.0, -5, 0.0, -5], [-5, -5, -5, 0.0]]), SEEN_COLUMNS, torch.tensor([[0.2], [0.8]]))
    rates = domain_metrics(ScoreGate(), seen, unseen, 0.5)
    assert rates["seen_called_seen"] == 50.0 and rates["unseen_called_unseen"] == 50.0
    assert rates["domain_accuracy"] == 50.0 and rates["domain_auroc"] == pytest.approx(0.5)
    # routed to the true domain: seen images -> columns 0 and 1 (right), unseen -> 2 and 3 (right)
    assert oracle_domain((seen, torch.tensor([0, 1])), (unseen, torch.tensor([2, 3])), CLASS_IDS, SEEN) == \
        {"oracle_U": 100.0, "oracle_S": 100.0, "oracle_H": 100.0}
    # the second unseen image's true class is 2, its unseen expert says 3: U = mean(100, 0) = 50
    assert oracle_domain((seen, torch.tensor([0, 1])), (unseen, torch.tensor([2, 2])), CLASS_IDS, SEEN)["oracle_U"] == 50.0


def test_p_unseen_is_the_sigmoid_of_the_margin_over_the_temperature():
    inputs = GateInputs(torch.tensor([[0.0, -1, -3, -5], [-4.0, -5, 0.0, -5]]), SEEN_COLUMNS)
    gate = StackingGate()
    margin = gate.domain_score(inputs) - 0.5  # best unseen - best seen, threshold 0.5: -3.5 and 3.5
    gate.threshold, gate.temperature = 0.5, 2.0
    assert torch.allclose(gate.p_unseen(inputs), torch.sigmoid(margin / 2.0))
    assert torch.equal(gate.unseen(inputs), torch.tensor([False, True]))  # the decision ignores the temperature
    gate.threshold = float(gate.domain_score(inputs)[0])
    assert float(gate.p_unseen(inputs)[0]) == 0.5
    assert gate.metadata() == {"kind": "stacking", "threshold": gate.threshold, "temperature": 2.0}


def test_fit_temperature_recovers_the_temperature_that_made_the_domains():
    generator = torch.Generator().manual_seed(0)
    margins = torch.randn(40000, generator=generator, dtype=torch.float64) * 6.0
    for true in (0.5, 3.0, 20.0):
        is_unseen = (torch.rand(40000, generator=generator, dtype=torch.float64) < torch.sigmoid(margins / true)).double()
        assert fit_temperature(margins, is_unseen) == pytest.approx(true, rel=0.06)
    # a score that separates backwards (or not at all) gets the largest temperature: p_unseen ~ 0.5
    backwards = (margins < 0).double()
    assert fit_temperature(margins, backwards) > 1e3 * float(margins.std())
    with pytest.raises(ValueError, match="finite margins"):
        fit_temperature(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_p_unseen_calibration_metrics_are_the_hand_computed_ones():
    logits, is_unseen = torch.tensor([2.0, -2.0, 0.0, 4.0]), torch.tensor([1.0, 1.0, 0.0, 1.0])
    p = torch.sigmoid(logits.double())
    nll = float(-(torch.log(p[0]) + torch.log(p[1]) + torch.log(1 - p[2]) + torch.log(p[3])) / 4)
    confidence = torch.maximum(p, 1 - p)  # 0.881, 0.881, 0.5, 0.982; right, wrong, right, right
    # bins of width 0.05 over [0.5, 1]: {0.5} -> bin 0 (right), {0.881, 0.881} -> bin 7 (one right), {0.982} -> bin 9
    ece = 0.25 * abs(0.5 - 1) + 0.5 * abs(float(confidence[0]) - 0.5) + 0.25 * abs(float(confidence[3]) - 1)
    got = p_unseen_calibration(logits, is_unseen)
    assert got["p_unseen_nll"] == pytest.approx(nll) and got["p_unseen_ece"] == pytest.approx(ece)


def test_best_threshold_ties():
    curve = [{"threshold": t, "H": h} for t, h in ((-3.0, 5.0), (-1.0, 9.0), (-0.5, 9.0), (0.0, 2.0))]
    assert best_threshold(curve, "stacking") == -0.5  # the smallest correction (gamma 0.5)
    curve += [{"threshold": 1.0, "H": 9.0}]
    assert best_threshold(curve, "learned") == -0.5  # the middle of the tied candidates -1, -0.5, 1
    assert best_threshold(curve[:3], "learned") == -0.5  # two tied: the upper middle


def test_learned_gate_weighs_the_two_domains_equally_whatever_their_sizes():
    """Domain 0: 8,000 points around 0, domain 1: 200 around 2 (1-D, sd 0.7, overlapping). With the two
    domains weighing the same, the Bayes logit is 4.08 (x - 1): it crosses 0 at the midpoint 1. Unweighted,
    the 40:1 prior would put logit(1) near -log 40 = -3.7."""
    g = torch.Generator().manual_seed(0)
    seen = torch.randn(8000, 1, generator=g) * 0.7
    unseen = 2 + torch.randn(200, 1, generator=g) * 0.7
    gate = LearnedGate(1, hidden=64).fit([seen[:4000], seen[4000:], unseen], [0.0, 0.0, 1.0], seed=0)
    logits = gate.logit(torch.tensor([[0.0], [1.0], [2.0]]))
    assert logits[0] < -2 and logits[2] > 2 and abs(float(logits[1])) < 1.0


def test_a_saved_gate_gives_the_same_scores(tmp_path):
    from safetensors.torch import load_file, save_file

    seen, unseen, train_x, train_y = two_domain_case()
    gaussian = GaussianGate(2, 2).fit(train_x, train_y)
    learned = LearnedGate(2, hidden=16).fit([train_x, unseen[0].integrated], [0.0, 1.0], seed=3)
    for gate, threshold in ((gaussian, 7.5), (learned, -0.25), (StackingGate(), -2.0)):
        gate.threshold = threshold
        path = tmp_path / f"{gate.kind}.safetensors"
        save_file({k: v.contiguous() for k, v in gate.state_dict().items()}, str(path))
        again = gate_from_state(gate.metadata(), load_file(str(path)) if gate.state_dict() else {})
        assert again.kind == gate.kind and again.threshold == threshold
        assert torch.equal(again.domain_score(unseen[0]), gate.domain_score(unseen[0]))
    with pytest.raises(ConfigError, match="valid gates: stacking, max_softmax"):
        gate_from_state({"kind": "coin", "threshold": 0.0}, {})


# --- with a trained model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run():
    from test_generative_training import TINY, feature_split, gaussian_benchmark

    from bsegn.generative.config import BSeGNConfig

    features, split = feature_split(gaussian_benchmark(seed=3))
    config = BSeGNConfig.from_dict({**TINY, "epochs": 2, "syn_num": 20, "classifier_epochs": 3})
    return features, split, config


def test_run_bsegn_refuses_to_choose_a_threshold_on_a_final_split(tiny_run):
    from bsegn.generative.experiment import run_bsegn

    features, split, config = tiny_run
    split.protocol = "final"
    with pytest.raises(ConfigError, match="final-protocol split: choose it on the validation protocol"):
        run_bsegn(features, split, config, gates={"stacking": None}, show_progress=False)


def test_run_bsegn_measures_every_gate_on_one_model_and_stacking_stays_as_it_was(tiny_run):
    from bsegn.generative.evaluation import evaluate_scores
    from bsegn.generative.experiment import fit_and_score, run_bsegn, split_tensors

    features, split, config = tiny_run
    split.protocol = "validation"
    run = run_bsegn(features, split, config, gates={kind: None for kind in GATES}, unseen_ranking="zsl",
                    show_progress=False)
    assert list(run.gates) == list(GATES) and list(run.result["gates"]) == list(GATES)
    result = run.result
    assert result["gate"] == "stacking" and result["gamma"] == -result["threshold"]
    assert [row["gamma"] for row in result["calibration_curve"]][:3] == [0.0, 0.1, 0.2]
    for kind, row in result["gates"].items():
        assert run.gates[kind].threshold == row["threshold"] and run.gates[kind].temperature == row["temperature"]
        if kind == "stacking":  # p_unseen's temperature: fitted on these validation images with the threshold
            data = split_tensors(features, split)
            inputs = [gate_inputs(run.trained, run.gzsl_classifier, run.zsl_classifier, data[part][0], kinds=[kind])
                      for part in ("test_seen", "test_unseen")]
            margins = torch.cat([run.gates[kind].margin(x) for x in inputs])
            assert row["temperature"] == pytest.approx(fit_temperature(margins, torch.cat(
                [torch.zeros(len(inputs[0].scores)), torch.ones(len(inputs[1].scores))])), rel=1e-6)
        assert row["H"] == max(point["H"] for point in row["curve"])  # chosen by H on this validation split
        assert 0.0 <= row["domain_auroc"] <= 1.0 and row["oracle_H"] == result["oracle_H"]
    # the cosmo gate shares the learned gate's network
    assert torch.equal(run.gates["cosmo"].network[0].weight, run.gates["learned"].network[0].weight)
    # stacking's numbers are calibrated stacking's, computed from the same scores
    data = split_tensors(features, split)
    _, _, seen_scores, unseen_scores, zsl_scores = fit_and_score(run.trained, data, "zsl")
    plain = evaluate_scores(seen_scores, data["test_seen"][1], unseen_scores, data["test_unseen"][1],
                            data["all_classes"], data["seen"], zsl_unseen_scores=zsl_scores,
                            zsl_class_ids=data["unseen"], gamma=result["gamma"])
    assert {k: plain[k] for k in ("T1", "U", "S", "H")} == {k: result[k] for k in ("T1", "U", "S", "H")}
    # thresholds given: used as given, on any split; the first gate makes the headline
    split.protocol = "final"
    given = run_bsegn(features, split, config, gates={"learned": 0.5, "stacking": -1.0}, unseen_ranking="zsl",
                      show_progress=False)
    assert given.result["gate"] == "learned" and given.result["threshold"] == 0.5 and given.result["gamma"] == 0.0
    assert given.result["gates"]["stacking"]["gamma"] == 1.0 and "curve" not in given.result["gates"]["learned"]
    assert "calibration_curve" not in given.result
    assert given.gates["learned"].temperature == 1.0  # a given threshold without a fitted temperature
    carried = run_bsegn(features, split, config, gates={"learned": 0.5}, temperatures={"learned": 4.0},
                        unseen_ranking="zsl", show_progress=False)
    assert carried.gates["learned"].temperature == 4.0 and carried.result["temperature"] == 4.0


def test_fitting_gates_leaves_the_global_rng_alone(tiny_run):
    from bsegn.generative.experiment import run_bsegn, split_tensors

    features, split, config = tiny_run
    run = run_bsegn(features, split, config, show_progress=False)
    data = split_tensors(features, split)
    state = torch.get_rng_state()
    first = fit_gates(["learned", "gaussian"], run.trained, *data["trainval"], data["all_classes"])
    assert torch.equal(torch.get_rng_state(), state)
    again = fit_gates(["learned"], run.trained, *data["trainval"], data["all_classes"])
    assert torch.equal(first["learned"].network[2].weight, again["learned"].network[2].weight)


def test_pipeline_measures_the_configured_gate_first_and_carries_validation_thresholds():
    from types import SimpleNamespace

    from bsegn.app.config import load_run_config
    from bsegn.app.pipeline import gate_temperatures, gate_thresholds, protocols_of

    given = load_run_config(None, ["--run.gate", "learned", "--run.threshold", "0.3"])
    assert gate_thresholds(given) == {"learned": 0.3} and protocols_of(given) == ["final"]
    chosen = load_run_config(None, ["--run.gate", "gaussian", "--run.threshold", "null"])
    assert protocols_of(chosen) == ["validation", "final"]
    first = gate_thresholds(chosen)
    assert list(first)[0] == "gaussian" and set(first) == set(GATES) and set(first.values()) == {None}
    fitted = {kind: SimpleNamespace(threshold=float(i)) for i, kind in enumerate(GATES)}
    after = gate_thresholds(chosen, SimpleNamespace(run=SimpleNamespace(gates=fitted)))
    assert list(after)[0] == "gaussian" and after == {kind: float(i) for i, kind in enumerate(GATES)}
    fitted = {kind: SimpleNamespace(threshold=0.0, temperature=i + 2.0) for i, kind in enumerate(GATES)}
    assert gate_temperatures(SimpleNamespace(run=SimpleNamespace(gates=fitted))) == \
        {kind: i + 2.0 for i, kind in enumerate(GATES)}
    assert gate_temperatures(None) is None


def test_combined_gate_is_the_sum_of_its_standardised_parts(tiny_run):
    """combined = z(stacking margin) + z(log gaussian distance) + z(learned logit) + z(semantic margin),
    each z by the part's mean and standard deviation over the real seen training features (the log gaussian
    distance's over their cross-fitted held-out distances); its parts are the fitted gaussian and learned
    gates, and a saved copy scores the same."""
    from bsegn.generative.experiment import run_bsegn, split_tensors

    features, split, config = tiny_run
    run = run_bsegn(features, split, config, show_progress=False)
    data = split_tensors(features, split)
    classifiers = (run.gzsl_classifier, run.zsl_classifier)
    gates = fit_gates(["gaussian", "learned", "combined"], run.trained, *data["trainval"], data["all_classes"],
                      classifiers=classifiers)
    combined = gates["combined"]
    assert torch.equal(combined.gaussian.precision, gates["gaussian"].precision)
    assert torch.equal(combined.learned.network[0].weight, gates["learned"].network[0].weight)
    from bsegn.generative.gates import gate_inputs

    train = gate_inputs(run.trained, *classifiers, data["trainval"][0], kinds=["combined"])
    test = gate_inputs(run.trained, *classifiers, data["test_unseen"][0], kinds=["combined"])

    def parts(inputs):
        margin = StackingGate().domain_score(inputs)
        return torch.stack([margin, gates["gaussian"].domain_score(inputs).log(), gates["learned"].domain_score(inputs),
                            inputs.semantic_margin], 1)

    reference = parts(train).double()
    centre, scale = reference.mean(0), reference.std(0)
    held_out = cross_fitted_log_distances(train.integrated, data["trainval"][1], seed=run.trained.seed + 14).double()
    centre[1], scale[1] = held_out.mean(), held_out.std()
    expected = ((parts(test).double() - centre) / scale).sum(1)
    assert torch.allclose(combined.domain_score(test).double(), expected, rtol=1e-4, atol=1e-4)
    again = gate_from_state(combined.metadata(), combined.state_dict())
    assert torch.equal(again.domain_score(test), combined.domain_score(test))
    with pytest.raises(ConfigError, match="classifiers"):
        fit_gates(["combined"], run.trained, *data["trainval"], data["all_classes"])


def _model_with_identity_decoder(semantics, seen, unseen, lambda_cyc: float = 0.1):
    """A TrainedBSeGN over 3-d features and 3-d semantics whose semantic decoder reads the feature itself."""
    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.model import TrainedBSeGN

    config = BSeGNConfig.from_dict({"hidden": 8, "embedder_hidden": 4, "lambda_cyc": lambda_cyc, "fem": False,
                                    "mfim_levels": ["x"]})
    trained = TrainedBSeGN(config, 3, 3, semantics, seen, unseen)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, x

    if lambda_cyc:
        trained.parts["decoder"] = Identity()
    return trained


def test_semantic_gate_is_the_decoders_cosine_margin_to_unseen_over_seen_classes():
    """score = max cosine(a_hat, unseen class vectors) - max cosine(a_hat, seen class vectors), over the
    classifier's columns; an image decoded near an unseen class's vector is sent to the unseen expert."""
    from bsegn.generative.gates import SemanticGate, gate_inputs, semantic_margin

    semantics = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # norms differ: cosine
    trained = _model_with_identity_decoder(semantics, [0, 1], [2])
    features = torch.tensor([[0.0, 0.1, 1.0], [3.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    columns = torch.tensor([True, True, False])
    unit = features / features.norm(dim=1, keepdim=True)
    expected = unit[:, 2] - torch.maximum(unit[:, 0], unit[:, 1])
    margin = semantic_margin(trained, features, torch.tensor([0, 1, 2]), columns)
    assert torch.allclose(margin, expected, atol=1e-6)
    assert margin[0] > 0 > margin[1] and abs(float(margin[2])) < 1e-6

    class Classifier:  # gate_inputs reads class_ids; the scores are given
        class_ids = torch.tensor([0, 1, 2])

    inputs = gate_inputs(trained, Classifier(), None, features, kinds=["semantic"], scores=torch.zeros(3, 3))
    gate = SemanticGate()
    gate.threshold = 0.0
    assert torch.equal(gate.domain_score(inputs), margin)
    assert gate.unseen(inputs).tolist() == [True, False, False]
    # a class added later is one more column: an image decoded onto it becomes unseen
    trained.add_class(torch.tensor([0.0, 3.0, 0.1]))
    Classifier.class_ids = torch.tensor([0, 1, 2, 3])
    wider = gate_inputs(trained, Classifier(), None, torch.tensor([[0.0, 1.0, 0.05]]), kinds=["semantic"],
                        scores=torch.zeros(1, 4))
    assert float(wider.semantic_margin) > 0


def test_cross_fitted_log_distances_score_each_fold_under_a_gaussian_fitted_without_it():
    """Each feature's held-out log distance is its distance under a GaussianGate fitted on the other fold;
    in high dimensions with few features those exceed the in-fit distances (why combined standardises on
    them), and the same seed gives the same split."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(15)
    x = torch.randn(60, 40, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 40).float()
    held_out = cross_fitted_log_distances(x, labels, folds=2, seed=5)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    first, second = order[0::2], order[1::2]
    by_hand = GaussianGate(40, 4).fit(x[second], labels[second])
    expected = by_hand.domain_score(SimpleNamespace(integrated=x[first])).log()
    assert torch.allclose(held_out[first], expected, rtol=1e-5)
    in_fit = GaussianGate(40, 4).fit(x, labels).domain_score(SimpleNamespace(integrated=x)).log()
    assert held_out.mean() > in_fit.mean() + 0.5
    assert torch.equal(cross_fitted_log_distances(x, labels, folds=2, seed=5), held_out)


def test_without_a_semantic_decoder_the_semantic_gate_is_refused_and_combined_has_three_parts(tiny_run):
    """lambda_cyc 0 removes the decoder: the semantic gate says so; combined keeps its other three parts,
    and a three-part combined state (a bundle saved before the semantic part) loads as three parts."""
    import dataclasses

    from bsegn.generative.experiment import run_bsegn, split_tensors
    from bsegn.generative.gates import gate_inputs

    trained = _model_with_identity_decoder(torch.eye(3), [0, 1], [2], lambda_cyc=0.0)

    class Classifier:
        class_ids = torch.tensor([0, 1, 2])

    with pytest.raises(ConfigError, match="semantic decoder.*lambda_cyc 0"):
        gate_inputs(trained, Classifier(), None, torch.ones(2, 3), kinds=["semantic"], scores=torch.zeros(2, 3))
    features, split, config = tiny_run
    run = run_bsegn(features, split, dataclasses.replace(config, lambda_cyc=0.0), show_progress=False)
    data = split_tensors(features, split)
    classifiers = (run.gzsl_classifier, run.zsl_classifier)
    combined = fit_gates(["combined"], run.trained, *data["trainval"], data["all_classes"],
                         classifiers=classifiers)["combined"]
    assert combined.centre.shape == (3,)
    test = gate_inputs(run.trained, *classifiers, data["test_unseen"][0], kinds=["combined"])
    assert test.semantic_margin is None and torch.isfinite(combined.domain_score(test)).all()
    again = gate_from_state(combined.metadata(), combined.state_dict())
    assert again.centre.shape == (3,) and torch.equal(again.domain_score(test), combined.domain_score(test))
