"""UA-SID codebook: item features -> balanced residual quantisation -> unique IDs + prefix trie."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def build_codebook(
    config: dict,
    splits: Input[Dataset],
    catalogue: Input[Dataset],
    sid_table: Output[Dataset],
    codebook: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Builds the semantic-ID codebook from the catalogue and the TRAINING rows of `splits` (their
    item co-occurrence, counted bucket by bucket on Ray or in memory per data.engine).

    Writes the SID table (item_id, c0..cL) as parquet, the codebook folder (trie, centroids,
    config, metrics), an HTML report with the code use per level, and the quality figures.
    """
    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet, write_parquet
    from genrec.sid.codebook import build_codebook as build
    from genrec.sid.codebook import codebook_order
    from genrec.sid.cooccurrence import cooccurrence_of_splits
    from genrec.sid.report import codebook_report

    cfg = GenrecConfig.from_dict(config)
    items = read_parquet(catalogue.path)
    # The co-occurrence counts are the only part that reads the interactions: bucket by bucket.
    counts = None
    if cfg.sid.use_collaborative and cfg.sid.collaborative_weight > 0:
        counts = cooccurrence_of_splits(cfg, splits.path, codebook_order(items)["item_id"].to_numpy())
    built = build(items, None, cfg.sid, cooccurrence=counts)
    write_parquet(built.sid_table(), sid_table.path)
    built.save(codebook.path)
    dataset = splits.metadata.get("dataset", catalogue.metadata.get("dataset", "dataset"))
    codebook_report(built, title=f"UA-SID codebook: {dataset}").save(report.path)
    facts = {
        "dataset": dataset,
        "level_sizes": ",".join(map(str, built.level_sizes)),
        "parts": ",".join(built.parts),
        "quantizer": cfg.sid.quantizer,
    }
    for artefact in (sid_table, codebook):
        artefact.metadata.update(facts)
    log_metrics(metrics, built.metrics)
