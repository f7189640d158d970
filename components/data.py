"""Ingest + validate, and the leave-one-out split."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def ingest_and_validate(
    config: dict,
    interactions: Output[Dataset],
    catalogue: Output[Dataset],
    data_docs: Output[Artifact],
    metrics: Output[Metrics],
):
    """Converts the configured source into the data contract and validates it with Great
    Expectations, on Ray (data.engine) or in memory. The interactions artefact is a folder of user
    buckets (genrec.data.partitioned). On failure it prints the short report and fails; no data
    artefact is written."""
    import sys

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.data.ingest_step import ingest_to_artefacts
    from genrec.data.validation import DataValidationError

    cfg = GenrecConfig.from_dict(config)
    try:
        outcome = ingest_to_artefacts(cfg, interactions.path, catalogue.path, data_docs_dir=data_docs.path)
    except DataValidationError as exc:
        print(f"DATA VALIDATION FAILED\n{exc}", file=sys.stderr, flush=True)
        raise
    data_docs.metadata["index"] = outcome.validation.data_docs_index or ""
    for artefact in (interactions, catalogue):
        artefact.metadata.update({
            "dataset": outcome.info.name,
            "value_source": outcome.info.value_source,
            "has_timestamps": outcome.info.has_timestamps,
            "notes": "; ".join(outcome.info.notes),
        })
    interactions.metadata.update({"buckets": outcome.partitioning.buckets, "engine": outcome.engine})
    log_metrics(metrics, {
        "users": outcome.users,
        "items": outcome.items,
        "interactions": outcome.interactions,
        **{f"validation_{k}": v for k, v in outcome.validation.statistics.items()
           if isinstance(v, (int, float))},
    })


@dsl.component(base_image=BASE_IMAGE)
def split_interactions(
    config: dict,
    interactions: Input[Dataset],
    catalogue: Input[Dataset],
    splits: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Leave-one-out split (bucket by bucket on Ray, or in memory) plus a data set report with
    plots."""
    import json

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.data.schema import DatasetInfo
    from genrec.data.split_step import split_to_artefact
    from genrec.data.stats import dataset_stats, stats_report
    from genrec.io import read_parquet

    cfg = GenrecConfig.from_dict(config)
    outcome = split_to_artefact(cfg, interactions.path, splits.path)
    items = read_parquet(catalogue.path)
    stats = dataset_stats(outcome.profile, items)
    info = DatasetInfo(
        name=interactions.metadata.get("dataset", "dataset"),
        source=interactions.uri,
        has_timestamps=bool(interactions.metadata.get("has_timestamps", True)),
        value_source=interactions.metadata.get("value_source", "unknown"),
        notes=[n for n in interactions.metadata.get("notes", "").split("; ") if n],
    )
    stats_report(outcome.profile, items, info, stats).save(report.path)
    splits.metadata.update({"stats": json.dumps(stats), "dataset": info.name,
                            "value_source": info.value_source, "buckets": outcome.partitioning.buckets})
    log_metrics(metrics, stats)
