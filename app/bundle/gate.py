"""The bundle's seen-or-unseen decision (bsegn.generative.gates): how it is stored, checked and read back.

    config.json  "gate": {"kind": "gaussian", "threshold": 12.5, "temperature": 30.1}   (gate.metadata())
    model.safetensors  gate.*   the gate's state_dict (Gaussian means and precision, the learned gate's
                                MLP; nothing for stacking, max_softmax and energy), covered by the
                                model's sha256 like every other tensor

    check_gate_config(config, folder)           schema: a known kind, threshold and temperature in range
    threshold_problem(value)                    the threshold's range (predict --threshold, run.threshold)
    gate_from_bundle(config, state, dim, folder) the DomainGate (BundleError when its tensors do not fit)
    gate_card_lines(config)                      the model card's lines about the decision
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsegn.app.bundle.checks import invalid, number_problem, require_number
from bsegn.core.errors import BundleError

# Gate scores are float32 numbers of order 1e-3 (max_softmax's probability) to 1e4 (a Gaussian's squared
# distance; 2,000 on AwA1 features). A threshold beyond THRESHOLD_LIMIT decides nothing more than "every image
# on one side", and near float32's range (3.4e38) score - threshold becomes infinite and predict's softmax
# NaN. A temperature outside TEMPERATURE_LIMITS is no fitted scale (fit_temperature's grid spans 1e-4 to 1e4
# times the margins' spread) and would turn margin / temperature into 0 / 0.
THRESHOLD_LIMIT = 1e9
TEMPERATURE_LIMITS = (1e-9, 1e9)


def threshold_problem(value) -> str | None:
    """Why `value` cannot be a gate threshold (or a stacking gamma), or None when it can."""
    return number_problem(value, -THRESHOLD_LIMIT, THRESHOLD_LIMIT)


def check_gate_config(config: dict[str, Any], folder: Path) -> None:
    """The config's "gate": {"kind": one of GATES, "threshold": in threshold_problem's range,
    "temperature": in TEMPERATURE_LIMITS (optional: 1)}."""
    from bsegn.generative.gates import GATES

    gate = config.get("gate")
    if not isinstance(gate, dict):
        raise invalid(folder, "gate", f"must be a mapping {{'kind', 'threshold'}}, got {gate!r}")
    if gate.get("kind") not in GATES:
        raise invalid(folder, "gate", f"names an unknown gate {gate.get('kind')!r} (valid gates: {', '.join(GATES)})")
    require_number(folder, "gate.threshold", gate.get("threshold"), -THRESHOLD_LIMIT, THRESHOLD_LIMIT)
    # absent in bundles before p_unseen was calibrated
    require_number(folder, "gate.temperature", gate.get("temperature", 1.0), *TEMPERATURE_LIMITS)


def _expected_shapes(kind: str, state: dict, dim: int, decoder: bool = True) -> dict[str, tuple]:
    """The tensor shapes a gate of `kind` must have on `dim`-d mFIM features (sizes it may choose: read
    from its own tensors, which load_state_dict then checks against each other); `decoder`: the model
    has a semantic decoder (combined may then have its fourth, semantic part)."""
    if kind == "gaussian":
        means = state.get("means")
        return {"means": (means.shape[0] if means is not None and means.ndim == 2 else -1, dim),
                "precision": (dim, dim)}
    if kind in ("learned", "cosmo"):
        first = state.get("network.0.weight")
        hidden = first.shape[0] if first is not None and first.ndim == 2 else -1
        return {"network.0.weight": (hidden, dim), "network.0.bias": (hidden,), "network.2.weight": (1, hidden),
                "network.2.bias": (1,)}
    if kind == "combined":  # a gaussian and a learned gate, and each part's standardisation
        parts = {f"gaussian.{name}": shape for name, shape in _expected_shapes(
            "gaussian", {k[len("gaussian."):]: v for k, v in state.items() if k.startswith("gaussian.")}, dim).items()}
        parts.update({f"learned.{name}": shape for name, shape in _expected_shapes(
            "learned", {k[len("learned."):]: v for k, v in state.items() if k.startswith("learned.")}, dim).items()})
        centre = state.get("centre")
        # 4 parts with the semantic margin (a model with a decoder), 3 without it or from before it
        num_parts = 4 if decoder and centre is not None and tuple(centre.shape) == (4,) else 3
        return {**parts, "centre": (num_parts,), "scale": (num_parts,)}
    return {}


def gate_from_bundle(config: dict[str, Any], state: dict, dim: int, folder: Path, *, decoder: bool = True):
    """The bundle's DomainGate from its config (checked) and its gate.* tensors (state, prefix removed);
    `dim`: the mFIM feature dimension the gate reads, `decoder`: the model has a semantic decoder.
    BundleError when the tensors do not fit."""
    from bsegn.generative.gates import gate_from_state

    kind = config["gate"]["kind"]
    if kind == "semantic" and not decoder:
        raise BundleError(f"{folder}: the semantic gate reads the model's semantic decoder and this model has no "
                          "semantic decoder (trained with lambda_cyc 0): the bundle was edited; re-run train.py")
    expected = _expected_shapes(kind, state, dim, decoder)
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if found != expected or any(size < 1 for shape in expected.values() for size in shape):
        raise BundleError(f"{folder}: the {kind} gate's tensors in model.safetensors do not fit it (found "
                          f"{found or 'none'}, expected {expected or 'none'} on {dim}-d mFIM features): the bundle "
                          "was edited or damaged; re-copy it or re-run train.py")
    try:
        return gate_from_state(config["gate"], {name: tensor.float() for name, tensor in state.items()})
    except (KeyError, RuntimeError, ValueError) as error:
        raise BundleError(f"{folder}: the {kind} gate does not load ({str(error)[:300]})") from None


def gate_card_lines(config: dict[str, Any]) -> list[str]:
    """The model card's description of the seen-or-unseen decision (with the domain AUROC and the
    oracle-domain H when the metrics have them)."""
    gate = config["gate"]
    metrics = config.get("metrics") or {}
    line = f"- seen-or-unseen decision: gate `{gate['kind']}`, threshold {float(gate['threshold']):.4g}"
    if gate["kind"] == "stacking":
        line += f" (calibrated stacking, gamma {-float(gate['threshold']):.4g})"
    measured = []
    if isinstance(metrics.get("domain_auroc"), (int, float)):
        measured.append(f"domain AUROC {metrics['domain_auroc']:.3f}")
    if isinstance(metrics.get("oracle_H"), (int, float)):
        measured.append(f"oracle-domain H {metrics['oracle_H']:.1f} (every image routed to its true domain: "
                        "the ceiling of any decision)")
    lines = [line + (f"; {', '.join(measured)}" if measured else "")]
    temperature = float(gate.get("temperature", 1.0))
    if temperature != 1.0:
        calibration = (f"- p(unseen) = sigmoid((score - threshold) / {temperature:.4g}), the temperature fitted on "
                       "the validation protocol")
        if isinstance(metrics.get("p_unseen_ece"), (int, float)):
            calibration += f" (test: calibration error {metrics['p_unseen_ece']:.3f})"
        lines.append(calibration)
    return lines
