"""PNG plots of a run: per-class accuracy, the seen/unseen trade-off over gamma and of every gate,
real vs synthetic features."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(run_dir: Path, metrics: dict, outcome) -> list[Path]:
    """outcome: bsegn.app.pipeline.ProtocolOutcome (split, features, run.trained)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    plots = Path(run_dir) / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    split = outcome.split
    seen_names = {split.class_names[int(c)] for c in split.seen_classes}

    per_class = metrics["per_class_gzsl"]
    names = sorted(per_class, key=lambda n: (n not in seen_names, -per_class[n]))
    figure, axis = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
    axis.bar(range(len(names)), [per_class[n] for n in names],
             color=["tab:blue" if n in seen_names else "tab:orange" for n in names])
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    axis.set_ylabel("GZSL accuracy (%)")
    axis.set_title(f"Per-class accuracy (blue: seen, orange: unseen); U {metrics['U']:.1f}, S {metrics['S']:.1f}")
    figure.tight_layout()
    written.append(plots / "per_class_accuracy.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    curve = metrics.get("calibration_curve")
    if curve:
        figure, axis = plt.subplots(figsize=(5, 4))
        axis.plot([r["S"] for r in curve], [r["U"] for r in curve], marker=".")
        best = max(curve, key=lambda r: r["H"])
        axis.scatter([best["S"]], [best["U"]], color="red", zorder=3,
                     label=f"best H {best['H']:.1f} (gamma {best['gamma']:.1f})")
        axis.set_xlabel("seen accuracy S (%)")
        axis.set_ylabel("unseen accuracy U (%)")
        axis.set_title("GZSL trade-off over calibration gamma (validation)")
        axis.legend()
        figure.tight_layout()
        written.append(plots / "calibration_curve.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)

    gates = metrics.get("validation_gates") or (
        metrics.get("gates") if metrics.get("protocol") == "validation" else None)
    if gates and any(row.get("curve") for row in gates.values()):
        written.append(_gate_curves(plt, plots, gates))
    written.append(_real_vs_synthetic(plt, plots, outcome))
    return written


def _gate_curves(plt, plots: Path, gates: dict) -> Path:
    """U against S over each gate's thresholds (validation), the chosen point of each marked."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for kind, row in gates.items():
        curve = row.get("curve") or []
        if not curve:
            continue
        line, = axis.plot([r["S"] for r in curve], [r["U"] for r in curve], marker=".", markersize=2, linewidth=1,
                          label=f"{kind}: H {row['H']:.1f}, AUROC {row['domain_auroc']:.2f}")
        axis.scatter([row["S"]], [row["U"]], color=line.get_color(), zorder=3, edgecolor="black")
    axis.set_xlabel("seen accuracy S (%)")
    axis.set_ylabel("unseen accuracy U (%)")
    axis.set_title("Seen-or-unseen gates over their thresholds (validation)")
    axis.legend(fontsize=7)
    return _save(plt, figure, plots / "gate_curves.png")


def _real_vs_synthetic(plt, plots: Path, outcome, num_classes: int = 5, per_class: int = 60) -> Path:
    """PCA (fitted on the shown real features) of real test features vs synthetic ones, a few unseen classes."""
    split, trained, features = outcome.split, outcome.run.trained, outcome.features
    unseen = [int(c) for c in split.unseen_classes[:num_classes]]
    test = np.asarray(split.loc("test_unseen"))
    real_x, real_y = features.features[test], features.labels[test]
    keep = np.isin(real_y, unseen)
    real_x, real_y = real_x[keep], real_y[keep]
    fake_x, fake_y = trained.synthesize(unseen, per_class)
    fake_x, fake_y = fake_x.cpu().numpy(), fake_y.cpu().numpy()
    mean = real_x.mean(0)
    _, _, components = np.linalg.svd(real_x - mean, full_matrices=False)
    project = components[:2].T
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    colours = plt.get_cmap("tab10")
    for i, c in enumerate(unseen):
        r = (real_x[real_y == c] - mean) @ project
        f = (fake_x[fake_y == c] - mean) @ project
        axis.scatter(r[:, 0], r[:, 1], s=10, color=colours(i), marker="o", label=f"{split.class_names[c]} real")
        axis.scatter(f[:, 0], f[:, 1], s=10, color=colours(i), marker="x", alpha=0.5)
    axis.set_title("Unseen classes: real (o) vs synthetic (x) features, PCA")
    axis.legend(fontsize=6)
    return _save(plt, figure, plots / "real_vs_synthetic.png")


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
