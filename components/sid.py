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
    """Builds the semantic-ID codebook from the catalogue and the TRAINING rows of `splits`.

    Writes the SID table (item_id, c0..cL) as parquet, the codebook folder (trie, centroids,
    config, metrics), an HTML report with the code use per level, and the quality figures.
    """
    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.io import read_parquet, write_parquet
    from genrec.sid.codebook import build_codebook as build
    from genrec.sid.report import codebook_report

    cfg = GenrecConfig.from_dict(config)
    built = build(read_parquet(catalogue.path), read_parquet(splits.path), cfg.sid)
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
