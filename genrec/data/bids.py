"""Seeded simulation of advertiser bids for data sets that have no value column.

An advertising system ranks by value, and none of the public sets carries prices or bids. Each
advertiser — the item's brand, else its first category, else the item itself — draws one bid from
LogNormal(advertiser_log_mean, advertiser_log_sigma); each item multiplies its advertiser's bid by
LogNormal(0, item_log_sigma). Advertisers are drawn in sorted order from one seeded generator, so
the same catalogue and seed always give the same bids. Every report names the value source, and a
real value column always wins over this simulation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from genrec.config import BidConfig


def advertiser_of(catalogue: pd.DataFrame) -> pd.Series:
    def pick(row: pd.Series) -> str:
        if isinstance(row["brand"], str) and row["brand"]:
            return f"brand:{row['brand']}"
        categories = row["categories"]
        if len(categories):
            return f"category:{categories[0]}"
        return f"item:{row['item_id']}"

    return catalogue.apply(pick, axis=1) if len(catalogue) else pd.Series([], dtype=object)


def simulate_item_bids(catalogue: pd.DataFrame, config: BidConfig) -> pd.Series:
    """Returns one simulated bid per catalogue row (aligned with its index)."""
    advertisers = advertiser_of(catalogue)
    rng = np.random.default_rng(config.seed)
    names = np.array(sorted(advertisers.unique()), dtype=object)
    advertiser_bid = dict(
        zip(names, rng.lognormal(config.advertiser_log_mean, config.advertiser_log_sigma, len(names)))
    )
    # Item noise is drawn in catalogue order sorted by item id, so row order does not matter.
    order = np.argsort(catalogue["item_id"].to_numpy(dtype=str), kind="stable")
    noise = np.empty(len(catalogue))
    noise[order] = rng.lognormal(0.0, config.item_log_sigma, len(catalogue))
    bids = advertisers.map(advertiser_bid).to_numpy(dtype=float) * noise
    return pd.Series(np.round(bids, 6), index=catalogue.index, name="value")


def has_observed_values(interactions: pd.DataFrame) -> bool:
    return "value" in interactions.columns and bool(interactions["value"].notna().any())


def value_catalogue(catalogue: pd.DataFrame, observed: bool, item_medians: pd.Series | None,
                    config: BidConfig) -> tuple[pd.DataFrame, pd.Series | None, str]:
    """The catalogue with its `value` filled, the bid of each item for interactions to take (None
    when their values are observed) and the value source name.

    Observed values: the catalogue keeps its own values, else takes each item's median observed value
    (`item_medians`, by item_id). Otherwise every item gets a simulated bid.
    """
    catalogue = catalogue.copy()
    if "value" not in catalogue.columns:
        catalogue["value"] = np.nan
    if observed:
        if catalogue["value"].isna().all():
            medians = item_medians if item_medians is not None else pd.Series(dtype=float)
            catalogue["value"] = catalogue["item_id"].map(medians).fillna(0.0)
        return catalogue, None, "observed"
    catalogue["value"] = simulate_item_bids(catalogue, config)
    # Duplicate catalogue ids are reported by validation; here the first one wins.
    return catalogue, catalogue.drop_duplicates("item_id").set_index("item_id")["value"], "simulated"


def catalogue_needs_medians(catalogue: pd.DataFrame) -> bool:
    """Whether observed interaction values would have to fill the catalogue's values."""
    return "value" not in catalogue.columns or bool(catalogue["value"].isna().all())


def attach_values(
    interactions: pd.DataFrame, catalogue: pd.DataFrame, config: BidConfig
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Fills `value` on both tables. Returns the frames and the value source name.

    Observed interaction values are kept; the catalogue then takes each item's median observed
    value. Without observed values, every item gets a simulated bid and each interaction the bid
    of its item.
    """
    interactions = interactions.copy()
    observed = has_observed_values(interactions)
    medians = interactions.groupby("item_id")["value"].median() if observed else None
    catalogue, bid_of_item, source = value_catalogue(catalogue, observed, medians, config)
    if bid_of_item is not None:
        interactions["value"] = interactions["item_id"].map(bid_of_item)
    return interactions, catalogue, source
