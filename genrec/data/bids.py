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


def attach_values(
    interactions: pd.DataFrame, catalogue: pd.DataFrame, config: BidConfig
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Fills `value` on both tables. Returns the frames and the value source name.

    Observed interaction values are kept; the catalogue then takes each item's median observed
    value. Without observed values, every item gets a simulated bid and each interaction the bid
    of its item.
    """
    interactions = interactions.copy()
    catalogue = catalogue.copy()
    observed = "value" in interactions.columns and interactions["value"].notna().any()
    if observed:
        median = interactions.groupby("item_id")["value"].median()
        if "value" not in catalogue.columns or catalogue["value"].isna().all():
            catalogue["value"] = catalogue["item_id"].map(median).fillna(0.0)
        return interactions, catalogue, "observed"
    catalogue["value"] = simulate_item_bids(catalogue, config)
    # Duplicate catalogue ids are reported by validation; here the first one wins.
    bid_of_item = catalogue.drop_duplicates("item_id").set_index("item_id")["value"]
    interactions["value"] = interactions["item_id"].map(bid_of_item)
    return interactions, catalogue, "simulated"
