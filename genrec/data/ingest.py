"""Ingest: source -> contract -> values -> validation. Nothing is written unless the data is valid.

`ingest` holds the log in one frame (the in-memory engine, and what benchmarks and tests call on
small data); `ingest_to_artefacts` writes the step's artefacts with the configured engine: the
interactions as a partitioned folder (user buckets, `genrec.data.partitioned`) and the catalogue as
one parquet file. Both engines write the same artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genrec.config import GenrecConfig
from genrec.data.bids import attach_values
from genrec.data.partitioned import Partitioning, bucket_count, write_partitioned
from genrec.data.schema import CATALOGUE, INTERACTIONS, DatasetInfo
from genrec.data.sources import load_source
from genrec.data.validation import ValidationReport, require_valid
from genrec.io import atomic_path, write_parquet


@dataclass
class IngestedDataset:
    interactions: pd.DataFrame
    catalogue: pd.DataFrame
    info: DatasetInfo
    validation: ValidationReport


@dataclass
class IngestOutcome:
    """What `ingest_to_artefacts` wrote and found."""

    info: DatasetInfo
    validation: ValidationReport
    users: int
    items: int
    interactions: int
    partitioning: Partitioning
    engine: str


def ingest(config: GenrecConfig, data_docs_dir: str | Path | None = None) -> IngestedDataset:
    """Loads `config.data.dataset`, converts it into the contract and validates it.

    Raises SourceError/ContractError when the source cannot be read into the contract, and
    DataValidationError (whose message is the short report) when the data breaks a rule. The
    interactions' index numbers the rows as the source did.
    """
    raw = load_source(config.data)
    interactions, catalogue, value_source = attach_values(raw.interactions, raw.catalogue, config.bids)
    interactions = INTERACTIONS.conform(interactions)
    catalogue = CATALOGUE.conform(catalogue)
    raw.info.value_source = value_source
    report = require_valid(
        interactions,
        catalogue,
        min_interactions_per_user=config.data.min_interactions_per_user,
        max_bad_examples=config.data.max_bad_examples,
        data_docs_dir=data_docs_dir,
    )
    return IngestedDataset(interactions, catalogue, raw.info, report)


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
