"""UA-SID: features, balanced residual quantisation, dedup, trie, codebook folder, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genrec.config import ConfigError, GenrecConfig, SidConfig
from genrec.data.schema import CATALOGUE, INTERACTIONS
from genrec.data.split import leave_one_out
from genrec.sid import Codebook, SidTrie, balanced_assign, build_codebook, build_item_features, kmeans
from genrec.sid.cli import sid_app
from genrec.sid.features import EmbeddingCache, item_texts, text_features
from genrec.sid.quantize import (
    add_dedup_level,
    collision_figures,
    level_usage,
    prefix_coherence,
    rq_kmeans,
    uses_minibatch,
)
from genrec.sid.trie import dense


def fake_text_encoder(texts: list[str]) -> np.ndarray:
    """A cheap stand-in for MiniLM: a fixed random unit vector per distinct text."""
    out = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).normal(size=16)
        out.append(vector / np.linalg.norm(vector))
    return np.array(out, dtype=np.float32)


def two_audiences(items_per_side: int = 20, users_per_side: int = 30, seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint audiences: side A buys a* items and the twin 'xa', side B b* items and 'xb'.

    The twins have the same title, description, brand, categories and value: only the people who
    buy them tell them apart.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for side in ("a", "b"):
        pool = [f"{side}{i}" for i in range(items_per_side)] + [f"x{side}"]
        for u in range(users_per_side):
            chosen = list(rng.choice(pool[:-1], size=6, replace=False))
            chosen.insert(int(rng.integers(0, 4)), f"x{side}")  # the twin sits in training positions
            for position, item in enumerate(chosen):
                rows.append({"user_id": f"{side}u{u}", "item_id": item,
                             "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=position),
                             "value": 1.0})
    interactions = leave_one_out(INTERACTIONS.conform(pd.DataFrame(rows)))
    items = [f"{s}{i}" for s in "ab" for i in range(items_per_side)]
    catalogue = pd.DataFrame({
        "item_id": items + ["xa", "xb"],
        "title": [f"product {i}" for i in items] + ["twin gadget"] * 2,
        "description": [f"about {i}" for i in items] + ["the very same text"] * 2,
        "brand": [f"brand{i % 3}" for i in range(len(items))] + ["acme"] * 2,
        "categories": [[f"cat{i % 4}"] for i in range(len(items))] + [["gadgets"]] * 2,
        "value": list(np.round(rng.uniform(1, 5, len(items)), 3)) + [2.5, 2.5],
    })
    return CATALOGUE.conform(catalogue), interactions


def small_config(**overrides: object) -> SidConfig:
    values: dict[str, object] = {"levels": 2, "codes_per_level": 8, "kmeans_iters": 10, "text_cache_dir": "",
                                 "collab_dim": 8, "attribute_dim": 8}
    values.update(overrides)
    return GenrecConfig.from_dict({"sid": values}).sid


def build(config: SidConfig | None = None, data: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> Codebook:
    catalogue, interactions = data or two_audiences()
    return build_codebook(catalogue, interactions, config or small_config(), text_encoder=fake_text_encoder)


def without_timings(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def test_build_is_deterministic_for_a_seed() -> None:
    first, again = build(), build()
    assert np.array_equal(first.codes, again.codes)
    assert without_timings(first.metrics) == pytest.approx(without_timings(again.metrics), nan_ok=True)
    assert first.parts == ["text", "attribute", "value", "collaborative"]
    # Row order of the catalogue does not change anyone's ID.
    catalogue, interactions = two_audiences()
    shuffled = build(data=(catalogue.sample(frac=1.0, random_state=3), interactions))
    assert all(shuffled.sid_of(i) == first.sid_of(i) for i in first.item_ids)


def test_dedup_level_makes_every_id_unique() -> None:
    # Attributes alone: 3 brands x 4 categories cannot give 42 items distinct prefixes.
    codebook = build(small_config(use_text=False, use_value=False, use_collaborative=False))
    assert codebook.metrics["collision_rate"] > 0
    assert len(np.unique(codebook.codes, axis=0)) == len(codebook)
    assert codebook.level_sizes[-1] == codebook.codes[:, -1].max() + 1 == codebook.metrics["max_items_per_prefix"]

    codes = np.array([[1, 2], [1, 2], [0, 5], [1, 2]])
    deduped = add_dedup_level(codes, tiebreak=np.array([0.3, 0.1, 0.0, 0.2]), item_ids=np.array(list("abcd")))
    assert deduped[:, -1].tolist() == [2, 0, 0, 1]  # the best-explained item of a prefix gets 0
    figures = collision_figures(codes)
    assert figures["collision_rate"] == 0.75 and figures["duplicate_rate"] == 0.5


def test_trie_admits_only_valid_ids() -> None:
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 4, size=(40, 3)), axis=0)
    trie = SidTrie.from_codes(codes, [4, 4, 4])
    valid = {tuple(map(int, row)) for row in codes}
    for sid in np.ndindex(4, 4, 4):
        assert trie.contains(sid) == (sid in valid)
        row = trie.item_row(sid)
        assert (row >= 0) == (sid in valid) and (row < 0 or tuple(codes[row]) == sid)
    for prefix in [(), (0,), (1, 2), (3, 3)]:
        expected = sorted({s[len(prefix)] for s in valid if s[: len(prefix)] == prefix})
        assert trie.allowed_next(prefix).tolist() == expected
    assert trie.allowed_next((9,)).size == 0 and trie.allowed_next(tuple(codes[0])).size == 0
    assert not trie.contains((0, 0)) and not trie.contains((0, 0, 0, 0))
    with pytest.raises(ValueError, match="dedup"):
        SidTrie.from_codes(np.array([[0, 1], [0, 1]]), [2, 2])

    # Batched walk: masks at each level allow exactly the codes of some valid ID.
    nodes = np.zeros(len(codes), dtype=np.int64)
    for level in range(3):
        mask = trie.masks(level, nodes)
        assert mask[np.arange(len(codes)), codes[:, level]].all()
        nodes = trie.step(level, nodes, codes[:, level])
    assert nodes.tolist() == list(range(len(codes)))
    dead = trie.step(0, np.array([-1, 0]), np.array([0, 0]))
    assert dead[0] == -1 and not trie.masks(0, np.array([-1])).any()
    assert [table.shape[1] for table in trie.children] == [4, 4, 4]


def test_balanced_kmeans_uses_codes_evenly() -> None:
    rng = np.random.default_rng(1)
    # Skewed data: one dense blob holds 70% of the points.
    points = np.vstack([rng.normal(0, 0.1, size=(700, 4)), rng.normal(3, 1.0, size=(300, 4))])
    _, balanced = kmeans(points, k=16, iters=15, seed=0, balanced=True, slack=1.0)
    _, plain = kmeans(points, k=16, iters=15, seed=0, balanced=False, slack=1.0)
    counts = np.bincount(balanced, minlength=16)
    assert counts.max() <= int(np.ceil(1000 / 16)) and (counts > 0).all()
    usage = level_usage(balanced[:, None], 16)[0]
    assert usage["utilisation"] == 1.0 and usage["entropy_ratio"] > 0.99
    assert np.bincount(plain, minlength=16).max() > counts.max()

    labels = balanced_assign(np.array([[0.0, 1.0], [0.0, 5.0], [0.0, 1.0]]), capacity=2)
    # Item 1 loses most by leaving code 0, so it keeps it; one of the others moves.
    assert labels[1] == 0 and np.bincount(labels).tolist() == [2, 1]


def test_collaborative_part_separates_items_with_identical_text() -> None:
    catalogue, interactions = two_audiences()
    with_collab = build(small_config())
    prefix = with_collab.code_levels
    assert with_collab.sid_of("xa")[:prefix] != with_collab.sid_of("xb")[:prefix]

    off = small_config(use_collaborative=False)
    features = build_item_features(catalogue, interactions, off, text_encoder=fake_text_encoder)
    row = {item: i for i, item in enumerate(features.item_ids)}
    assert np.array_equal(features.matrix[row["xa"]], features.matrix[row["xb"]])
    without = build(small_config(use_collaborative=False, balanced=False))
    assert without.sid_of("xa")[:prefix] == without.sid_of("xb")[:prefix]


def test_collaborative_features_read_training_rows_only() -> None:
    catalogue, interactions = two_audiences()
    config = small_config(use_text=False, use_attributes=False, use_value=False)
    before = build(config, (catalogue, interactions))
    changed = interactions.copy()
    held_out = changed["split"].isin(["valid", "test"])
    # Send every validation and test target to the other side's twin: it must not move any code.
    changed.loc[held_out, "item_id"] = np.where(changed.loc[held_out, "user_id"].str.startswith("a"), "xb", "xa")
    after = build(config, (catalogue, changed))
    assert np.array_equal(before.codes, after.codes)

    train_changed = interactions.copy()
    train_rows = np.flatnonzero(train_changed["split"].to_numpy() == "train")[:40]
    train_changed.loc[train_rows, "item_id"] = "xb"
    moved = build_item_features(catalogue, train_changed, config)
    base = build_item_features(catalogue, interactions, config)
    assert not np.allclose(moved.matrix, base.matrix)

    with pytest.raises(ValueError, match="split"):
        build_item_features(catalogue, interactions.drop(columns="split"), config)


def test_item_texts_and_text_cache(tmp_path: Path) -> None:
    catalogue = CATALOGUE.conform(pd.DataFrame({
        "item_id": ["a", "b", "c"], "title": ["Scope", None, None], "description": [None, "A flask", None],
        "brand": ["Acme", None, None], "categories": [["Lab"], [], ["attr7"]], "value": 1.0}))
    texts = item_texts(catalogue, ["title", "description", "categories"])
    assert texts == ["Scope. Categories: Lab", "A flask", ""]  # categories alone are not text

    calls: list[list[str]] = []

    def counting(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return fake_text_encoder(batch)

    cache = EmbeddingCache(tmp_path / "cache")
    first = text_features(texts, counting, cache, "tag")
    assert first is not None and not first[2].any() and calls == [["A flask", "Scope. Categories: Lab"]]
    again = text_features(texts, counting, cache, "tag")
    assert again is not None and np.allclose(first, again) and len(calls) == 1  # served from the cache
    assert text_features(["", ""], counting) is None


def test_packaged_minilm_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.sid.features import MiniLMEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = MiniLMEncoder(batch_size=2, max_tokens=32)(["a brass microscope", "a glass flask"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_rq_vae_option_is_deterministic() -> None:
    config = small_config(quantizer="rq_vae", rqvae_epochs=5, rqvae_hidden_dim=32, rqvae_latent_dim=8)
    first, again = build(config), build(config)
    assert np.array_equal(first.codes, again.codes)
    assert len(np.unique(first.codes, axis=0)) == len(first)


def test_prefix_coherence() -> None:
    cats = [["all", "x"], ["all", "x"], ["all", "y"], ["all", "y"], []]
    assert prefix_coherence(np.array([0, 0, 1, 1, 1]), cats, leaf_only=True) == 1.0
    assert prefix_coherence(np.array([0, 1, 0, 1, 0]), cats, leaf_only=True) == 0.5
    assert prefix_coherence(np.array([0, 1, 0, 1, 0]), cats, leaf_only=False) == 1.0


def test_codebook_save_load_round_trip(tmp_path: Path) -> None:
    codebook = build()
    folder = codebook.save(tmp_path / "codebook")
    codebook.save(folder)  # overwriting an existing codebook is fine
    loaded = Codebook.load(folder)
    assert np.array_equal(loaded.codes, codebook.codes) and list(loaded.item_ids) == list(codebook.item_ids)
    assert loaded.level_sizes == codebook.level_sizes and loaded.config == codebook.config
    assert loaded.metrics == codebook.metrics and loaded.parts == codebook.parts
    assert all(np.array_equal(dense(a), dense(b)) for a, b in zip(loaded.trie.children, codebook.trie.children,
                                                                  strict=True))
    assert all(np.allclose(a, b) for a, b in zip(loaded.centroids, codebook.centroids, strict=True))
    sid = codebook.sid_of("xa")
    assert loaded.item_of(sid) == "xa" and loaded.title_of("xa") == "twin gadget"
    table = pd.read_parquet(folder / "sid_table.parquet")
    assert list(table.columns) == ["item_id", "c0", "c1", "c2"]
    assert not list(tmp_path.glob(".codebook*"))  # no temporary left behind


def clustered_points(n: int, centres: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian blobs of uneven sizes (a power law), as item vectors of a real catalogue are."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, centres + 1) ** 1.1
    blob = rng.choice(centres, size=n, p=weights / weights.sum())
    return rng.normal(0, 3.0, size=(centres, dim))[blob] + rng.normal(0, 1.0, size=(n, dim))


def test_minibatch_rq_kmeans_keeps_the_capacity_and_is_deterministic() -> None:
    points = clustered_points(6000, 40, 8, seed=2)
    config = small_config(codes_per_level=32, kmeans_mode="minibatch", kmeans_batch_items=700,
                          kmeans_init_items=1000, kmeans_batch_iters=30)
    first, again = rq_kmeans(points, config), rq_kmeans(points, config)
    assert np.array_equal(first.codes, again.codes)
    # Every batch of the final pass is balanced under its own share of the capacity.
    batches = -(-6000 // 700)
    bound = sum(int(np.ceil(min(700, 6000 - b * 700) / 32)) for b in range(batches))
    for level in range(2):
        counts = np.bincount(first.codes[:, level], minlength=32)
        assert (counts > 0).all() and counts.max() <= bound
    assert [c.shape for c in first.centroids] == [(32, 8), (32, 8)]


def test_minibatch_rq_kmeans_against_the_full_batch_reference() -> None:
    """The fast path against the simple one: on the same uneven blobs, mini-batch codes collide no
    more than 1.5x as often as full-batch ones, and use the codes as evenly (utilisation and
    entropy within 1%)."""
    points = clustered_points(8000, 60, 8, seed=5)
    full = rq_kmeans(points, small_config(codes_per_level=32, kmeans_iters=20, kmeans_mode="full"))
    mini = rq_kmeans(points, small_config(codes_per_level=32, kmeans_mode="minibatch", kmeans_batch_items=2000,
                                          kmeans_init_items=2000, kmeans_batch_iters=40))
    full_collisions = collision_figures(full.codes)["collision_rate"]
    mini_collisions = collision_figures(mini.codes)["collision_rate"]
    assert mini_collisions <= 1.5 * full_collisions
    for f, m in zip(level_usage(full.codes, 32), level_usage(mini.codes, 32), strict=True):
        assert m["utilisation"] == f["utilisation"] == 1.0
        assert abs(m["entropy_bits"] - f["entropy_bits"]) <= 0.01 * f["entropy_bits"]
    # Unbalanced, the mini-batch path piles the big blob into few codes, as full-batch k-means does.
    plain = rq_kmeans(points, small_config(codes_per_level=32, kmeans_mode="minibatch", balanced=False,
                                           kmeans_batch_items=2000, kmeans_init_items=2000))
    assert level_usage(plain.codes, 32)[0]["entropy_bits"] < level_usage(mini.codes, 32)[0]["entropy_bits"]


def test_auto_mode_picks_the_quantiser_by_catalogue_size() -> None:
    config = small_config(kmeans_full_max_items=100)
    assert not uses_minibatch(100, config) and uses_minibatch(101, config)
    assert uses_minibatch(10, small_config(kmeans_mode="minibatch"))
    assert not uses_minibatch(10**7, small_config(kmeans_mode="full"))


def test_bad_sid_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="quantizer"):
        GenrecConfig.from_dict({"sid": {"quantizer": "pq"}})
    with pytest.raises(ConfigError, match="every feature part"):
        GenrecConfig.from_dict({"sid": {"use_text": False, "use_attributes": False, "use_value": False,
                                        "use_collaborative": False}})
    with pytest.raises(ConfigError, match="sid.kmeans_iters"):
        GenrecConfig.from_dict({"sid": {"kmeans_iters": 0}})
    with pytest.raises(ConfigError, match="sid.kmeans_batch_items"):
        GenrecConfig.from_dict({"sid": {"kmeans_batch_items": 100}})
    with pytest.raises(ConfigError, match="kmeans_mode"):
        GenrecConfig.from_dict({"sid": {"kmeans_mode": "faiss"}})


def test_sid_show_cli(tmp_path: Path) -> None:
    folder = build().save(tmp_path / "codebook")
    runner = CliRunner()
    result = runner.invoke(sid_app, ["show", "xa", "--codebook", str(folder)])
    assert result.exit_code == 0, result.output
    assert "twin gadget" in result.output and "semantic ID" in result.output and "dedup=" in result.output

    unknown = runner.invoke(sid_app, ["show", "nope", "--codebook", str(folder)])
    assert unknown.exit_code == 1 and "not in the codebook" in unknown.output
    assert "Traceback" not in unknown.output and unknown.exception is None or isinstance(
        unknown.exception, SystemExit)
    missing = runner.invoke(sid_app, ["show", "xa", "--codebook", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    not_a_codebook = runner.invoke(sid_app, ["show", "xa", "--codebook", str(tmp_path)])
    assert not_a_codebook.exit_code == 1 and "not a codebook folder" in not_a_codebook.output
