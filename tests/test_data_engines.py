"""The data steps on Ray against the in-memory reference: the same artefacts, bucket for bucket, on
MovieLens and on a synthetic ad log; and a rule broken at scale stops the run, names the rule and
the rows, and writes nothing.

Ingest + validate, the split (with its profile), the codebook's co-occurrence counts, the VISTA
snapshots and their materialisation into the feature repo (offline tables, the newest snapshot per
user, the online store) run once with data.engine=pandas and once with data.engine=ray, into
separate folders; every artefact is compared."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genrec.sid.cooccurrence as cooccurrence
from genrec.config import GenrecConfig, RayConfig, SynthConfig
from genrec.data.ingest import IngestOutcome
from genrec.data.ingest_step import ingest_to_artefacts
from genrec.data.partitioned import read_all, read_partitioning
from genrec.data.split_step import SplitOutcome, split_to_artefact
from genrec.data.stats import dataset_stats
from genrec.data.synth import generate
from genrec.data.validation import DataValidationError
from genrec.distributed import RaySession
from genrec.features import FeatureRepo, historical_summaries, online_summaries, point_in_time_summaries
from genrec.features.materialize import MaterializeOutcome, materialize_from_splits
from genrec.features.schema import USER_SUMMARY_VIEW
from genrec.sid.codebook import codebook_order
from genrec.sid.cooccurrence import cooccurrence_of_splits
from genrec.vista.train import train_summarizer
from tests.test_vista_snapshots import tiny_config

ENGINES = ("pandas", "ray")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():  # type: ignore[no-untyped-def]
    """One small embedded Ray for the module: every step's session joins it."""
    with RaySession.open(RayConfig(num_cpus=2, object_store_mb=256)) as session:
        yield session


@dataclass
class Run:
    root: Path
    ingest: IngestOutcome
    split: SplitOutcome
    cooccurrence: object
    materialise: MaterializeOutcome


def run_steps(config: GenrecConfig, engine: str, root: Path, summarizer: Path) -> Run:
    config = GenrecConfig.from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "engine": engine}})
    folder = root / engine
    ingest = ingest_to_artefacts(config, folder / "interactions", folder / "catalogue.parquet", folder / "docs")
    split = split_to_artefact(config, folder / "interactions", folder / "splits")
    items = codebook_order(pd.read_parquet(folder / "catalogue.parquet"))["item_id"].to_numpy()
    counts = cooccurrence_of_splits(config, folder / "splits", items)
    materialise = materialize_from_splits(config, folder / "splits", summarizer, folder / "repo",
                                          folder / "latest")
    return Run(folder, ingest, split, counts, materialise)


# Summaries are float32 vectors stored as bytes: the summariser runs on batches of other
# compositions in each engine, and a matmul's sums may round differently in the last bit.
SUMMARY_ATOL = 1e-5


def assert_same_frames(left: pd.DataFrame, right: pd.DataFrame) -> None:
    vectors = [c for c in left.columns if c.startswith("summary") and left[c].dtype == object]
    pd.testing.assert_frame_equal(left.drop(columns=vectors), right.drop(columns=vectors))
    for column in vectors:
        a = np.stack([np.frombuffer(v, dtype=np.float32) for v in left[column]])
        b = np.stack([np.frombuffer(v, dtype=np.float32) for v in right[column]])
        assert a.shape == b.shape and float(np.abs(a - b).max()) <= SUMMARY_ATOL, column


def assert_same_buckets(left: Path, right: Path) -> None:
    a, b = read_partitioning(left), read_partitioning(right)
    assert a.buckets == b.buckets and a.rows == b.rows
    for bucket in range(a.buckets):
        name = f"part-{bucket:05d}.parquet"
        assert_same_frames(pd.read_parquet(left / name), pd.read_parquet(right / name))


