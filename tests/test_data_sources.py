import json
from pathlib import Path

import pandas as pd
import pytest

from genrec.config import BidConfig, DataConfig, GenrecConfig
from genrec.data.bids import attach_values, simulate_item_bids
from genrec.data.schema import CATALOGUE, INTERACTIONS, ContractError
from genrec.data.sources import SourceError, load_source
from genrec.data.split import drop_latest, leave_one_out


def _config(dataset: str, **kwargs) -> DataConfig:
    return DataConfig(dataset=dataset, **kwargs)


def test_s3rec_format(tmp_path: Path) -> None:
    (tmp_path / "Toy.txt").write_text("1 10 11 12\n2 11 12 10 13\n")
    (tmp_path / "Toy_item2attributes.json").write_text(json.dumps({"10": [1], "11": [1, 2], "12": [3], "13": []}))
    raw = load_source(_config(str(tmp_path)))
    assert raw.info.name == "toy" and not raw.info.has_timestamps
    assert raw.interactions["item_id"].tolist() == ["10", "11", "12", "11", "12", "10", "13"]
    # Sequence order becomes time: strictly increasing within each user.
    for _, group in raw.interactions.groupby("user_id"):
        assert group["timestamp"].is_monotonic_increasing
    assert raw.catalogue.set_index("item_id").loc["11", "categories"] == ["attr1", "attr2"]


def test_amazon_json_format(tmp_path: Path) -> None:
    (tmp_path / "Sci.inter.json").write_text(json.dumps({"0": [0, 1], "1": [1, 0, 2]}))
    items = {"0": {"title": "Scope", "brand": "Acme", "categories": "Lab,Optics"},
             "1": {"title": " ", "description": "A flask"}, "2": {}}
    (tmp_path / "Sci.item.json").write_text(json.dumps(items))
    raw = load_source(_config(str(tmp_path)))
    catalogue = raw.catalogue.set_index("item_id")
    assert catalogue.loc["0", "categories"] == ["Lab", "Optics"]
    assert catalogue.loc["0", "brand"] == "Acme"
    assert catalogue.loc["1", "title"] is None and catalogue.loc["1", "description"] == "A flask"
    assert len(raw.interactions) == 5


def test_generic_log_and_missing_column(tmp_path: Path) -> None:
    log = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [1, 2]}).to_parquet(log)
    raw = load_source(_config(str(log)))
    assert raw.info.value_source == "simulated" and sorted(raw.catalogue["item_id"]) == ["x", "y"]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user": ["a"], "item_id": ["x"], "timestamp": [1]}).to_csv(bad, index=False)
    with pytest.raises(ContractError, match="'user_id' is missing.*rename"):
        load_source(_config(str(bad)))


def test_unknown_sources_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a known data set"):
        load_source(_config("no-such-set"))
    with pytest.raises(SourceError, match="shared_data_dir"):
        load_source(_config("amazon-beauty", shared_data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(SourceError, match="unsupported file type"):
        (tmp_path / "log.txt").write_text("x")
        load_source(_config(str(tmp_path / "log.txt")))
    with pytest.raises(SourceError, match="does not exist"):
        load_source(_config("movielens-100k", recbole_wheel=str(tmp_path / "none.whl")))


def test_bid_simulation_is_seeded_and_per_advertiser() -> None:
    catalogue = CATALOGUE.conform(pd.DataFrame({
        "item_id": ["a", "b", "c"], "title": None, "description": None,
        "brand": ["X", "X", None], "categories": [[], [], ["cat"]], "value": 0.0}))
    first = simulate_item_bids(catalogue, BidConfig(seed=1))
    again = simulate_item_bids(catalogue.iloc[::-1].reset_index(drop=True), BidConfig(seed=1))
    assert first.tolist() == again.iloc[::-1].tolist()  # row order does not matter
    assert (first > 0).all()
    flat = simulate_item_bids(catalogue, BidConfig(seed=1, item_log_sigma=0.0))
    assert flat[0] == flat[1] != flat[2]  # same advertiser, same bid
    assert simulate_item_bids(catalogue, BidConfig(seed=2)).tolist() != first.tolist()


def test_observed_values_win() -> None:
    interactions = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "value": [4.0]})
    catalogue = pd.DataFrame({"item_id": ["a"], "brand": [None], "categories": [[]], "value": [float("nan")]})
    inter, cat, source = attach_values(interactions, catalogue, BidConfig())
    assert source == "observed" and inter["value"].tolist() == [4.0] and cat["value"].tolist() == [4.0]


def test_conform_rejects_unreadable_values() -> None:
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "value": ["lots"]})
    with pytest.raises(ContractError, match="'value' cannot be read"):
        INTERACTIONS.conform(frame)


def test_leave_one_out() -> None:
    frame = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 3, "item_id": list("wxyzpqr")})
    split = leave_one_out(frame)
    assert split["split"].tolist() == ["train", "train", "valid", "test", "train", "valid", "test"]


def test_drop_latest_moves_the_split_origin_back() -> None:
    frame = pd.DataFrame({"user_id": ["a"] * 5 + ["b"] * 4, "item_id": list("vwxyzpqrs")})
    earlier = leave_one_out(drop_latest(frame, 1))
    # a keeps v..y (test y); b keeps p..r, three rows, the fewest that still leave a training row.
    assert earlier["item_id"].tolist() == list("vwxypqr")
    assert earlier["split"].tolist() == ["train", "train", "valid", "test", "train", "valid", "test"]
    # b would keep two rows at count 2, so it goes entirely.
    assert drop_latest(frame, 2)["item_id"].tolist() == list("vwx")
    assert drop_latest(frame, 0).equals(frame)
    with pytest.raises(ValueError, match="count must be >= 0"):
        drop_latest(frame, -1)


@pytest.mark.shared_data
@pytest.mark.parametrize("name,users,items,rows", [
    ("amazon-beauty", 22363, 12101, 198502),
    ("amazon-scientific", 8317, 4344, 58492),
])
def test_shared_sets(shared_data: Path, name: str, users: int, items: int, rows: int) -> None:
    raw = load_source(_config(name, shared_data_dir=str(shared_data)))
    assert raw.interactions["user_id"].nunique() == users
    assert len(raw.catalogue) == items and len(raw.interactions) == rows


def test_movielens_from_recbole_wheel() -> None:
    from genrec.data.ingest import ingest

    cfg = GenrecConfig()
    result = ingest(cfg)
    assert result.interactions["user_id"].nunique() == 943
    assert len(result.catalogue) == 1682 and len(result.interactions) == 100000
    assert result.info.value_source == "simulated"
    assert (result.interactions["value"] > 0).all()
