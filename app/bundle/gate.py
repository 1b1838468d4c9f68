"""The bundle's seen-or-unseen decision (bsegn.generative.gates): how it is stored, checked and read back.

    config.json  "gate": {"kind": "gaussian", "threshold": 12.5, "temperature": 30.1}   (gate.metadata())
    model.safetensors  gate.*   the gate's state_dict (Gaussian means and precision, the learned gate's
                                MLP; nothing for stacking, max_softmax and energy), covered by the
                                model's sha256 like every other tensor; each gate kind (de)serialises its
                                own (the registry: bsegn.generative.gate_registry)

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


def gate_from_bundle(config: dict[str, Any], state: dict, dim: int, folder: Path, *, decoder: bool = True):
    """The bundle's DomainGate from its config (checked) and its gate.* tensors (state, prefix removed);
    `dim`: the mFIM feature dimension the gate reads, `decoder`: the model has a semantic decoder.

    The gate kind restores itself from its own tensors (bsegn.generative.gates.gate_from_state: the
    registry's from_state, then a strict load_state_dict, which refuses missing, extra and misshapen
    tensors); here the restored gate is held against the model: every size at least 1, the mFIM width the
    model's, a semantic margin only where the model has a decoder. BundleError when anything does not fit."""
    from bsegn.generative.gates import gate_class, gate_from_state

    kind = config["gate"]["kind"]
    if gate_class(kind).requires_decoder and not decoder:
        raise BundleError(f"{folder}: the {kind} gate reads the model's semantic decoder and this model has no "
                          "semantic decoder (trained with lambda_cyc 0): the bundle was edited; re-run train.py")
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    try:
        gate = gate_from_state(config["gate"], {name: tensor.float() for name, tensor in state.items()})
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as error:
        problem = " ".join(str(error).split())[:300]  # load_state_dict's message spans lines: one line here
    else:
        problem = _misfit(gate, dim, decoder)
    if problem:
        raise BundleError(f"{folder}: the {kind} gate's tensors in model.safetensors do not fit it ({problem}; found "
                          f"{found or 'none'} with {dim}-d mFIM features): the bundle was edited or damaged; "
                          "re-copy it or re-run train.py")
    return gate


def _misfit(gate, dim: int, decoder: bool) -> str | None:
    """Why a restored gate cannot serve a model of `dim`-d mFIM features (with a decoder or not), or None."""
    if any(size < 1 for tensor in gate.state_dict().values() for size in tensor.shape):
        return "a tensor of size 0"
    if gate.reads_integrated and gate.feature_dim != dim:
        return f"it reads {gate.feature_dim}-d features"
    if gate.uses_semantic_margin and not decoder:
        return "it reads a semantic margin, which needs a semantic decoder the model does not have"
    return None


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
