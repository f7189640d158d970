"""HTML reports of a training run (learning curves) and of an evaluation (metrics per split)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from genrec.report import HtmlReport

CURVE_METRICS = ("recall@10", "ndcg@10")


def learning_curve_figure(curves: list[dict[str, Any]], title: str = "") -> Any:
    """Validation Recall/NDCG@10 against training seconds, and the training loss per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    evaluated = [c for c in curves if c.get("metrics")]
    for name in CURVE_METRICS:
        left.plot([c["train_seconds"] / 60 for c in evaluated], [c["metrics"].get(name, float("nan"))
                                                                  for c in evaluated], marker="o", label=name)
    left.set_xlabel("training minutes")
    left.set_ylabel("validation (subset)")
    left.legend()
    right.plot([c["epoch"] for c in curves], [c["loss"] for c in curves], marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel("weighted training loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_report(record: dict[str, Any], config: dict[str, Any], title: str) -> HtmlReport:
    report = HtmlReport(title)
    report.heading("Run")
    report.figures({k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))})
    report.plot(learning_curve_figure(record.get("curves", [])),
                "Validation metrics are on a user subset (train.valid_users) and run above test; "
                "quote the evaluate step's test figures.")
    rows = [[c["epoch"], c["step"], c["train_seconds"], c["loss"],
             *(c.get("metrics", {}).get(k, "") for k in CURVE_METRICS)] for c in record.get("curves", [])]
    report.table(["epoch", "step", "train s", "loss", *CURVE_METRICS], rows)
    report.heading("Model and training configuration")
    report.figures({f"model.{k}": v for k, v in config["model"].items()})
    report.figures({f"train.{k}": v for k, v in config["train"].items()})
    return report


# The figures the side-by-side comparison shows, per model.
COMPARED = ("test_recall@10", "test_ndcg@10", "test_value@10", "valid_recall@10", "valid_ndcg@10")


def evaluation_report(results: dict[str, dict[str, float]], notes: list[str], title: str,
                      compared: dict[str, dict[str, float]] | None = None) -> HtmlReport:
    """The candidate's metrics per split; with `compared` ({model: {"<split>_<metric>": value}}: the
    candidate, the baselines, the deployed model) also a side-by-side table and plot."""
    report = HtmlReport(title)
    for note in notes:
        report.note(note)
    if compared:
        report.heading("Candidate, baselines and deployed model")
        report.table(["metric", *compared], [[name, *(m.get(name, "") for m in compared.values())]
                                             for name in COMPARED])
        report.plot(comparison_figure(compared), "Test figures of each model on the same split and protocol.")
        report.heading("Candidate")
    names = sorted({k for metrics in results.values() for k in metrics})
    rows = [[name, *(m.get(name, "") for m in results.values())] for name in names]
    report.table(["metric", *results], rows)
    return report


def comparison_figure(compared: dict[str, dict[str, float]]) -> Any:
    shown = ("test_recall@10", "test_ndcg@10")
    fig, axis = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(len(compared), 1)
    for index, (model, figures) in enumerate(compared.items()):
        axis.bar([i + index * width for i in range(len(shown))], [figures.get(m, 0.0) for m in shown], width,
                 label=model)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], shown)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return fig
