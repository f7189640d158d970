"""Training: examples without leakage, deterministic length-grouped batches, VSL weights, exact
resume after a kill, and the same script under torchrun with two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.config import ConfigError, GenrecConfig, SidConfig
from genrec.data.split import leave_one_out
from genrec.model.artefact import load_model
from genrec.sid.codebook import Codebook
from genrec.train.data import (
    batch_order,
    evaluation_requests,
    example_weights,
    training_examples,
    vsl_weights,
    weights_over_mean,
)
from genrec.train.loop import Trainer, TrainingData, lr_factor
from tests.conftest import make_log

REPO = Path(__file__).resolve().parents[1]


def tiny_codebook(items: int = 30, seed: int = 0) -> Codebook:
    rng = np.random.default_rng(seed)
    codes = np.unique(np.stack([rng.integers(0, 4, 200), rng.integers(0, 4, 200), rng.integers(0, 3, 200)], 1),
                      axis=0)[:items]
    return Codebook(np.array([f"i{i}" for i in range(items)]), codes, [4, 4, 3], SidConfig())


def tiny_config(**train) -> GenrecConfig:
    config = GenrecConfig.from_dict({
        "model": {"d_model": 16, "layers": 2, "heads": 2, "recent_items": 4, "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 8, "checkpoint_every": 3, "valid_users": 5, "beam_widths": [4],
                  "top_k": 10, "threads": 1, **train},
    })
    return config


@pytest.fixture
def splits() -> pd.DataFrame:
    return leave_one_out(make_log(users=12, items=30, per_user=6))


def test_training_examples_use_only_train_rows(splits) -> None:
    codebook = tiny_codebook()
    examples = training_examples(splits, codebook.item_ids, recent_items=4)
    train = splits[splits["split"] == "train"]
    assert len(examples) == len(train) - train["user_id"].nunique()  # every position after the first
    held_out = set(zip(splits.loc[splits["split"] != "train", "user_id"], splits.loc[splits["split"] != "train", "item_id"]))
    for user, target, recent in zip(examples.users, examples.targets, examples.recent):
        assert (user, f"i{target}") not in held_out
        assert all((user, f"i{r}") not in held_out for r in recent if r >= 0)
    capped = training_examples(splits, codebook.item_ids, recent_items=4, max_per_user=2)
    assert len(capped) == 2 * train["user_id"].nunique()
    last = np.flatnonzero(capped.users == "u0")[-1]
    assert f"i{capped.targets[last]}" == train[train["user_id"] == "u0"]["item_id"].iloc[-1]
    # Leaving out the latest position: each user's one example is its second-to-last train item.
    earlier = training_examples(splits, codebook.item_ids, recent_items=4, max_per_user=1, skip_latest=1)
    assert len(earlier) == train["user_id"].nunique()
    u0_train = train[train["user_id"] == "u0"]["item_id"].tolist()
    assert f"i{earlier.targets[earlier.users == 'u0'].item()}" == u0_train[-2]
    assert [f"i{r}" for r in earlier.recent[earlier.users == "u0"][0] if r >= 0] == u0_train[-3::-1]
    # Skipping all but the first position leaves nothing (the first has no context).
    assert len(training_examples(splits, codebook.item_ids, 4, skip_latest=len(u0_train) - 1)) == 0
    # The first example of user u0 predicts its 2nd item from its 1st.
    u0 = splits[splits["user_id"] == "u0"]["item_id"].tolist()
    first = np.flatnonzero(examples.users == "u0")[0]
    assert f"i{examples.targets[first]}" == u0[1] and examples.recent[first].tolist() == [int(u0[0][1:]), -1, -1, -1]


@pytest.mark.parametrize("split, history", [("valid", 4), ("test", 5)])
def test_evaluation_histories(splits, split: str, history: int) -> None:
    codebook = tiny_codebook()
    requests = evaluation_requests(splits, codebook.item_ids, recent_items=8, split=split)
    assert len(requests) == 12 and (requests.lengths == history).all()
    u0 = splits[splits["user_id"] == "u0"]
    row = np.flatnonzero(requests.users == "u0")[0]
    assert f"i{requests.targets[row]}" == u0.loc[u0["split"] == split, "item_id"].item()
    expected = [int(i[1:]) for i in u0["item_id"].tolist()[:history]][::-1]
    assert requests.recent[row, :history].tolist() == expected


def test_batches_are_deterministic_disjoint_and_grouped() -> None:
    lengths = np.random.default_rng(0).integers(1, 21, 1000)
    a = batch_order(lengths, 32, seed=1, epoch=3, group_by_length=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, batch_order(lengths, 32, 1, 3, True)))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)  # noqa: E731
    assert padded(a) < 0.7 * padded(batch_order(lengths, 32, 1, 3, group_by_length=False))
    ranks = [batch_order(lengths, 32, 1, 3, True, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert not set(np.concatenate(ranks[0]).tolist()) & set(np.concatenate(ranks[1]).tolist())


def test_vsl_weights_average_one_and_follow_value() -> None:
    values = np.array([0.0, 1.0, 3.0, 10.0])
    weights = example_weights(values, "log1p")
    assert weights.mean() == pytest.approx(1.0) and np.all(np.diff(weights) > 0)
    assert example_weights(values, "linear").tolist() == pytest.approx((values / values.mean()).tolist())


def test_vsl_weights_the_loss(splits, tmp_path: Path) -> None:
    codebook = tiny_codebook()
    config = tiny_config(vsl=True)
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config)
    on = Trainer(config, data, tmp_path / "on")
    off_config = tiny_config(vsl=False)
    off = Trainer(off_config, data, tmp_path / "off")
    assert np.allclose(off.weights, 1.0) and not np.allclose(on.weights, 1.0)
    assert on.weights.mean() == pytest.approx(1.0)


def test_value_weight_mixes_plain_and_full_vsl(splits, tmp_path: Path) -> None:
    codebook = tiny_codebook()
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, tiny_config())
    full = Trainer(tiny_config(vsl=True), data, tmp_path / "full").weights
    none = Trainer(tiny_config(vsl=True, value_weight=0.0), data, tmp_path / "none").weights
    half = Trainer(tiny_config(vsl=True, value_weight=0.5), data, tmp_path / "half").weights
    # The simple reference: the average of plain cross-entropy's weights and full VSL's.
    assert np.allclose(none, 1.0)
    assert np.allclose(half, (full + 1.0) / 2) and half.mean() == pytest.approx(1.0)
    assert np.std(none) < np.std(half) < np.std(full)
    for wrong in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="train.value_weight"):
            tiny_config(value_weight=wrong).check()


def test_streamed_batches_weigh_as_in_memory_ones() -> None:
    values = np.array([0.0, 1.0, 3.0, 10.0, 2.5])
    mean = float(np.log1p(values).mean())
    for weight in (0.0, 0.3, 1.0):
        streamed = vsl_weights(weights_over_mean(values, "log1p", mean), weight)
        assert np.allclose(streamed, vsl_weights(example_weights(values, "log1p"), weight))


def test_training_data_leaves_out_the_latest_positions(splits) -> None:
    codebook = tiny_codebook()
    held_back = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes,
                                         tiny_config(skip_latest=1, max_examples_per_user=0))
    train = splits[splits["split"] == "train"]
    latest = set(zip(train.groupby("user_id")["item_id"].last().index, train.groupby("user_id")["item_id"].last()))
    assert len(held_back.train) == len(train) - 2 * train["user_id"].nunique()
    assert not latest & {(u, f"i{t}") for u, t in zip(held_back.train.users, held_back.train.targets)}
    with pytest.raises(ConfigError, match="skip_latest"):
        tiny_config(skip_latest=-1).check()


def test_schedule_warms_up_and_ends_at_zero() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)


def test_killed_run_resumes_to_the_same_weights(splits, tmp_path: Path) -> None:
    codebook = tiny_codebook()
    config = tiny_config()
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config)
    whole = Trainer(config, data, tmp_path / "whole").fit()
    assert whole.finished and whole.steps == 2 * Trainer(config, data, tmp_path / "x").batches_per_epoch
    killed = Trainer(config, data, tmp_path / "killed").fit(stop_after_steps=5)  # last checkpoint: step 3
    assert not killed.finished and killed.steps == 5
    resumed = Trainer(config, data, tmp_path / "killed").fit()
    assert resumed.finished and resumed.steps == whole.steps
    for name, value in whole.decoder.state_dict().items():
        assert torch.equal(value, resumed.decoder.state_dict()[name]), name
    assert [c.loss for c in resumed.curves] == [c.loss for c in whole.curves]
    assert len(whole.curves) == 2 and "recall@10" in whole.curves[-1].metrics


def test_torchrun_two_processes(splits, tmp_path: Path) -> None:
    codebook = tiny_codebook()
    splits.to_parquet(tmp_path / "splits.parquet")
    codebook.save(tmp_path / "codebook")
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(epochs=1, checkpoint_every=2).to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "genrec.train", "--config", str(tmp_path / "config.json"), "--splits",
               str(tmp_path / "splits.parquet"), "--codebook", str(tmp_path / "codebook"),
               "--work-dir", str(tmp_path / "work"), "--model-dir", str(tmp_path / "model")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    model = load_model(tmp_path / "model")
    training = model.manifest["training"]
    assert training["world_size"] == 2 and training["finished"] and training["steps"] >= 2
    assert model.recommend([["i1", "i2"]], beam_widths=[4], top_k=3)[0]


def test_snapshot_summaries_are_point_in_time() -> None:
    from genrec.train.summaries import SnapshotSummaries

    times = pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-02"], utc=True)
    provider = SnapshotSummaries(np.array(["a", "a", "b"]), times.to_numpy(), np.arange(3 * 2 * 4).reshape(3, 2, 4))
    cutoffs = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"], utc=True)
    out = provider(np.array(["a", "a", "a", "b", "c"]), cutoffs.to_numpy())
    assert out.shape == (5, 2, 4)
    assert not out[0].any()  # a snapshot AT the cutoff may include the target: never used
    assert out[1, 0, 0] == 0 and out[2, 0, 0] == 0 and out[3, 0, 0] == 16  # newest strictly older
    assert not out[4].any()  # unknown user


def test_training_with_summary_tokens(splits, tmp_path: Path) -> None:
    from genrec.train.summaries import SnapshotSummaries

    users = splits["user_id"].unique()
    start = pd.Timestamp("2023-01-01", tz="UTC")
    provider = SnapshotSummaries(users, np.full(len(users), start.to_datetime64()),
                                 np.random.default_rng(0).normal(size=(len(users), 3, 5)))
    codebook = tiny_codebook()
    config = tiny_config(epochs=1)
    config.model.use_summary = True
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config, provider)
    result = Trainer(config, data, tmp_path).fit()
    assert result.decoder.summary_dim == 5 and "recall@10" in result.curves[-1].metrics


def test_summaries_from_a_feature_repo_folder(tmp_path: Path) -> None:
    from genrec.features.repo import OFFLINE_PATHS, STORE_YAML
    from genrec.features.schema import USER_SUMMARY_VIEW
    from genrec.train.summaries import feature_repo_summaries
    from genrec.vista.snapshot import encode_summary

    (tmp_path / STORE_YAML).write_text("project: test\n")
    arrays = [np.full((2, 3), i, dtype=np.float32) for i in range(3)]
    encoded = [encode_summary(a) for a in arrays]
    frame = pd.DataFrame({"user_id": ["a", "a", "b"],
                          "event_timestamp": pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-02"], utc=True),
                          "summary": [e[0] for e in encoded], "summary_shape": [e[1] for e in encoded],
                          "n_items": [1, 5, 2]})
    path = tmp_path / OFFLINE_PATHS[USER_SUMMARY_VIEW]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    provider = feature_repo_summaries(tmp_path)
    out = provider(np.array(["a", "a", "b"]), pd.to_datetime(["2024-01-03", "2024-01-06", "2024-01-03"], utc=True).to_numpy())
    assert (provider.tokens, provider.dim) == (2, 3) and out[:, 0, 0].tolist() == [0.0, 1.0, 2.0]


def _any_rank_worker(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    from genrec.train.distributed import Distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = Distributed(rank=rank, world=2)
        results[rank] = (ctx.any_rank(rank == 1), ctx.any_rank(False))
    finally:
        dist.destroy_process_group()


def test_a_time_limit_hit_on_one_rank_stops_every_rank() -> None:
    import torch.multiprocessing as mp

    from testbed.serving import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_any_rank_worker, args=(free_port(), results), nprocs=2, join=True)
        assert dict(results) == {0: (True, False), 1: (True, False)}


def test_a_training_step_changes_no_buffer(splits, tmp_path: Path) -> None:
    """DDP runs without broadcasting buffers (genrec.train.loop): safe only while no step changes one."""
    codebook = tiny_codebook()
    config = tiny_config(epochs=1)
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config)
    trainer = Trainer(config, data, tmp_path / "work")
    before = {name: buffer.clone() for name, buffer in trainer.decoder.named_buffers()}
    assert before, "the decoder has buffers (item_codes)"
    trainer.fit(stop_after_steps=3)
    for name, buffer in trainer.decoder.named_buffers():
        assert torch.equal(buffer, before[name]), f"a training step changed the buffer {name}"


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from genrec.train.distributed import Distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        codebook = tiny_codebook()
        config = tiny_config(epochs=1)
        splits = leave_one_out(make_log(users=12, items=30, per_user=6))
        data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config)
        trainer = Trainer(config, data, Path(folder) / "work", Distributed(rank=rank, world=2))
        trainer.fit(stop_after_steps=4)
        torch.save(trainer.decoder.state_dict(), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_end_with_the_same_weights_and_buffers(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from testbed.serving import free_port

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
