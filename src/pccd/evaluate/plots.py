"""Figures of the evaluation commands: PNG files with titles, axis labels and units.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas directly (no
``pyplot``), so importing or calling this module never changes the user's backend or opens a
window, and it works on a headless machine. Every function takes the output path and returns
it. Distributions are shown as a box plot (whiskers at 1.5 IQR, the paper's "effective"
range) with a kernel density estimate beside each box, so both the outliers and the shape are
visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

from pccd.evaluate.matching import effective_rate, whisker_bounds

DPI = 130


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _kde_outline(values: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(grid, density) of a Gaussian KDE, or None when it is undefined (too few/identical)."""
    if len(values) < 3 or np.ptp(values) == 0:
        return None
    try:
        kde = gaussian_kde(values)
    except (np.linalg.LinAlgError, ValueError):
        return None
    grid = np.linspace(lo, hi, 256)
    return grid, kde(grid)


def box_kde(
    groups: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    clip_quantiles: tuple[float, float] | None = (0.005, 0.995),
    show_effective_rate: bool = True,
) -> Path:
    """Box plots (1.5-IQR whiskers) with a KDE drawn to the right of each box.

    ``clip_quantiles`` limits the y range to the bulk of all values (extreme outliers would
    otherwise flatten every box); the box statistics still use all values. Each label gets
    ``n`` and, with ``show_effective_rate``, the share inside the whiskers.
    """
    labels = list(groups)
    data = [_finite(groups[k]) for k in labels]
    fig, axes = _figure(max(4.5, 1.8 * len(labels) + 1.5), 4.2)
    ax = axes[0, 0]
    nonempty = [d for d in data if len(d)]
    if nonempty:
        everything = np.concatenate(nonempty)
        lo, hi = (
            np.quantile(everything, clip_quantiles)
            if clip_quantiles
            else (everything.min(), everything.max())
        )
        for d in nonempty:  # keep the whiskers visible
            wlo, whi = whisker_bounds(d)
            lo, hi = min(lo, max(wlo, d.min())), max(hi, min(whi, d.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        lo, hi = lo - pad, hi + pad
        positions = np.arange(1, len(labels) + 1)
        ax.boxplot(
            [d if len(d) else [np.nan] for d in data],
            positions=positions,
            widths=0.3,
            whis=1.5,
            showfliers=True,
            flierprops={"markersize": 2, "alpha": 0.4},
        )
        for pos, d in zip(positions, data, strict=True):
            outline = _kde_outline(d, lo, hi)
            if outline is None:
                continue
            grid, dens = outline
            width = 0.35 * dens / dens.max()
            ax.fill_betweenx(grid, pos + 0.2, pos + 0.2 + width, alpha=0.35, color="C0")
        ax.set_ylim(lo, hi)
    ticks = []
    for k, d in zip(labels, data, strict=True):
        text = f"{k}\nn={len(d)}"
        if show_effective_rate and len(d):
            text += f"\nin whiskers {100 * effective_rate(d):.1f}%"
        ticks.append(text)
    ax.set_xticks(np.arange(1, len(labels) + 1), ticks)
    ax.set_xlim(0.5, len(labels) + 0.9)
    ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def parity_plot(
    panels: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    unit: str,
    equal_limits: tuple[float, float] | None = None,
) -> Path:
    """True (x) vs predicted (y) scatter per panel with the y = x line.

    ``panels`` are ``(name, true, predicted)``; ``unit`` goes into both axis labels.
    """
    fig, axes = _figure(4.2 * len(panels), 4.8, 1, len(panels))
    for ax, (name, true, pred) in zip(axes[0], panels, strict=True):
        t, p = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
        ok = np.isfinite(t) & np.isfinite(p)
        t, p = t[ok], p[ok]
        ax.scatter(t, p, s=18 if len(t) < 200 else 5, alpha=0.5, edgecolors="none")
        if equal_limits is not None:
            lo, hi = equal_limits
        elif len(t):
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            pad = 0.05 * (hi - lo) if hi > lo else 0.5
            lo, hi = lo - pad, hi + pad
        else:
            lo, hi = 0.0, 1.0
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"original {name} ({unit})")
        ax.set_ylabel(f"reconstructed {name} ({unit})")
        ax.set_title(f"{name} (n={len(t)})")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def count_heatmap(
    true_counts: Sequence[int],
    pred_counts: Sequence[int | None],
    path: str | Path,
    *,
    title: str,
    max_atoms: int = 16,
) -> Path:
    """Heatmap of original vs reconstructed atoms per cell; a failed decode is its own column."""
    size = max(
        max_atoms, max(true_counts, default=1), max((p or 0 for p in pred_counts), default=1)
    )
    grid = np.zeros((size, size + 1), dtype=np.int64)
    for t, p in zip(true_counts, pred_counts, strict=True):
        grid[int(t) - 1, size if p is None else int(p) - 1] += 1
    fig, axes = _figure(8.0, 6.8)
    ax = axes[0, 0]
    shown = np.where(grid > 0, grid, np.nan)
    # a log scale keeps the rare off-diagonal cells visible next to a crowded diagonal
    norm = LogNorm(vmin=1, vmax=grid.max()) if grid.max() > 10 else None
    image = ax.imshow(shown, origin="lower", cmap="viridis", aspect="auto", norm=norm)
    for (i, j), v in np.ndenumerate(grid):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="w")
    ax.set_xticks(range(size + 1), [*(str(k) for k in range(1, size + 1)), "failed"])
    ax.set_yticks(range(size), [str(k) for k in range(1, size + 1)])
    ax.set_xlabel("reconstructed atoms per cell")
    ax.set_ylabel("original atoms per cell")
    total = max(len(true_counts), 1)
    correct = int(np.trace(grid[:, :size]))
    ax.set_title(f"{title}\natom count correct: {correct}/{total} ({100 * correct / total:.2f}%)")
    fig.colorbar(image, ax=ax, label="crystals")
    return _save(fig, path)


