"""BSeGN trainer: learning on generated features, weights that switch parts off, resume, divergence guard,
2-process DDP, run_bsegn."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bsegn.core.errors import DataError, TrainingDiverged
from bsegn.generative.classifier import class_log_probs, fit_final_classifier, gzsl_scores
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.evaluation import evaluate_scores
from bsegn.generative.experiment import fit_and_score
from bsegn.generative.model import TrainedBSeGN, train_bsegn
from bsegn.generative.trainer import BSeGNTrainer

TINY = dict(hidden=32, embedder_hidden=32, batch_size=32, lr=1e-3, lambda_emb=0.1, syn_num=100,
            classifier_epochs=20)


def gaussian_benchmark(seed=0, classes=25, unseen=5, k=8, d=32, train_per_class=20):
    """Class-conditional Gaussians whose means are a linear function of binary attributes: a generator
    that learns the attribute -> feature map from seen classes can synthesise the unseen ones."""
    g = torch.Generator().manual_seed(seed)
    semantics = (torch.rand(classes, k, generator=g) < 0.5).float() + 0.05
    semantics = semantics / semantics.norm(dim=1, keepdim=True)
    mapping = torch.randn(k, d, generator=g) * 3

    def sample(c, n):
        return torch.relu(semantics[c] @ mapping + 0.5 * torch.randn(n, d, generator=g))

    seen, unseen_ids = torch.arange(classes - unseen), torch.arange(classes - unseen, classes)
    train_y = seen.repeat_interleave(train_per_class)
    train_x = torch.cat([sample(c, train_per_class) for c in seen])
    seen_y = seen.repeat_interleave(10)
    seen_x = torch.cat([sample(c, 10) for c in seen])
    unseen_y = unseen_ids.repeat_interleave(20)
    unseen_x = torch.cat([sample(c, 20) for c in unseen_ids])
    return dict(semantics=semantics, seen=seen, unseen=unseen_ids, train=(train_x, train_y),
                test_seen=(seen_x, seen_y), test_unseen=(unseen_x, unseen_y))


def make_trainer(data, config, run_dir=None, seed=0):
    x, y = data["train"]
    return BSeGNTrainer(x, y, data["semantics"], data["seen"], data["unseen"], config, seed=seed, run_dir=run_dir,
                        show_progress=False)


@pytest.mark.slow
def test_short_training_recognises_unseen_classes_far_above_chance():
    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=40, **TINY)
    trained = train_bsegn(*data["train"], data["semantics"], data["seen"], data["unseen"], config,
                          show_progress=False)
    # the pipeline's path: both classifiers fitted and the test images scored, then the same metrics code
    data = {**data, "trainval": data["train"], "all_classes": torch.arange(25)}
    gzsl, zsl, seen_scores, unseen_scores, zsl_scores = fit_and_score(trained, data)
    result = evaluate_scores(seen_scores, data["test_seen"][1], unseen_scores, data["test_unseen"][1],
                             gzsl.class_ids, trained.seen_classes, zsl_unseen_scores=zsl_scores,
                             zsl_class_ids=zsl.class_ids)
    # 5 unseen classes: chance T1 is 20 %. Measured 56 % with this seed.
    assert result["T1"] > 45, result
    assert result["S"] > 70 and result["U"] > 0, result
    assert set(result["per_class_zsl"]) == set(data["unseen"].tolist())
    # The bundle round trip: metadata + state_dict rebuild the same model.
    rebuilt = TrainedBSeGN.from_state(json.loads(json.dumps(trained.metadata())), trained.state_dict())
    x = data["test_unseen"][0][:7]
    assert torch.allclose(rebuilt.integrate(x), trained.integrate(x))
    a, la = rebuilt.synthesize([21, 22], 3, seed=5)
    b, lb = trained.synthesize([21, 22], 3, seed=5)
    assert torch.equal(a, b) and la.tolist() == [21] * 3 + [22] * 3
    # unseen_ranking "zsl": the GZSL classifier still decides seen against unseen, the ZSL one which unseen.
    x = data["test_unseen"][0]
    plain = class_log_probs(trained, gzsl, x)
    assert torch.equal(gzsl_scores(trained, gzsl, zsl, x), plain)  # "gzsl" (the default): the GZSL classifier's own
    ranked = gzsl_scores(trained, gzsl, zsl, x, unseen_ranking="zsl")
    unseen_columns = ~torch.isin(gzsl.class_ids, data["seen"])
    assert torch.equal(unseen_columns[plain.argmax(1)], unseen_columns[ranked.argmax(1)])
    zsl_choice = zsl.class_ids[class_log_probs(trained, zsl, x).argmax(1)]
    assert torch.equal(gzsl.class_ids[unseen_columns][ranked[:, unseen_columns].argmax(1)], zsl_choice)
    assert not torch.equal(ranked, plain)
    with pytest.raises(ValueError, match="ZSL"):
        gzsl_scores(trained, gzsl, None, x, unseen_ranking="zsl")
    with pytest.raises(ValueError, match="unseen_ranking"):
        gzsl_scores(trained, gzsl, zsl, x, unseen_ranking="best")


# part: (a module that must not exist without it, or None), (a log that must vanish from the generator step, or None)
PART_CASES = {
    "fem": ("embedder", "generator_fem"),
    "cycle": ("decoder", "cycle"),
    "fem_boosts_g": (None, "generator_fem"),
    "cls": (None, "cls"),
}


def ablated(config, part):
    """The config without `part`: an ablation part, or "cls" (lambda_cls 0)."""
    from method_configs import without  # bench/ (tests/conftest.py)

    return config.replace(lambda_cls=0.0) if part == "cls" else without(config, part)


@pytest.mark.parametrize("part", ["fem", "cycle", "fem_boosts_g", "cls", "balance", "fem_s2f"])
def test_a_zero_weight_really_removes_its_term(part):
    data = gaussian_benchmark()
    on = BSeGNConfig(epochs=1, iterations_per_epoch=1, lambda_cls=0.01, **TINY)
    off = ablated(on, part)
    full, without = make_trainer(data, on), make_trainer(data, off)
    draws_full = full.draw(torch.Generator().manual_seed(3))
    draws_without = without.draw(torch.Generator().manual_seed(3))
    labels = full.labels[draws_full["batches"][-1]]
    real = full.features[draws_full["batches"][-1]]
    if part in ("balance", "fem_s2f"):
        loss_on, parts_on = full.fem_loss(draws_full, real, labels)
        loss_off, parts_off = without.fem_loss(draws_without, real, labels)
        removed = "balance" if part == "balance" else "s2f"
        assert parts_on[removed] > 0 and parts_off[removed] == 0
        assert not torch.isclose(loss_on, loss_off)
        assert torch.isclose(loss_off, parts_off["f2s"] + off.lambda_s2f * parts_off["s2f"] +
                             off.lambda_bal * parts_off["balance"])
        assert torch.isclose(loss_on - loss_off, on.lambda_s2f * parts_on["s2f"] if part == "fem_s2f"
                             else on.lambda_bal * parts_on["balance"], atol=1e-5)
        return
    loss_on, logs_on = full.generator_loss(draws_full, labels)
    loss_off, logs_off = without.generator_loss(draws_without, labels)
    assert not torch.isclose(loss_on, loss_off), "removing a part must change the generator loss"
    missing_module, missing_log = PART_CASES[part]
    assert missing_log in logs_on and missing_log not in logs_off
    if missing_module:
        assert missing_module in full.prepared and missing_module not in without.prepared
    if part == "cls":
        assert full.seen_classifier is not None and without.seen_classifier is None
    # A part the generator step no longer uses gets no gradient from it.
    loss_off.backward()
    if part == "fem_boosts_g":
        assert all(p.grad is None for p in without.prepared["embedder"].parameters())
    assert all(p.grad is not None for p in without.prepared["generator"].parameters())


def test_s2f_weight_scales_its_term_and_the_fem_step_sees_real_seen_and_fake_unseen_rows():
    data = gaussian_benchmark()
    base = BSeGNConfig(epochs=1, iterations_per_epoch=1, **TINY)
    trainer = make_trainer(data, base)
    draws = trainer.draw(torch.Generator().manual_seed(3))
    real, labels = trainer.features[draws["batches"][-1]], trainer.labels[draws["batches"][-1]]
    loss_one, parts_one = trainer.fem_loss(draws, real, labels)
    weighted = make_trainer(data, base.replace(lambda_s2f=0.25))
    loss_quarter, parts_quarter = weighted.fem_loss(draws, real, labels)
    assert parts_quarter["s2f"] == parts_one["s2f"] > 0  # same modules (same seed), same batch
    assert torch.isclose(loss_quarter, parts_quarter["f2s"] + 0.25 * parts_quarter["s2f"] +
                         base.lambda_bal * parts_quarter["balance"])
    assert torch.isclose(loss_one - loss_quarter, 0.75 * parts_one["s2f"])
    # The balance loss: m_S over the REAL seen batch, m_U over G's fake features of the drawn unseen classes,
    # softmax over the split's classes of the FEM's cosine scores / tau.
    with torch.no_grad():
        unseen_labels = trainer.unseen_classes[draws["unseen_pick"]]
        fake_unseen = trainer._generate(draws["noise_unseen"], trainer.semantics[unseen_labels], grad=False)
        probs = torch.softmax(trainer.prepared["embedder"](torch.cat([real, fake_unseen]), trainer.semantics), dim=1)
    seen_cols = trainer.seen_class_mask
    m_s = probs[:len(real)][:, seen_cols].amax(1).mean()
    m_u = probs[len(real):][:, ~seen_cols].amax(1).mean()
    assert parts_one["balance_gap"] == pytest.approx(float(m_s - m_u), abs=1e-6)
    assert parts_one["balance"] == pytest.approx(float(m_s - m_u) ** 2, abs=1e-6)
    # tau reaches the FEM the trainer builds.
    assert make_trainer(data, base.replace(tau=0.5)).prepared["embedder"].tau == 0.5


def test_seed_sets_initialisation_and_draws():
    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=1, iterations_per_epoch=2, **TINY)
    weights = [torch.cat([p.detach().flatten() for p in make_trainer(data, config, seed=s).fit().modules.parameters()])
               for s in (0, 0, 1)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_resume_equals_uninterrupted(tmp_path):
    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=2, iterations_per_epoch=3, **TINY)
    straight = make_trainer(data, config, tmp_path / "a").fit()
    make_trainer(data, config, tmp_path / "b").fit(max_epochs=1)  # "killed" after epoch 1
    state = json.loads((tmp_path / "b" / "checkpoint" / "bsegn.json").read_text())
    assert state["epoch"] == 1 and state["kind"] == "bsegn" and len(state["history"]) == 1
    resumed = make_trainer(data, config, tmp_path / "b").fit()
    assert resumed.epoch == 2
    for name in straight.prepared:
        for (key, a), b in zip(straight.unwrapped(name).state_dict().items(),
                               resumed.unwrapped(name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"
    lines = (tmp_path / "b" / "losses.csv").read_text().splitlines()
    assert len(lines) == 3 and "critic" in lines[0]
    assert (tmp_path / "b" / "tensorboard").is_dir()
    # A longer run resumes a shorter one (epochs is not part of the checkpoint's key).
    longer = make_trainer(data, config.replace(epochs=3), tmp_path / "b")
    assert longer.resume() and longer.epoch == 2
    # A checkpoint of another config, seed or data is refused, not silently mixed in.
    with pytest.raises(DataError, match="different config"):
        make_trainer(data, config.replace(lambda_cyc=0.5), tmp_path / "b").fit()
    with pytest.raises(DataError, match="different config"):
        make_trainer(data, config, tmp_path / "b", seed=1).fit()
    with pytest.raises(DataError, match="different config"):
        make_trainer(gaussian_benchmark(seed=1), config, tmp_path / "b").fit()


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=3, iterations_per_epoch=2, **TINY)
    trainer = make_trainer(data, config, tmp_path).fit(max_epochs=1)
    with torch.no_grad():
        trainer.unwrapped("generator").output.weight[0, 0] = float("nan")  # forced NaN
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2.*last good checkpoint"):
        trainer.fit()
    state = json.loads((tmp_path / "checkpoint" / "bsegn.json").read_text())
    assert state["epoch"] == 1
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "checkpoint" / "modules.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_divergence_guard_stops_a_finite_but_exploding_loss():
    data = gaussian_benchmark()
    # the gradient penalty times 1e12 puts the critic's loss far beyond the 1e6 threshold at once
    trainer = make_trainer(data, BSeGNConfig(epochs=1, iterations_per_epoch=1, lambda_gp=1e12, **TINY))
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1: loss\\(es\\) critic"):
        trainer.fit()


DDP_SCRIPT = r'''
import json, os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_generative_training import gaussian_benchmark, TINY
from accelerate import Accelerator
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.trainer import BSeGNTrainer
accelerator = Accelerator(cpu=True)
data = gaussian_benchmark()
# fem off: every remaining loss is a per-sample mean, so 2 ranks x 16 == 1 process x 32 up to float error
config = BSeGNConfig(epochs=1, iterations_per_epoch=2, fem=False, **TINY)
trainer = BSeGNTrainer(*data["train"], data["semantics"], data["seen"], data["unseen"], config,
                       accelerator=accelerator, show_progress=False)
initial = torch.cat([p.detach().flatten().clone() for n in ("generator", "critic")
                     for p in trainer.unwrapped(n).parameters()])
trainer.fit()
out = {name: [p.detach().double().sum().item() for p in trainer.unwrapped(name).parameters()]
       for name in ("generator", "critic", "decoder")}
flat = torch.cat([p.detach().flatten() for n in ("generator", "critic") for p in trainer.unwrapped(n).parameters()])
out["flat"] = flat.tolist()
out["moved"] = (flat - initial).abs().max().item()
with open(f"{sys.argv[1]}/rank{accelerator.process_index}-of{accelerator.num_processes}.json", "w") as f:
    json.dump(out, f)
accelerator.end_training()  # destroys the gloo group: without it a rank could abort at exit (SIGABRT)
sys.stdout.flush()
os._exit(0)  # torch's C++ teardown at exit can still abort a rank on a loaded machine after the result is written
'''


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    two = subprocess.run(launcher + ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29517",
                                     str(script), str(tmp_path), tests_dir],
                         env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path), tests_dir], env=env, capture_output=True,
                         text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0-of2.json").read_text())
    rank1 = json.loads((tmp_path / "rank1-of2.json").read_text())
    single = json.loads((tmp_path / "rank0-of1.json").read_text())
    assert rank0["flat"] == rank1["flat"], "generator/critic parameters differ across ranks"
    a, b = torch.tensor(rank0["flat"]), torch.tensor(single["flat"])
    # Stated tolerance: float summation order differs (gloo all-reduce of two half-batch means vs one
    # batch mean), and Adam's m/sqrt(v) magnifies it where gradients are tiny. We require every parameter
    # within 5e-4 (half of one Adam step at lr 1e-3) while training moved parameters by >= 20x that.
    assert single["moved"] > 1e-2
    assert (a - b).abs().max() < 5e-4, (a - b).abs().max()


def test_fusion_and_add_class():
    from bsegn.generative.classifier import class_log_probs

    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=1, iterations_per_epoch=2, fusion_weight=0.5, syn_num=5, classifier_epochs=1,
                         **{k: v for k, v in TINY.items() if k not in ("syn_num", "classifier_epochs")})
    trained = train_bsegn(*data["train"], data["semantics"], data["seen"], data["unseen"], config, seed=2,
                          show_progress=False)
    assert trained.seed == 2 and trained.metadata()["seed"] == 2 and trained.history[-1]["fem_f2s"] > 0
    classifier = fit_final_classifier(trained, None, None, data["unseen"])
    fused = class_log_probs(trained, classifier, data["test_unseen"][0])
    plain = class_log_probs(trained, classifier, data["test_unseen"][0], fusion=False)
    assert fused.shape == plain.shape == (100, 5) and not torch.allclose(fused, plain)
    fem = trained.fem_log_probs(data["test_unseen"][0], classifier.class_ids)
    assert torch.allclose(fused, plain + 0.5 * fem, atol=1e-5)
    # the final classifier's default seed is the training seed
    again = fit_final_classifier(trained, None, None, data["unseen"], seed=2)
    assert torch.equal(again.linear.weight, classifier.linear.weight)
    # A new class from its semantic vector alone: synthesised and classifiable, no retraining of G.
    new_id = trained.add_class(data["semantics"][3] * 0.5 + data["semantics"][7] * 0.5)
    assert new_id == 25 and trained.unseen_classes[-1] == 25
    classifier = fit_final_classifier(trained, None, None, torch.cat([data["unseen"], torch.tensor([new_id])]))
    assert classifier.class_ids.tolist()[-1] == 25
    rebuilt = TrainedBSeGN.from_state(json.loads(json.dumps(trained.metadata())), trained.state_dict())
    assert rebuilt.seed == 2 and torch.equal(rebuilt.synthesize([25], 3)[0], trained.synthesize([25], 3)[0])


def feature_split(data):
    """The gaussian benchmark as (feature_set, split) objects with the attributes experiment.py reads."""
    import types

    import numpy as np

    parts = [data["train"], data["test_seen"], data["test_unseen"]]
    features = types.SimpleNamespace(features=torch.cat([p[0] for p in parts]).numpy(),
                                     labels=torch.cat([p[1] for p in parts]).numpy())
    sizes = np.cumsum([0] + [len(p[1]) for p in parts])
    locs = {name: np.arange(sizes[i], sizes[i + 1]) for i, name in enumerate(["trainval", "test_seen", "test_unseen"])}
    split = types.SimpleNamespace(seen_classes=data["seen"].numpy(), unseen_classes=data["unseen"].numpy(),
                                  semantics=data["semantics"].numpy(), loc=lambda name: locs[name])
    return features, split


def test_run_bsegn_returns_a_run_with_thresholds_chosen_only_when_asked():
    from bsegn.generative.experiment import BSeGNRun, run_bsegn

    features, split = feature_split(gaussian_benchmark(seed=3))
    split.protocol = "validation"
    config = BSeGNConfig.from_dict({**TINY, "epochs": 1, "syn_num": 20, "classifier_epochs": 2})
    plain = run_bsegn(features, split, config, show_progress=False)
    assert isinstance(plain, BSeGNRun) and plain.result["gamma"] == 0.0 and "calibration_curve" not in plain.result
    assert list(plain.gates) == ["stacking"] and plain.gates["stacking"].threshold == 0.0
    assert plain.gzsl_classifier.class_ids.tolist() == list(range(25))
    assert plain.zsl_classifier.class_ids.tolist() == list(range(20, 25))
    assert plain.result["seconds_per_epoch"] > 0 and plain.trained.seed == 0
    chosen = run_bsegn(features, split, config, gates={"stacking": None}, show_progress=False)
    curve = chosen.result["calibration_curve"]
    assert chosen.result["gamma"] == max(curve, key=lambda p: (p["H"], -abs(p["gamma"])))["gamma"]
    assert chosen.result["T1"] == plain.result["T1"]  # same seed, same model: only gamma differs
    given = run_bsegn(features, split, config, gates={"stacking": -2.5}, unseen_ranking="zsl", show_progress=False)
    assert given.result["gamma"] == 2.5 and "calibration_curve" not in given.result
    other_seed = run_bsegn(features, split, config, seed=1, show_progress=False)
    assert other_seed.trained.seed == 1


def test_cuda_graphs_option_is_ignored_on_a_cpu_and_the_losses_stay(monkeypatch):
    """BSEGN_CUDA_GRAPHS=1 (generative/steps.py) only acts on one CUDA process: on a CPU no graph, no
    capturable optimiser, and the same losses as without it."""
    from accelerate import Accelerator

    from bsegn.generative.steps import CUDA_GRAPHS_VARIABLE, cuda_graphs_wanted

    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=1, iterations_per_epoch=3, lambda_cyc=0.1, **TINY)
    monkeypatch.delenv(CUDA_GRAPHS_VARIABLE, raising=False)
    plain = make_trainer(data, config).fit()
    monkeypatch.setenv(CUDA_GRAPHS_VARIABLE, "1")
    assert not cuda_graphs_wanted(Accelerator(cpu=True))
    graphed = make_trainer(data, config)
    assert graphed.critic_graph is None
    assert not any(group.get("capturable") for opt in graphed.optimizers.values() for group in opt.param_groups)
    graphed.fit()
    assert graphed.history[0].keys() == plain.history[0].keys()
    for key in plain.history[0]:
        if key != "seconds":
            assert graphed.history[0][key] == plain.history[0][key], key


def test_cuda_graphs_are_refused_where_they_cannot_replay(monkeypatch):
    """The guard of cuda_graphs_wanted: off unless asked; never with DDP, fp16's scaler or a CPU."""
    from types import SimpleNamespace

    from bsegn.generative.steps import CUDA_GRAPHS_VARIABLE, cuda_graphs_wanted

    def accelerator(device="cuda", processes=1, precision="no"):
        return SimpleNamespace(device=torch.device(device), num_processes=processes, mixed_precision=precision)

    monkeypatch.setenv(CUDA_GRAPHS_VARIABLE, "0")
    assert not cuda_graphs_wanted(accelerator())
    monkeypatch.setenv(CUDA_GRAPHS_VARIABLE, "1")
    assert cuda_graphs_wanted(accelerator()) and cuda_graphs_wanted(accelerator(precision="bf16"))
    assert not cuda_graphs_wanted(accelerator("cpu"))
    assert not cuda_graphs_wanted(accelerator(processes=2))
    assert not cuda_graphs_wanted(accelerator(precision="fp16"))
