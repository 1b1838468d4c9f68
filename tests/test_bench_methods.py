"""The benches' own methods (bench/eszsl.py, bench/method_configs.py; bench/ is on the tests' path by
tests/conftest.py): ESZSL's closed form against its formula and on a problem it must solve, the ablation and
f-CLSWGAN configs against the options they switch."""
import pytest
import torch
from eszsl import eszsl_projections, eszsl_scores, fit_eszsl
from method_configs import ABLATIONS, METHODS, as_f_clswgan, method_config, without

from bsegn.core.errors import ConfigError
from bsegn.generative.config import BSeGNConfig


def test_eszsl_projection_is_the_papers_formula_for_every_grid_pair():
    """V = (X X^T + gamma I)^-1 X Y A^T (A A^T + lambda I)^-1, written out with inverses, for each pair of a
    grid: the grid's shared solves must give each pair's own V."""
    g = torch.Generator().manual_seed(1)
    features, semantics = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.rand(6, 4, generator=g)
    labels, seen = torch.arange(4).repeat(8)[:30], torch.arange(4)
    x, a = features.t(), semantics.double()[seen].t()
    y = -torch.ones(30, 4, dtype=torch.float64)
    y[torch.arange(30), labels] = 1.0
    grid = eszsl_projections(features, labels, semantics, seen, (0.1, 10.0), (0.01, 1.0))
    assert len(grid) == 4
    for (gamma, lam), projection in grid.items():
        expected = (torch.linalg.inv(x @ x.t() + gamma * torch.eye(5, dtype=torch.float64)) @ x @ y @ a.t()
                    @ torch.linalg.inv(a @ a.t() + lam * torch.eye(4, dtype=torch.float64)))
        assert projection.shape == (5, 4)
        assert torch.allclose(projection.double(), expected, rtol=1e-4, atol=1e-6), (gamma, lam)
        assert torch.equal(fit_eszsl(features, labels, semantics, seen, gamma, lam), projection)


def test_eszsl_closed_form_solves_a_linear_problem():
    g = torch.Generator().manual_seed(0)
    semantics = torch.randn(12, 6, generator=g)
    mapping = torch.randn(6, 20, generator=g)
    labels = torch.arange(8).repeat_interleave(15)
    features = semantics[labels] @ mapping + 0.1 * torch.randn(len(labels), 20, generator=g)
    projection = fit_eszsl(features, labels, semantics, torch.arange(8), gamma=0.1, lam=0.1)
    unseen = torch.arange(8, 12)
    test_labels = unseen.repeat_interleave(10)
    test = semantics[test_labels] @ mapping + 0.1 * torch.randn(len(test_labels), 20, generator=g)
    predicted = unseen[eszsl_scores(projection, test, semantics, unseen).argmax(1)]
    assert (predicted == test_labels).float().mean() > 0.5  # chance 0.25; measured 0.6


def test_each_ablation_removes_exactly_its_part_and_f_clswgan_turns_every_part_off():
    full = BSeGNConfig(fusion_weight=1.0, lambda_cls=0.0, lr=3e-4, hidden=64)
    expected = {"fem": {"fem": False}, "fem_s2f": {"lambda_s2f": 0.0}, "balance": {"lambda_bal": 0.0},
                "fem_boosts_g": {"lambda_emb": 0.0}, "cycle": {"lambda_cyc": 0.0},
                "mfim_levels": {"mfim_levels": ("x",)}}
    assert ABLATIONS == expected
    for part, change in expected.items():
        assert without(full, part) == full.replace(**change) != full, part
        assert method_config(f"bsegn-no-{part}", full) == without(full, part) and f"bsegn-no-{part}" in METHODS
    with pytest.raises(ConfigError, match="not an ablation part"):
        without(full, "calibration")
    base = as_f_clswgan(full)
    assert not (base.fem or base.uses_decoder or base.uses_fusion) and base.lambda_cls == 0.01  # its paper's beta
    assert base.mfim_levels == ("x",) and base.lr == full.lr and base.hidden == full.hidden
    assert method_config("f-clswgan", full) == base and method_config("bsegn", full) is full
    assert METHODS[:3] == ("eszsl", "f-clswgan", "bsegn")
