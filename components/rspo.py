"""RSPO fine-tuning of the VSL generator, between train_generator and evaluate."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def finetune_rspo(
    config: dict,
    splits: Input[Dataset],
    vsl_model: Input[Model],
    model: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Fine-tunes `vsl_model` with RSPO (or the DPO ablation, `rspo.loss`) on the TRAINING rows of
    `splits`: beam-searched candidate lists, value rewards, the VSL model as frozen reference. Writes
    the tuned model folder (with pi_ref and the optimiser state, so continual updates can follow),
    a report with the loss curve and validation before/after, and the run's figures. With
    `train.launcher: trainjob`, fine-tunes in a Kubeflow Trainer TrainJob across nodes instead
    (genrec.train.trainjob), streaming its log here."""
    import dataclasses

    import matplotlib.pyplot as plt

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet
    from genrec.model.artefact import load_model
    from genrec.report import HtmlReport
    from genrec.train.rspo import finetune, save_rspo_model

    cfg = GenrecConfig.from_dict(config)
    start = load_model(vsl_model.path)
    if cfg.train.launcher == "trainjob":
        from genrec.train.trainjob import finetune_as_trainjob

        # The job's name and shared folder follow the output's URI: a retried step finds its job.
        finetune_as_trainjob(cfg, "finetune_rspo", model.uri, splits.path, vsl_model.path, model.path,
                             log=lambda line: print(line, flush=True))
    else:
        # A streamed run (rspo.examples=stream) reads the splits a bucket at a time.
        source = splits.path if cfg.rspo.examples == "stream" else read_parquet(splits.path)
        result = finetune(cfg, source, start, vsl_model.path, log=lambda line: print(line, flush=True))
        save_rspo_model(model.path, result, start.item_ids, vsl_model.path, value_tilt=start.value_tilt)
    stats = load_model(model.path).manifest["rspo"]
    dataset = splits.metadata.get("dataset", "dataset")
    keys = ("recall@10", "ndcg@10", "value@10")
    page = HtmlReport(f"RSPO fine-tuning ({cfg.rspo.loss}): {dataset}")
    page.note("Validation figures are on a user subset (rspo.valid_users); quote the evaluate step's "
              "test figures. Training used only the train rows of the splits.")
    page.figures({"steps": stats["steps"], "train_seconds": stats["train_seconds"],
                  "requests": stats["requests"], "finished": stats["finished"]})
    page.table(["metric", "VSL (before)", "after"],
               [[k, stats["valid_before"][k], stats["valid_after"][k]] for k in keys])
    curve = stats["curve"]
    if curve:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        steps = [point["step"] for point in curve]
        for name in ("loss", "preference", "kl"):
            ax.plot(steps, [point[name] for point in curve], marker="o", label=name)
        ax.set_xlabel("step")
        ax.legend()
        page.plot(fig, "Training loss (gain-weighted preference + kl_weight x list KL) per logged window.")
    page.heading("RSPO configuration")
    page.figures({f"rspo.{k}": v for k, v in dataclasses.asdict(cfg.rspo).items()})
    page.save(report.path)
    model.metadata.update({"dataset": dataset, "decoder": start.decoder.kind, "rspo_loss": cfg.rspo.loss,
                           "parameters": start.manifest["parameters"]})
    log_metrics(metrics, {
        "steps": stats["steps"], "train_seconds": stats["train_seconds"],
        "finished": float(stats["finished"]),
        **{f"valid_subset_before_{k}": stats["valid_before"][k] for k in keys},
        **{f"valid_subset_after_{k}": stats["valid_after"][k] for k in keys},
    })

