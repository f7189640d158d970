"""Ingest: source -> contract -> values -> validation. Nothing is returned unless the data is valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.config import GenrecConfig
from genrec.data.bids import attach_values
from genrec.data.schema import CATALOGUE, INTERACTIONS, DatasetInfo
from genrec.data.sources import load_source
from genrec.data.validation import ValidationReport, require_valid


@dataclass
class IngestedDataset:
    interactions: pd.DataFrame
    catalogue: pd.DataFrame
    info: DatasetInfo
    validation: ValidationReport


def ingest(config: GenrecConfig, data_docs_dir: str | Path | None = None) -> IngestedDataset:
    """Loads `config.data.dataset`, converts it into the contract and validates it.

    Raises SourceError/ContractError when the source cannot be read into the contract, and
    DataValidationError (whose message is the short report) when the data breaks a rule.
    """
    raw = load_source(config.data)
    catalogue = raw.catalogue.copy()
    if "value" not in catalogue.columns:
        catalogue["value"] = np.nan
    interactions, catalogue, value_source = attach_values(raw.interactions, catalogue, config.bids)
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
