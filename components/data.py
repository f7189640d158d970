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
    Expectations. On failure it prints the short report and fails; no data artefact is written."""
    import sys

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.data.ingest import ingest
    from genrec.data.schema import CATALOGUE, INTERACTIONS
    from genrec.data.validation import DataValidationError
    from genrec.io import write_parquet

    cfg = GenrecConfig.from_dict(config)
    try:
        dataset = ingest(cfg, data_docs_dir=data_docs.path)
    except DataValidationError as exc:
        print(f"DATA VALIDATION FAILED\n{exc}", file=sys.stderr, flush=True)
        raise
    write_parquet(dataset.interactions, interactions.path, INTERACTIONS.arrow)
    write_parquet(dataset.catalogue, catalogue.path, CATALOGUE.arrow)
    data_docs.metadata["index"] = dataset.validation.data_docs_index or ""
    for artefact in (interactions, catalogue):
        artefact.metadata.update({
            "dataset": dataset.info.name,
            "value_source": dataset.info.value_source,
            "has_timestamps": dataset.info.has_timestamps,
            "notes": "; ".join(dataset.info.notes),
        })
    log_metrics(metrics, {
        "users": dataset.interactions["user_id"].nunique(),
        "items": len(dataset.catalogue),
        "interactions": len(dataset.interactions),
        **{f"validation_{k}": v for k, v in dataset.validation.statistics.items()
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
    """Leave-one-out split plus a data set report with plots."""
    import json

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.data.schema import DatasetInfo
    from genrec.data.split import leave_one_out
    from genrec.data.stats import dataset_stats, stats_report
    from genrec.io import read_parquet, write_parquet

    GenrecConfig.from_dict(config)  # fail early on a bad config
    frame = leave_one_out(read_parquet(interactions.path))
    items = read_parquet(catalogue.path)
    write_parquet(frame, splits.path)
    stats = dataset_stats(frame, items)
    info = DatasetInfo(
        name=interactions.metadata.get("dataset", "dataset"),
        source=interactions.uri,
        has_timestamps=bool(interactions.metadata.get("has_timestamps", True)),
        value_source=interactions.metadata.get("value_source", "unknown"),
        notes=[n for n in interactions.metadata.get("notes", "").split("; ") if n],
    )
    stats_report(frame, items, info, stats).save(report.path)
    splits.metadata.update({"stats": json.dumps(stats), "dataset": info.name,
                            "value_source": info.value_source})
    log_metrics(metrics, stats)
