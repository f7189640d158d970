"""Ingest: source -> contract -> values -> validation. Nothing is written unless the data is valid.

`ingest` holds the log in one frame: the in-memory engine, and what benchmarks and tests call on
small data. The pipeline step writes its artefacts with either engine (`genrec.data.ingest_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genrec.config import GenrecConfig
from genrec.data.bids import attach_values
from genrec.data.partitioned import Partitioning
from genrec.data.schema import CATALOGUE, INTERACTIONS, DatasetInfo
from genrec.data.sources import load_source
from genrec.data.validation import ValidationReport, require_valid


@dataclass
class IngestedDataset:
    interactions: pd.DataFrame
    catalogue: pd.DataFrame
    info: DatasetInfo
    validation: ValidationReport


@dataclass
class IngestOutcome:
    """What the ingest step wrote and found (either engine)."""

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

