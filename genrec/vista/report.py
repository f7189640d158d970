"""The HTML report of a summariser training run."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from genrec.report import HtmlReport
from genrec.vista.train import TrainingResult


def training_report(result: TrainingResult, dataset: str = "") -> HtmlReport:
    cfg = result.summarizer.config
    report = HtmlReport(f"VISTA summariser{f' — {dataset}' if dataset else ''}")
    report.note(f"K = {cfg.summary_tokens} summary tokens of d = {cfg.dim} ({cfg.heads} heads), trained on "
                "the training split only. Validation scores each user's valid target over the whole "
                "catalogue by target attention to the summary of their training history, beside "
                "most-popular.")
    report.heading("Figures").figures(result.metrics)

    fig = Figure(figsize=(9, 3.2))
    losses, ranks = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [e.epoch for e in result.epochs]
    losses.plot(epochs, [e.next_item_loss for e in result.epochs], marker="o", label="next item")
    losses.plot(epochs, [e.reconstruction_loss for e in result.epochs], marker="o", label="reconstruction")
    losses.set_xlabel("epoch")
    losses.set_ylabel("sampled-softmax loss")
    losses.legend()
    if len(result.valid_ranks):
        ranks.hist(np.log10(result.valid_ranks + 1), bins=40)
    ranks.set_xlabel("log10(1 + rank of the valid target)")
    ranks.set_ylabel("users")
    report.plot(fig, "Training losses per epoch, and where the validation targets rank.")
    report.heading("Epochs").table(
        ["epoch", "loss", "next item", "reconstruction", "seconds"],
        [[e.epoch, e.loss, e.next_item_loss, e.reconstruction_loss, e.seconds] for e in result.epochs])
    return report
