"""VISTA summariser training, and materialising its snapshots into a run's Feast feature repo."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def train_summarizer(
    config: dict,
    splits: Input[Dataset],
    summarizer: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Trains the VISTA summariser on the training split only; validates on the valid targets."""
    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet
    from genrec.vista.report import training_report
    from genrec.vista.train import train_summarizer as train

    cfg = GenrecConfig.from_dict(config)
    result = train(read_parquet(splits.path), cfg)
    result.summarizer.save(summarizer.path)
    summarizer.metadata.update({
        "framework": "torch",
        "summary_tokens": cfg.vista.summary_tokens,
        "dim": cfg.vista.dim,
        "items": len(result.summarizer.vocab),
    })
    training_report(result, cfg.data.dataset).save(report.path)
    log_metrics(metrics, result.metrics)


@dsl.component(base_image=BASE_IMAGE)
def materialize_summaries(
    config: dict,
    splits: Input[Dataset],
    summarizer: Input[Model],
    feature_repo: Output[Artifact],
    summaries: Output[Dataset],
    metrics: Output[Metrics],
    item_sids: Input[Dataset] = None,
):
    """Snapshots every user's summary on the refresh schedule into a new self-contained Feast repo
    folder (offline parquet, registry, online store), and writes each user's newest snapshot as a
    partitioned dataset; bucket by bucket on Ray, or in memory (data.engine). `item_sids` (a parquet
    `item_id, c0, c1, ...`) fills the item_sid view when given."""
    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.features.materialize import materialize_from_splits
    from genrec.io import read_parquet

    cfg = GenrecConfig.from_dict(config)
    codes = read_parquet(item_sids.path) if item_sids is not None else None
    outcome = materialize_from_splits(cfg, splits.path, summarizer.path, feature_repo.path, summaries.path,
                                      codes)
    feature_repo.metadata.update({
        "kind": "feast-feature-repo",
        "online_store": cfg.features.online_store,
        "offline_store": "ray" if cfg.data.engine == "ray" else "file",
        "schedule": outcome.schedule.describe(),
        "usage": "feast -c <this folder> apply | materialize | ui",
    })
    summaries.metadata.update({"content": "newest snapshot per user", "schedule": outcome.schedule.describe(),
                               "buckets": outcome.latest.buckets})
    log_metrics(metrics, outcome.metrics)