def curves(
    x: Sequence[float],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    percent: bool = True,
) -> Path:
    """Side-by-side panels of lines over one variable (e.g. rates over the noising step t).

    ``panels[panel_title][series] = values``; a series name keeps its colour in every panel,
    so e.g. "atom count" reads the same on the left and the right.
    """
    names = list(dict.fromkeys(k for series in panels.values() for k in series))
    colours = {k: f"C{i % 10}" for i, k in enumerate(names)}
    fig, axes = _figure(5.5 * len(panels), 4.5, 1, len(panels))
    scale = 100.0 if percent else 1.0
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        for name, ys in series.items():
            ax.plot(x, scale * np.asarray(ys, dtype=float), marker="o", label=name,
                    color=colours[name])  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if percent:
            ax.set_ylim(-3, 103)
    fig.suptitle(title)
    return _save(fig, path)


def metric_panels(
    values: Mapping[str, Sequence[float]],
    units: Mapping[str, str],
    missing: Mapping[str, int],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """One box + KDE panel per metric (metrics have different units, so no shared axis)."""
    names = list(values)
    ncols = min(4, max(1, len(names)))
    nrows = int(np.ceil(len(names) / ncols)) or 1
    fig, axes = _figure(3.3 * ncols, 3.6 * nrows, nrows, ncols)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(names):
            ax.set_visible(False)
            continue
        name = names[k]
        d = _finite(values[name])
        if len(d):
            ax.boxplot([d], positions=[1], widths=0.3, whis=1.5, flierprops={"markersize": 2})
            lo, hi = float(d.min()), float(d.max())
            pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
            outline = _kde_outline(d, lo - pad, hi + pad)
            if outline is not None:
                grid, dens = outline
                ax.fill_betweenx(grid, 1.2, 1.2 + 0.35 * dens / dens.max(), alpha=0.35)
            ax.set_ylim(lo - pad, hi + pad)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.6, 1.7)
        ax.set_xticks([1], [f"n={len(d)}, missing={missing.get(name, 0)}"])
        ax.set_ylabel(f"{name} ({units.get(name, '')})")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def histogram_comparison(
    generated: Sequence[float],
    reference: Sequence[float],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    bins: int | Sequence[float] = 40,
    discrete: bool = False,
) -> Path:
    """Normalised histograms of one property for generated and reference crystals."""
    g, r = _finite(generated), _finite(reference)
    fig, axes = _figure(6.0, 4.0)
    ax = axes[0, 0]
    if discrete:
        lo = int(min(g.min() if len(g) else 1, r.min() if len(r) else 1))
        hi = int(max(g.max() if len(g) else 1, r.max() if len(r) else 1))
        bins = np.arange(lo - 0.5, hi + 1.5, 1.0)
    elif isinstance(bins, int) and (len(g) or len(r)):
        both = np.concatenate([g, r])
        bins = np.linspace(np.quantile(both, 0.001), np.quantile(both, 0.999), bins + 1)
    for d, label in ((r, f"reference (n={len(r)})"), (g, f"generated (n={len(g)})")):
        if len(d):
            ax.hist(d, bins=bins, density=True, alpha=0.5, label=label)
    if discrete and len(bins) <= 40:
        ax.set_xticks(np.arange(bins[0] + 0.5, bins[-1], 1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability density" if not discrete else "fraction of crystals")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def bar_comparison(
    groups: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    percent: bool = True,
) -> Path:
    """Grouped bars: ``groups[series][category]`` (e.g. match rate per method and k)."""
    series = list(groups)
    categories = list(dict.fromkeys(c for s in series for c in groups[s]))
    fig, axes = _figure(max(5.0, 1.2 * len(categories) * len(series) / 2 + 3), 4.2)
    ax = axes[0, 0]
    width = 0.8 / max(len(series), 1)
    scale = 100.0 if percent else 1.0
    for k, name in enumerate(series):
        xs = np.arange(len(categories)) + (k - (len(series) - 1) / 2) * width
        ys = [scale * groups[name].get(c, np.nan) for c in categories]
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f" if percent else "%.3g", fontsize=7)
    ax.set_xticks(np.arange(len(categories)), categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
