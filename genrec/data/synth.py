"""A synthetic ad log at any size, seeded: `genrec data synth --events N --seed S --output DIR`.

Shaped like ad traffic rather than uniform noise (every knob is in `SynthConfig`):

- items get a power-law popularity (rank^-exponent) and belong to categories of skewed size; each
  user has a home category where a share of their events fall, so items co-occur as they do in real
  sequences;
- advertisers bid log-normally over several orders of magnitude; an item's value is its
  advertiser's bid times a small per-item factor;
- history lengths are long-tailed (log-normal around `events_per_user`), plus a few ultra-long users
  with `ultra_events` each;
- events come in sessions: short gaps inside one, long gaps between them.

Layout (the partitioned generic format; users are bucketed as in `genrec.data.partitioned`):

    DIR/interactions/part-00000.parquet ...   user_id, item_id, timestamp (UTC), value; one file per
                                              bucket of users (by a stable hash of user_id); each
                                              user's rows contiguous and in time order
    DIR/catalogue.parquet                     item_id, title, brand, categories, value
    DIR/synth.json                            sizes, seed, config, rows per bucket

The generator holds about `events_per_chunk` events in memory at a time, whatever the log's size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config import SynthConfig
from genrec.data.partitioned import user_buckets
from genrec.io import atomic_path

INTERACTIONS_DIR = "interactions"
CATALOGUE_FILE = "catalogue.parquet"
SUMMARY_FILE = "synth.json"
PART_NAME = "part-{:05d}.parquet"
INTERACTION_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
])
# Short titles: an adjective and a noun per item (a catalogue's text, for the text encoder).
ADJECTIVES = ("compact", "classic", "premium", "organic", "wireless", "vintage", "smart", "gentle",
              "bold", "travel", "daily", "pro", "mini", "deluxe", "natural", "rapid")
NOUNS = ("serum", "headphones", "backpack", "blender", "sneakers", "lamp", "notebook", "jacket",
         "cleanser", "kettle", "watch", "tent", "scarf", "charger", "perfume", "mug", "drone", "chair")


class SynthError(ValueError):
    """The requested log cannot be generated (too few events, say); the message says what to change."""


@dataclass(frozen=True)
class SynthSizes:
    events: int
    users: int
    items: int
    advertisers: int
    categories: int
    buckets: int


def synth_sizes(events: int, config: SynthConfig) -> SynthSizes:
    if events < config.min_events:
        raise SynthError(f"--events {events}: a log needs at least synth.min_events={config.min_events} "
                         "events")
    users = max(1, min(round(events / config.events_per_user), events // config.min_events))
    items = max(2, round(events / config.events_per_item))
    advertisers = max(1, round(items / config.items_per_advertiser))
    categories = max(1, min(config.categories, items))
    buckets = max(1, math.ceil(events / config.events_per_bucket))
    return SynthSizes(events, users, items, advertisers, categories, buckets)


def history_lengths(sizes: SynthSizes, config: SynthConfig, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Events per user: a few ultra-long users, the rest log-normal, each at least min_events, summing
    to exactly `sizes.events`; and which users are the ultra-long ones."""
    users, total = sizes.users, sizes.events
    ultra = min(config.ultra_users, users - 1) if users > 1 else 0
    per_ultra = min(config.ultra_events, int(config.ultra_max_share * total / max(ultra, 1)))
    if per_ultra < config.min_events or (users - ultra) * config.min_events > total - ultra * per_ultra:
        ultra, per_ultra = 0, 0
    rest_users, rest_total = users - ultra, total - ultra * per_ultra
    raw = rng.lognormal(0.0, config.length_sigma, rest_users)
    spare = rest_total - rest_users * config.min_events
    lengths = config.min_events + np.floor(raw / raw.sum() * spare).astype(np.int64)
    # Rounding left a few events over: one each to randomly chosen users.
    short = rest_total - int(lengths.sum())
    if short:
        np.add.at(lengths, rng.choice(rest_users, short, replace=short > rest_users), 1)
    out = np.concatenate([np.full(ultra, per_ultra, dtype=np.int64), lengths])
    order = rng.permutation(users)
    return out[order], order < ultra


