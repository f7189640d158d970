"""The ingest step: ingests and validates with the configured engine and writes its artefacts, the
interactions as a partitioned folder (user buckets, `genrec.data.partitioned`) and the catalogue as
one parquet file. Both engines write the same artefacts.
"""

from __future__ import annotations

from pathlib import Path

from genrec.config import GenrecConfig
from genrec.data.ingest import IngestOutcome, ingest
from genrec.data.partitioned import bucket_count, write_partitioned
from genrec.data.schema import CATALOGUE, INTERACTIONS
from genrec.io import atomic_path, write_parquet


def ingest_to_artefacts(config: GenrecConfig, interactions_dir: str | Path, catalogue_path: str | Path,
                        data_docs_dir: str | Path | None = None) -> IngestOutcome:
    """Ingests and validates with `config.data.engine` and writes the interactions (partitioned) and
    the catalogue. A failed validation raises DataValidationError and writes neither."""
    if config.data.engine == "ray":
        from genrec.data.ingest_ray import ingest_on_ray

        return ingest_on_ray(config, interactions_dir, catalogue_path, data_docs_dir)
    dataset = ingest(config, data_docs_dir)
    buckets = bucket_count(len(dataset.interactions), config.data.bucket_rows)
    with atomic_path(interactions_dir) as folder:
        folder.mkdir()
        partitioning = write_partitioned(dataset.interactions, folder, buckets, INTERACTIONS.arrow)
    write_parquet(dataset.catalogue, catalogue_path, CATALOGUE.arrow)
    return IngestOutcome(dataset.info, dataset.validation, int(dataset.interactions["user_id"].nunique()),
                         len(dataset.catalogue), len(dataset.interactions), partitioning, "pandas")
