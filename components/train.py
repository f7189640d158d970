"""LazyAR (or AR) generator training with VSL, the baselines it is compared with, and full-catalogue
leave-one-out evaluation."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def train_generator(
    config: dict,
    splits: Input[Dataset],
    codebook: Input[Model],
    model: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    feature_repo: Input[Artifact] = None,
):
    """Trains the semantic-ID decoder on the TRAINING rows of `splits` (teacher forcing, VSL) and
    writes the model folder, a report with learning curves, and the run's figures. Trains under
    torchrun with `train.processes` processes (in this process only when summary tokens are on);
    resumes from `train.checkpoint_dir`.
    With `train.launcher: trainjob`, trains in a Kubeflow Trainer TrainJob across nodes instead
    (genrec.train.trainjob), streaming its log here."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet
    from genrec.model.artefact import load_model
    from genrec.sid.codebook import Codebook
    from genrec.train.report import training_report
    from genrec.train.run import run_training
    from genrec.train.summaries import TRAINING_TARGETS, summary_provider_for

    cfg = GenrecConfig.from_dict(config)
    if cfg.train.launcher == "trainjob":
        from genrec.train.trainjob import train_as_trainjob

        # The job's name and shared folder follow the output's URI: a retried step finds its job.
        train_as_trainjob(cfg, "train_generator", model.uri, splits.path, codebook.path, model.path,
                          log=lambda line: print(line, flush=True))
    else:
        work_dir = Path(cfg.train.checkpoint_dir or f"{model.path}.checkpoints")
        # Summary tokens need the splits' rows in this process (their Feast join); a streamed run
        # never holds the splits, they are read a bucket at a time by the trainer.
        in_process = cfg.model.use_summary and cfg.train.examples == "memory"
        frame = read_parquet(splits.path) if in_process else None
        provider = (summary_provider_for(cfg, feature_repo.path if feature_repo is not None else None, frame,
                                         TRAINING_TARGETS) if frame is not None else None)
        if provider is None:
            # torchrun even for one process: the launch a TrainJob's node makes, here in the step's pod.
            with tempfile.TemporaryDirectory() as tmp:
                config_path = Path(tmp) / "config.json"
                config_path.write_text(json.dumps(cfg.to_dict()))
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={cfg.train.processes}", "-m", "genrec.train",
                                "--config", str(config_path), "--splits", splits.path,
                                "--codebook", codebook.path, "--work-dir", str(work_dir),
                                "--model-dir", model.path], check=True)
        else:
            if cfg.train.processes > 1:
                raise ValueError("summary tokens with train.processes > 1 are not wired yet: set "
                                 "train.processes=1 or model.use_summary=false")
            run_training(cfg, frame, Codebook.load(codebook.path, with_items=False), work_dir, model.path,
                         summaries=provider, log=lambda line: print(line, flush=True))
    trained = load_model(model.path)
    record = trained.manifest["training"]
    dataset = splits.metadata.get("dataset", "dataset")
    training_report(record, cfg.to_dict(), f"Generator training ({trained.decoder.kind}): {dataset}").save(
        report.path)
    model.metadata.update({"dataset": dataset, "decoder": trained.decoder.kind, "vsl": cfg.train.vsl,
                           "parameters": trained.manifest["parameters"]})
    final = record["curves"][-1]["metrics"] if record["curves"] else {}
    log_metrics(metrics, {
        "train_seconds": record["train_seconds"], "samples_per_second": record["samples_per_second"],
        "steps": record["steps"], "parameters": trained.manifest["parameters"],
        "finished": float(record["finished"]),
        **{f"valid_subset_{k}": v for k, v in final.items()},
    })


@dsl.component(base_image=BASE_IMAGE)
def fit_baselines(
    config: dict,
    splits: Input[Dataset],
    codebook: Input[Model],
    metrics: Output[Metrics],
):
    """Popularity and an item-ID SASRec (full softmax, `baselines.*`) fitted on the training rows of
    `splits` and evaluated as the evaluate step evaluates the candidate (genrec.baselines.run)."""
    from components.runtime import log_metrics
    from genrec.baselines.run import evaluate_baselines, flat_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet
    from genrec.sid.codebook import Codebook

    cfg = GenrecConfig.from_dict(config)
    item_ids = Codebook.load(codebook.path, with_items=False).item_ids
    results = evaluate_baselines(cfg, read_parquet(splits.path), item_ids,
                                 log=lambda line: print(line, flush=True))
    log_metrics(metrics, flat_metrics(results))


@dsl.component(base_image=BASE_IMAGE)
def evaluate(
    config: dict,
    splits: Input[Dataset],
    model: Input[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    feature_repo: Input[Artifact] = None,
    baselines: Input[Metrics] = None,
):
    """Leave-one-out, full-catalogue evaluation on ALL users: the valid target from the train
    history, the test target from train + valid. Recall, NDCG, Value and coverage at 5 and 10. With
    `train.evaluate_engine: ray`, a Ray task per bucket of users scores them (genrec.evaluate_buckets)."""
    from components.runtime import log_metrics
    from genrec.baselines.run import baseline_figures, compare_with
    from genrec.config import GenrecConfig
    from genrec.evaluate import evaluate as evaluate_model
    from genrec.io import read_parquet
    from genrec.model.artefact import load_model
    from genrec.model.value_tilt import value_tilt_note
    from genrec.train.data import evaluation_requests
    from genrec.train.report import evaluation_report
    from genrec.train.summaries import EVALUATION_TARGETS, summary_provider_for

    cfg = GenrecConfig.from_dict(config)
    trained = load_model(model.path)
    if cfg.train.evaluate_engine == "ray":
        from genrec.evaluate_buckets import evaluate_partitioned

        # A Ray task per bucket of users: the splits are never held whole.
        results = evaluate_partitioned(cfg, splits.path, model.path)
    else:
        frame = read_parquet(splits.path)
        provider = None
        if trained.decoder.summary_dim:
            repo = feature_repo.path if feature_repo is not None else None
            provider = summary_provider_for(cfg, repo, frame, EVALUATION_TARGETS)
        results = {}
        for split in ("valid", "test"):
            requests = evaluation_requests(frame, trained.item_ids, trained.decoder.config.recent_items,
                                           split)
            results[split] = evaluate_model(trained.decoder, requests, trained.tables, cfg.train.beam_widths,
                                            cfg.train.top_k, cfg.train.eval_batch_size, provider,
                                            exclude_history=cfg.train.exclude_history,
                                            value_tilt=trained.value_tilt)
    dataset = splits.metadata.get("dataset", "dataset")
    value_source = splits.metadata.get("value_source", "unknown")
    notes = [f"{dataset}: leave-one-out, full catalogue, all users; beam widths {cfg.train.beam_widths}, "
             f"top-{cfg.train.top_k}; decoder {trained.decoder.kind}"
             + ("; a user's own last items are never recommended (train.exclude_history)." if
                cfg.train.exclude_history else "."),
             f"Value@K uses the {value_source} value column (simulated bids where the data set has none).",
             value_tilt_note(trained.value_tilt)]
    figures = {f"{split}_{k}": v for split, result in results.items() for k, v in result.items()}
    compared = compare_with(cfg, figures, baselines.path if baselines is not None else None)
    evaluation_report(results, notes, f"Evaluation: {dataset}", compared).save(report.path)
    # The baselines' figures ride along (baseline_<name>_<split>_<metric>): the gate reads them here.
    log_metrics(metrics, {**figures, **baseline_figures(compared)})