@dataclass
class Catalogue:
    frame: pd.DataFrame
    category: np.ndarray  # item -> category
    value: np.ndarray  # item -> value
    global_cdf: np.ndarray  # over items, by popularity
    category_keys: np.ndarray  # sorted: category + cumulative popularity within the category
    category_order: np.ndarray  # item index at each position of category_keys
    category_mass: np.ndarray  # category -> share of popularity


def build_catalogue(sizes: SynthSizes, config: SynthConfig, rng: np.random.Generator) -> Catalogue:
    items, categories = sizes.items, sizes.categories
    # Category sizes are skewed too; every category holds at least one item.
    category_weights = rng.pareto(1.5, categories) + 1.0
    category = np.concatenate([np.arange(categories),
                               rng.choice(categories, items - categories,
                                          p=category_weights / category_weights.sum())])
    category = category[rng.permutation(items)]
    popularity = np.empty(items)
    ranks = np.arange(1, items + 1, dtype=np.float64)
    popularity[rng.permutation(items)] = ranks ** -config.popularity_exponent
    popularity /= popularity.sum()
    advertiser = rng.integers(0, sizes.advertisers, items)
    bids = rng.lognormal(0.0, config.bid_log_sigma, sizes.advertisers)
    value = bids[advertiser] * rng.lognormal(0.0, config.item_bid_log_sigma, items)
    order = np.lexsort((np.arange(items), category))
    within = np.empty(items)
    sorted_category = category[order]
    sorted_popularity = popularity[order]
    starts = np.flatnonzero(np.r_[True, sorted_category[1:] != sorted_category[:-1]])
    category_mass = np.add.reduceat(sorted_popularity, starts)
    cumulative = np.cumsum(sorted_popularity)
    offset = np.repeat(cumulative[starts] - sorted_popularity[starts], np.diff(np.r_[starts, items]))
    within[:] = (cumulative - offset) / np.repeat(category_mass, np.diff(np.r_[starts, items]))
    item_ids = np.array([f"i{i}" for i in range(items)], dtype=object)
    brands = np.array([f"brand{a}" for a in range(sizes.advertisers)], dtype=object)
    titles = [f"{ADJECTIVES[i % len(ADJECTIVES)]} {NOUNS[(i // len(ADJECTIVES)) % len(NOUNS)]} by {brands[a]}"
              for i, a in enumerate(advertiser)]
    frame = pd.DataFrame({"item_id": item_ids, "title": titles, "brand": brands[advertiser],
                          "categories": [[f"category{c}"] for c in category], "value": value})
    return Catalogue(frame, category, value, np.cumsum(popularity), sorted_category + within, order,
                     category_mass / category_mass.sum())