def assert_same_runs(runs: dict[str, Run]) -> None:
    memory, ray = runs["pandas"], runs["ray"]
    # ingest + validate
    assert_same_buckets(memory.root / "interactions", ray.root / "interactions")
    pd.testing.assert_frame_equal(pd.read_parquet(memory.root / "catalogue.parquet"),
                                  pd.read_parquet(ray.root / "catalogue.parquet"))
    assert (memory.ingest.users, memory.ingest.items, memory.ingest.interactions) == \
        (ray.ingest.users, ray.ingest.items, ray.ingest.interactions)
    assert memory.ingest.info == ray.ingest.info
    assert memory.ingest.validation.success and ray.ingest.validation.success
    assert memory.ingest.validation.statistics["tables"] == ray.ingest.validation.statistics["tables"]
    # split and its profile
    assert_same_buckets(memory.root / "splits", ray.root / "splits")
    catalogue = pd.read_parquet(memory.root / "catalogue.parquet")
    left, right = dataset_stats(memory.split.profile, catalogue), dataset_stats(ray.split.profile, catalogue)
    assert left.keys() == right.keys()
    for key in left:  # sums of floats may add up in another order: equal to 1e-12
        assert right[key] == pytest.approx(left[key], rel=1e-12), key
    assert left["value_p95"] == right["value_p95"]  # an order statistic: exact
    # co-occurrence counts (integers: equal to the last bit)
    difference = (memory.cooccurrence - ray.cooccurrence).tocsr()  # type: ignore[operator]
    assert memory.cooccurrence.nnz > 0 and difference.nnz == 0  # type: ignore[attr-defined]
    # snapshots, history, newest snapshot per user
    for table in ("data/user_summaries", "data/interactions"):
        assert_same_buckets(memory.root / "repo" / table, ray.root / "repo" / table)
    assert_same_buckets(memory.root / "latest", ray.root / "latest")
    assert memory.materialise.schedule == ray.materialise.schedule
    for key in ("users", "rows", "item_sids"):
        assert memory.materialise.metrics[key] == ray.materialise.metrics[key]
    # the online store holds the same newest snapshot per user
    latest = read_all(memory.root / "latest")
    users = latest["user_id"].head(25).tolist()
    a = online_summaries(memory.materialise.repo, users)
    b = online_summaries(ray.materialise.repo, users)
    assert a.keys() == b.keys() and all(a[u] is not None for u in users)
    for user in users:
        np.testing.assert_allclose(a[user], b[user], rtol=0, atol=SUMMARY_ATOL)


def train_tiny_summarizer(config: GenrecConfig, splits: Path, path: Path) -> Path:
    train_summarizer(read_all(splits), config).summarizer.save(path)
    return path


def test_movielens_parity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Every chunk of rows its own reduce task: MovieLens' 1,682 items make two row blocks.
    monkeypatch.setattr(cooccurrence, "REDUCE_BLOCK_ENTRIES", 1)
    config = tiny_config()
    config.vista.epochs = 1
    # Buckets of ~30k rows: MovieLens' 100k interactions span four, the ingest reads in three parts.
    config.data.bucket_rows, config.data.read_rows_per_task = 30_000, 40_000
    config.features.template_dir = ""
    prep = GenrecConfig.from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "engine": "pandas"}})
    ingest_to_artefacts(prep, tmp_path / "prep" / "interactions", tmp_path / "prep" / "catalogue.parquet")
    split_to_artefact(prep, tmp_path / "prep" / "interactions", tmp_path / "prep" / "splits")
    summarizer = train_tiny_summarizer(config, tmp_path / "prep" / "splits", tmp_path / "summarizer.pt")
    runs = {engine: run_steps(config, engine, tmp_path, summarizer) for engine in ENGINES}
    assert runs["ray"].ingest.partitioning.buckets == 4
    assert_same_runs(runs)


@pytest.fixture(scope="module")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth") / "log"
    generate(40_000, folder, seed=3, config=SynthConfig(events_per_bucket=12_000, events_per_chunk=9_000,
                                                        ultra_users=2, ultra_events=4_000))
    return folder


