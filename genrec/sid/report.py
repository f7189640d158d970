"""The codebook's HTML report and its plot of code usage per level."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from genrec.report import HtmlReport  # noqa: E402
from genrec.sid.codebook import Codebook  # noqa: E402


def plot_code_usage(codebook: Codebook, title: str = "") -> Figure:
    """One panel per level: items per code, codes sorted by use, against the even share n / K.

    The last panel is the dedup level: how many items sit behind each L-prefix.
    """
    depth = codebook.depth
    fig, axes = plt.subplots(1, depth, figsize=(3.6 * depth, 3.0), squeeze=False)
    n = len(codebook)
    for level, ax in enumerate(axes[0]):
        if level < codebook.code_levels:
            counts = np.bincount(codebook.codes[:, level], minlength=codebook.level_sizes[level])
            ranked = np.sort(counts)[::-1]
            ax.bar(np.arange(len(ranked)), ranked, width=1.0, color="#4c72b0")
            ax.axhline(n / len(ranked), color="#c44e52", lw=1, ls="--", label="even share")
            used = (counts > 0).sum()
            ax.set_title(f"level {level}: {used}/{len(counts)} codes used", fontsize=9)
            ax.set_xlabel("code rank")
            if level == 0:
                ax.set_ylabel("items")
                ax.legend(fontsize=7)
        else:
            _, group_sizes = np.unique(codebook.codes[:, :-1], axis=0, return_counts=True)
            sizes, groups = np.unique(group_sizes, return_counts=True)
            ax.bar(sizes, groups * sizes / n, color="#55a868")
            ax.set_title(f"dedup level: up to {group_sizes.max()} per prefix", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("items sharing the L-prefix")
            ax.set_ylabel("share of items")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def codebook_report(codebook: Codebook, title: str = "UA-SID codebook") -> HtmlReport:
    metrics = codebook.metrics
    report = HtmlReport(title)
    report.heading("Summary").figures({
        "items": len(codebook),
        "levels x codes": f"{codebook.code_levels} x {codebook.level_sizes[0]} + dedup "
                          f"({codebook.level_sizes[-1]})",
        "quantiser": codebook.config.quantizer + (" (balanced)" if codebook.config.balanced else ""),
        "feature parts": ", ".join(codebook.parts),
        "collision rate before dedup": metrics.get("collision_rate", float("nan")),
        "items needing a dedup index > 0": metrics.get("duplicate_rate", float("nan")),
        "prefix coherence, leaf category (random)":
            f"{metrics.get('prefix_coherence_leaf', float('nan')):.3f} "
            f"({metrics.get('prefix_coherence_leaf_random', float('nan')):.3f})",
        "prefix coherence, any category (random)":
            f"{metrics.get('prefix_coherence_any', float('nan')):.3f} "
            f"({metrics.get('prefix_coherence_any_random', float('nan')):.3f})",
        "build seconds": metrics.get("build_seconds", float("nan")),
    })
    for note in codebook.notes:
        report.note(note)
    report.heading("Code use per level").table(
        ["level", "utilisation", "entropy (bits)", "entropy / max", "max items per code"],
        [[level, metrics.get(f"level{level}_utilisation"), metrics.get(f"level{level}_entropy_bits"),
          metrics.get(f"level{level}_entropy_ratio"), metrics.get(f"level{level}_max_items_per_code")]
         for level in range(codebook.code_levels)],
    )
    report.plot(plot_code_usage(codebook), "Items per code at each level, codes sorted by use; the dashed "
                "line is the even share. Last panel: the dedup level.")
    report.note("Collision rate: share of items whose L-level code is shared with another item, before "
                "the dedup level makes IDs unique. Prefix coherence: share of items carrying the most "
                "common category of their level-1 code; 'random' is the same figure for a random "
                "grouping of the same sizes.")
    return report