@dataclass
class SynthSummary:
    sizes: SynthSizes
    seed: int
    ultra_users: list[str]
    rows_per_bucket: list[int]
    first_event: str
    last_event: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generate(events: int, output: str | Path, seed: int, config: SynthConfig,
             progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Writes the log and its catalogue under `output` (atomically) and returns its summary.
    `progress(events_written, events)` is called after every chunk."""
    sizes = synth_sizes(events, config)
    rng = np.random.default_rng([config.seed, seed])
    lengths, ultra_users = history_lengths(sizes, config, rng)
    catalogue = build_catalogue(sizes, config, rng)
    home = rng.choice(sizes.categories, sizes.users, p=catalogue.category_mass)
    start = pd.Timestamp(config.start).tz_convert("UTC").value // 1000  # microseconds
    user_start = start + (rng.random(sizes.users) * config.start_spread_days * 86_400e6).astype(np.int64)
    user_ids = np.array([f"u{u}" for u in range(sizes.users)], dtype=object)
    bucket_of_user = user_buckets(user_ids, sizes.buckets)
    rows = np.zeros(sizes.buckets, dtype=np.int64)
    first, last = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    with atomic_path(output) as tmp:
        (tmp / INTERACTIONS_DIR).mkdir(parents=True)
        writers = [pq.ParquetWriter(tmp / INTERACTIONS_DIR / PART_NAME.format(b), INTERACTION_SCHEMA)
                   for b in range(sizes.buckets)]
        try:
            written = 0
            for users in _chunks(lengths, config.events_per_chunk):
                table, bucket, span = _chunk(users, lengths, catalogue, home, user_start, user_ids,
                                             bucket_of_user, config, rng)
                order = np.argsort(bucket, kind="stable")  # users stay contiguous and in time order
                bounds = np.searchsorted(bucket[order], np.arange(sizes.buckets + 1))
                table = table.take(pa.array(order))
                for b in range(sizes.buckets):
                    if bounds[b + 1] > bounds[b]:
                        writers[b].write_table(table.slice(bounds[b], bounds[b + 1] - bounds[b]))
                        rows[b] += bounds[b + 1] - bounds[b]
                first, last = min(first, span[0]), max(last, span[1])
                written += table.num_rows
                if progress is not None:
                    progress(written, events)
        finally:
            for writer in writers:
                writer.close()
        catalogue.frame.to_parquet(tmp / CATALOGUE_FILE, index=False)
        ultra = [str(user_ids[u]) for u in np.flatnonzero(ultra_users)]
        summary = SynthSummary(sizes, seed, ultra, rows.tolist(),
                               pd.Timestamp(first, unit="us", tz="UTC").isoformat(),
                               pd.Timestamp(last, unit="us", tz="UTC").isoformat(),
                               dataclasses.asdict(config))
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2, default=str))
    return summary


def _in_category(catalogue: Catalogue, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `categories`, drawn by popularity within that category."""
    keys = categories + rng.random(len(categories))
    return catalogue.category_order[np.minimum(np.searchsorted(catalogue.category_keys, keys, side="right"),
                                               len(catalogue.category_keys) - 1)]


def _interest_items(users: np.ndarray, counts: np.ndarray, catalogue: Catalogue, config: SynthConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """The items of the long-term-interest model (docs/synth.md) for these users' events, in order.
    Only the chunk's users' interests and pools are held: (users x interests x pool) items."""
    n, interests, pool = int(counts.sum()), config.interests, config.interest_pool_items
    # Each user's interests: categories by their share of popularity (a repeat is one stronger interest).
    categories = rng.choice(len(catalogue.category_mass), (len(users), interests), p=catalogue.category_mass)
    pools = _in_category(catalogue, np.repeat(categories.ravel(), pool), rng).reshape(
        len(users), interests, pool)
    local_user = np.repeat(np.arange(len(users)), counts)
    first_of_user = np.r_[0, np.cumsum(counts)[:-1]]
    # Episodes: each event starts a new one with probability 1 / mean (a user's first always does).
    starts = rng.random(n) < 1.0 / config.episode_mean_events
    starts[first_of_user] = True
    if config.interest_return_bias > 0:
        episode_interest = _due_interests(np.add.reduceat(starts, first_of_user), interests,
                                          config.interest_return_bias, rng)
    else:
        episode_interest = rng.integers(0, interests, int(starts.sum()))
    interest = episode_interest[np.cumsum(starts) - 1]
    from_pool = rng.random(n) < config.interest_pool_share
    items = _in_category(catalogue, categories[local_user, interest], rng)
    slot = rng.integers(0, pool, int(from_pool.sum()))
    items[from_pool] = pools[local_user[from_pool], interest[from_pool], slot]
    background = rng.random(n) < config.background_share
    items[background] = np.searchsorted(catalogue.global_cdf, rng.random(int(background.sum()))
                                        * catalogue.global_cdf[-1], side="right")
    return items


def _due_interests(episodes: np.ndarray, interests: int, bias: float, rng: np.random.Generator) -> np.ndarray:
    """Each episode's interest, users' episodes one after the other: drawn with weight
    (1 + episodes since the interest was last visited) ** bias, so the interest longest away is the
    most likely to return. All users step together, one episode at a time (the loop runs as many
    times as the chunk's longest user has episodes, not once per episode)."""
    users = len(episodes)
    # Before a user's first episode every interest is as long away as a random order says.
    age = np.argsort(rng.random((users, interests)), axis=1).astype(np.float64)
    offsets = np.r_[0, np.cumsum(episodes)[:-1]]
    out = np.empty(int(episodes.sum()), dtype=np.int64)
    for step in range(int(episodes.max(initial=0))):
        active = np.flatnonzero(episodes > step)
        weights = (1.0 + age[active]) ** bias
        cumulative = np.cumsum(weights, axis=1)
        draw = rng.random(len(active)) * cumulative[:, -1]
        chosen = np.minimum((cumulative < draw[:, None]).sum(axis=1), interests - 1)
        out[offsets[active] + step] = chosen
        age[active] += 1.0
        age[active, chosen] = 0.0
    return out


def _chunks(lengths: np.ndarray, events_per_chunk: int) -> list[np.ndarray]:
    """Consecutive runs of users with about `events_per_chunk` events each (a longer user alone)."""
    cumulative = np.cumsum(lengths)
    cuts = np.searchsorted(cumulative, np.arange(events_per_chunk, int(cumulative[-1]), events_per_chunk),
                           side="right")
    edges = np.unique(np.r_[0, cuts, len(lengths)])
    return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _chunk(users: np.ndarray, lengths: np.ndarray, catalogue: Catalogue, home: np.ndarray,
           user_start: np.ndarray, user_ids: np.ndarray, bucket_of_user: np.ndarray, config: SynthConfig,
           rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, tuple[int, int]]:
    counts = lengths[users]
    user = np.repeat(users, counts)
    n = len(user)
    if config.interests > 0:
        items = _interest_items(users, counts, catalogue, config, rng)
    else:
        # Items: a share from the user's home category, the rest by global popularity.
        items = np.searchsorted(catalogue.global_cdf, rng.random(n) * catalogue.global_cdf[-1], side="right")
        at_home = rng.random(n) < config.home_category_share
        items[at_home] = _in_category(catalogue, home[user[at_home]], rng)
    items = np.minimum(items, len(catalogue.value) - 1)
    # Time: sessions of short gaps separated by long ones, from each user's own start; a heavy user's
    # gaps shrink so that no history spans more than max_history_days.
    new_session = rng.random(n) < config.session_start_probability
    gaps = np.where(new_session, rng.exponential(config.between_sessions_gap_seconds, n),
                    rng.exponential(config.in_session_gap_seconds, n))
    micros = np.round(gaps * 1e6).astype(np.int64)
    first_of_user = np.r_[0, np.cumsum(counts)[:-1]]
    micros[first_of_user] = 0
    elapsed = np.cumsum(micros)
    elapsed -= np.repeat(elapsed[first_of_user], counts)
    span = elapsed[first_of_user + counts - 1]
    squeeze = np.minimum(1.0, config.max_history_days * 86_400e6 / np.maximum(span, 1))
    elapsed = np.floor(elapsed * np.repeat(squeeze, counts)).astype(np.int64)
    # A microsecond per earlier event of the user: a gap that rounds (or is squeezed) to nothing
    # would otherwise give two events of a user the same time, a duplicate if the item repeats.
    elapsed += np.arange(n, dtype=np.int64) - np.repeat(first_of_user, counts)
    stamps = user_start[user] + elapsed
    table = pa.table({
        "user_id": pa.array(user_ids[user], pa.string()),
        "item_id": pa.array(catalogue.frame["item_id"].to_numpy()[items], pa.string()),
        "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "value": pa.array(catalogue.value[items], pa.float64()),
    }, schema=INTERACTION_SCHEMA)
    return table, bucket_of_user[user], (int(stamps.min()), int(stamps.max()))