def synthetic_config(log: Path) -> GenrecConfig:
    config = tiny_config()
    config.vista.epochs = 1
    config.data.dataset = str(log)
    # Files of ~12k rows read in parts of at most 5k row groups' worth, cut into five buckets.
    config.data.bucket_rows, config.data.read_rows_per_task = 9_000, 5_000
    return config


def test_synthetic_log_parity(synthetic_log: Path, tmp_path: Path) -> None:
    config = synthetic_config(synthetic_log)
    prep = GenrecConfig.from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "engine": "pandas"}})
    ingest_to_artefacts(prep, tmp_path / "prep" / "interactions", tmp_path / "prep" / "catalogue.parquet")
    split_to_artefact(prep, tmp_path / "prep" / "interactions", tmp_path / "prep" / "splits")
    summarizer = train_tiny_summarizer(config, tmp_path / "prep" / "splits", tmp_path / "summarizer.pt")
    runs = {engine: run_steps(config, engine, tmp_path, summarizer) for engine in ENGINES}
    assert runs["ray"].ingest.partitioning.buckets == 5
    assert runs["ray"].materialise.schedule.kind == "period"  # real timestamps: a snapshot per day
    assert_same_runs(runs)


def test_feast_ray_offline_store_joins_like_the_reference(synthetic_log: Path, tmp_path: Path) -> None:
    """Historical retrieval through Feast's Ray offline store (the Ray run's repo) gives what the
    pandas point-in-time join of the same snapshots gives."""
    config = synthetic_config(synthetic_log)
    prep = GenrecConfig.from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "engine": "pandas"}})
    ingest_to_artefacts(prep, tmp_path / "interactions", tmp_path / "catalogue.parquet")
    split_to_artefact(prep, tmp_path / "interactions", tmp_path / "splits")
    summarizer = train_tiny_summarizer(config, tmp_path / "splits", tmp_path / "summarizer.pt")
    outcome = materialize_from_splits(config, tmp_path / "splits", summarizer, tmp_path / "repo",
                                      tmp_path / "latest")
    repo = FeatureRepo.open(outcome.repo.path)
    assert repo.manifest["offline_store"] == "ray"
    splits = read_all(tmp_path / "splits")
    targets = splits[splits["split"] == "test"].head(40)
    entity = pd.DataFrame({"user_id": targets["user_id"].to_numpy(),
                           "event_timestamp": targets["timestamp"].to_numpy()})
    through_feast = historical_summaries(repo, entity)
    reference = point_in_time_summaries(repo, entity)
    assert through_feast["summary"].notna().sum() > 30
    pd.testing.assert_series_equal(through_feast["n_items"].astype("Int64"), reference["n_items"].astype("Int64"),
                                   check_names=False)
    assert (through_feast["summary"].fillna(b"") == reference["summary"].fillna(b"")).all()
    assert repo.store.get_feature_view(USER_SUMMARY_VIEW).materialization_intervals
    # `feast materialize` on this repo (Feast's Ray compute engine over the Ray offline store) fails in
    # Feast 0.67: its Ray store reads the partitioned table into a dataset whose schema it cannot
    # see. genrec's own materialisation (above) is what the pipeline runs. When Feast fixes it,
    # this fails: then check its online values against genrec's and drop the caveat in
    # feature_repo/README.md.
    assert getattr(repo.store.config.batch_engine, "type", None) == "ray.engine"
    with repo.feast_session(), pytest.raises(RuntimeError, match="Failed to load/filter dataset"):
        repo.store.materialize(pd.Timestamp("1970-01-01", tz="UTC").to_pydatetime(),
                               pd.Timestamp("2100-01-01", tz="UTC").to_pydatetime())


