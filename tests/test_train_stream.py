"""Training on streamed examples (`train.examples: stream`): a killed run resumes to the same weights
and the same losses, in process and with loader worker processes; each epoch sees the plan's
lockstep batches; bad combinations name the setting to change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.data.partitioned import write_partitioned
from genrec.data.split import leave_one_out
from genrec.train.data import evaluation_requests
from genrec.train.loop import Trainer, TrainingData
from genrec.train.run import training_data
from tests.conftest import make_log
from tests.test_train import tiny_codebook, tiny_config


@pytest.fixture(scope="module")
def partitioned_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("splits") / "splits"
    folder.mkdir()
    write_partitioned(leave_one_out(make_log(users=40, items=30, per_user=8)), folder, 3)
    return folder


def streamed(splits: Path, **train) -> tuple[TrainingData, object]:  # type: ignore[type-arg]
    config = tiny_config(examples="stream", **train)
    codebook = tiny_codebook()
    return training_data(config, splits, codebook), config


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_streamed_run_resumes_to_the_same_weights(partitioned_splits: Path, tmp_path: Path,
                                                          workers: int) -> None:
    data, config = streamed(partitioned_splits, loader_workers=workers)
    whole = Trainer(config, data, tmp_path / "whole").fit()  # type: ignore[arg-type]
    per_epoch = [data.train.batches_in_epoch(e) for e in range(2)]  # type: ignore[union-attr]
    assert whole.finished and whole.steps == sum(per_epoch) > 6
    killed = Trainer(config, data, tmp_path / "killed").fit(stop_after_steps=per_epoch[0] + 2)  # type: ignore[arg-type]
    assert not killed.finished
    resumed = Trainer(config, data, tmp_path / "killed").fit()  # type: ignore[arg-type]
    assert resumed.finished and resumed.steps == whole.steps
    for name, value in whole.decoder.state_dict().items():
        assert torch.equal(value, resumed.decoder.state_dict()[name]), name
    assert [c.loss for c in resumed.curves] == [c.loss for c in whole.curves]
    assert whole.stats["train_examples"] == len(data.train) and len(data.valid) > 0


def test_streamed_and_in_memory_runs_see_the_same_examples(partitioned_splits: Path) -> None:
    from genrec.data.partitioned import read_all

    data, _ = streamed(partitioned_splits)
    memory = training_data(tiny_config(), read_all(partitioned_splits), tiny_codebook())
    assert len(data.train) == len(memory.train)
    # train.group_by_length reaches the stream, as it does the in-memory batch order
    assert data.train.group_by_length is tiny_config().train.group_by_length is True  # type: ignore[union-attr]
    assert streamed(partitioned_splits, group_by_length=False)[0].train.group_by_length is False  # type: ignore[union-attr]
    assert data.train.plan.value_mean == pytest.approx(np.log1p(memory.train.values).mean())  # type: ignore[union-attr]
    # validation: a sample of about valid_users (5) of the users with a validation target, the
    # same requests as the in-memory builder makes for them
    every = evaluation_requests(read_all(partitioned_splits), tiny_codebook().item_ids, 4, "valid")
    assert 5 <= len(data.valid) <= 5 + 3 and len(set(data.valid.users)) == len(data.valid)
    where = {user: i for i, user in enumerate(every.users)}
    for i, user in enumerate(data.valid.users):
        assert np.array_equal(data.valid.recent[i], every.recent[where[user]])
        assert data.valid.targets[i] == every.targets[where[user]]


def test_bad_combinations_name_the_setting(partitioned_splits: Path) -> None:
    frame = pd.read_parquet(next(partitioned_splits.glob("part-*.parquet")))
    with pytest.raises(ValueError, match="pass its path"):
        training_data(tiny_config(examples="stream"), frame, tiny_codebook())
    with pytest.raises(ValueError, match="model.use_summary=false"):
        config = tiny_config(examples="stream")
        config.model.use_summary = True
        training_data(config, partitioned_splits, tiny_codebook())
    with pytest.raises(ValueError, match="lower train.loader_workers"):  # 3 buckets, 4 shards
        data, config = streamed(partitioned_splits, loader_workers=4)
        Trainer(config, data, partitioned_splits.parent / "work")  # type: ignore[arg-type]
    from genrec.config import ConfigError

    with pytest.raises(ConfigError, match="loader_workers"):
        tiny_config(loader_workers=-1).check()
    with pytest.raises(ConfigError, match="examples"):
        tiny_config(examples="disk").check()
