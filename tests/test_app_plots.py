"""The run's gate plot: every gate with a validation curve is drawn, its chosen point marked."""
import matplotlib

matplotlib.use("Agg")


def test_gate_curves_plot_draws_each_gate_with_a_curve(tmp_path):
    import matplotlib.pyplot as plt

    from bsegn.app.plots import _gate_curves

    curve = [{"threshold": t, "U": 10.0 * t, "S": 100 - 10.0 * t, "H": 5.0} for t in range(5)]
    gates = {"stacking": {"U": 20.0, "S": 80.0, "H": 32.0, "domain_auroc": 0.7, "curve": curve},
             "gaussian": {"U": 30.0, "S": 70.0, "H": 42.0, "domain_auroc": 0.8, "curve": curve},
             "energy": {"U": 1.0, "S": 1.0, "H": 1.0, "domain_auroc": 0.5}}  # no curve: a given threshold
    drawn = []
    original = plt.subplots

    def spy(*args, **kwargs):
        figure, axis = original(*args, **kwargs)
        drawn.append(axis)
        return figure, axis

    plt.subplots = spy
    try:
        path = _gate_curves(plt, tmp_path, gates)
    finally:
        plt.subplots = original
    assert path == tmp_path / "gate_curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [line.get_label() for line in drawn[0].get_lines()]
    assert labels == ["stacking: H 32.0, AUROC 0.70", "gaussian: H 42.0, AUROC 0.80"]
    marked = [tuple(c.get_offsets()[0]) for c in drawn[0].collections]
    assert marked == [(80.0, 20.0), (70.0, 30.0)]