def broken_log(log: Path, target: Path) -> Path:
    """The synthetic log with a duplicated event, an unknown item and a negative value injected into
    different parts."""
    shutil.copytree(log, target)
    parts = sorted((target / "interactions").glob("*.parquet"))
    first = pd.read_parquet(parts[0])
    first = pd.concat([first.iloc[:10], first.iloc[[5]], first.iloc[10:]], ignore_index=True)  # row 10
    first.to_parquet(parts[0], index=False)
    last = pd.read_parquet(parts[-1])
    last.loc[3, "item_id"] = "no-such-item"
    last.loc[7, "value"] = -1.0
    last.to_parquet(parts[-1], index=False)
    return target


def test_a_failing_rule_at_scale_stops_names_it_and_writes_nothing(synthetic_log: Path, tmp_path: Path) -> None:
    log = broken_log(synthetic_log, tmp_path / "broken")
    failures = {}
    for engine in ENGINES:
        config = synthetic_config(log)
        config.data.engine = engine  # type: ignore[assignment]
        out = tmp_path / engine
        with pytest.raises(DataValidationError) as raised:
            ingest_to_artefacts(config, out / "interactions", out / "catalogue.parquet", out / "docs")
        report = raised.value.report
        failures[engine] = [(f.table, f.column, f.expectation, f.unexpected_count, f.examples)
                            for f in report.failures]
        text = str(raised.value)
        assert "No two interactions share the same user_id, item_id and timestamp" in text
        assert "is in the catalogue" in text and "at least 0" in text
        assert not (out / "interactions").exists() and not (out / "catalogue.parquet").exists()
        assert (out / "docs" / "index.html").is_file(), "Data Docs are written on failure too"
        assert not list(out.glob(".*")), "no scratch folder is left behind"
    assert failures["pandas"] == failures["ray"]
    by_rule = {(f[1], f[2]): f for f in failures["ray"]}
    duplicate = by_rule[("user_id,item_id,timestamp", "expect_compound_columns_to_be_unique")]
    assert duplicate[3] == 2 and [e["row"] for e in duplicate[4]] == [5, 10]  # rows of the source
    unknown = by_rule[("item_id", "expect_column_values_to_be_in_set")]
    assert unknown[3] == 1 and unknown[4][0]["item_id"] == "no-such-item"
    assert np.isclose(by_rule[("value", "expect_column_values_to_be_between")][4][0]["value"], -1.0)
    # The repeated event also comes back in time: out of order at the same source row.
    assert [e["row"] for e in by_rule[("timestamp", "expect_column_values_to_be_in_set")][4]] == [10]


def test_the_benchmarks_repeated_redis_write_leaves_what_the_step_wrote(synthetic_log: Path,
                                                                          tmp_path: Path) -> None:
    """bench_scale times the materialise step's write into Redis again into an emptied Redis, with
    the function the step uses: it must write the same users' hashes, byte for byte."""
    import redis as redis_py

    from benchmarks.bench_scale import repeat_online_write
    from testbed.redis import running_redis

    config = synthetic_config(synthetic_log)
    prep = GenrecConfig.from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "engine": "pandas"}})
    ingest_to_artefacts(prep, tmp_path / "interactions", tmp_path / "catalogue.parquet")
    split_to_artefact(prep, tmp_path / "interactions", tmp_path / "splits")
    summarizer = train_tiny_summarizer(config, tmp_path / "splits", tmp_path / "summarizer.pt")
    with running_redis(tmp_path) as server:
        config.data.engine, config.features.online_store = "ray", "redis"
        config.features.redis_connection_string = f"127.0.0.1:{server.port}"
        client = redis_py.Redis(host="127.0.0.1", port=server.port)

        def stored() -> dict[bytes, dict[bytes, bytes]]:
            return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}

        outcome = materialize_from_splits(config, tmp_path / "splits", summarizer, tmp_path / "repo",
                                          tmp_path / "latest")
        by_step = stored()
        seconds = repeat_online_write(config, tmp_path, 1)
        again = stored()
        client.close()
    users = outcome.metrics["users"]
    assert len(seconds) == 1 and seconds[0] > 0 and users > 100
    assert len(again) == users and all(again[key] == by_step[key] for key in again)
