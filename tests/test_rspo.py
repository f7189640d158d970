"""RSPO: the loss on a hand-computed list, continual updates (sequence == all at once, the served
model untouched), no validation/test target in training, the CLI on bad input, the component."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kfp.dsl import HTML, Dataset, Metrics, Model
from typer.testing import CliRunner

import genrec.train.rspo as rspo_module
import genrec.train.rspo.trainer as rspo_trainer
from genrec.cli import app
from genrec.config import ConfigError, GenrecConfig, RspoConfig
from genrec.data.split import leave_one_out
from genrec.model.artefact import load_model, save_model
from genrec.model.decoder import Context, SidSpace, build_decoder
from genrec.train.data import training_examples
from genrec.train.rspo import (
    PENDING_FILE,
    REFERENCE_FILE,
    FeedbackError,
    continual_update,
    finetune,
    gain_weights,
    rspo_objective,
    validate_feedback,
)
from tests.conftest import make_log
from tests.test_train import tiny_codebook

BATCH = 4


def rspo_config(**rspo) -> GenrecConfig:
    return GenrecConfig.from_dict({
        "model": {"d_model": 16, "layers": 2, "heads": 2, "recent_items": 4, "dropout": 0.1},
        "train": {"beam_widths": [4], "top_k": 10, "eval_batch_size": 8},
        "rspo": {"candidates": 5, "beam_widths": [4], "batch_size": BATCH, "lr": 1e-2, "log_every": 1,
                 "max_examples_per_user": 2, "valid_users": 0, **rspo},
    })


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A model folder as train_generator writes it (random weights: only the mechanics matter)."""
    config = rspo_config()
    codebook = tiny_codebook(items=40)
    torch.manual_seed(0)
    decoder = build_decoder(config.model, SidSpace(codebook.level_sizes, codebook.codes))
    return save_model(tmp_path / "models" / "v0001", decoder, codebook.item_ids)


def folder_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder).decoder.state_dict()


# -- (1) the loss, by hand ----------------------------------------------------------------------


def test_rspo_and_dpo_loss_match_a_hand_computed_list() -> None:
    # Three candidates in policy order (ranks 0, 1, 2) with s = log pi - log pi_ref = 0.3, 0.5, -0.2
    # and rewards 0, 2, 1; a fourth slot is invalid (padding) and must be ignored despite its reward.
    beta, size = 2.0, 3
    s = [0.3, 0.5, -0.2]
    log_ref = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    log_pi = log_ref + torch.tensor([[*s, 9.0]])
    gains = torch.tensor([[0.0, 2.0, 1.0, 5.0]])
    valid = torch.tensor([[True, True, True, False]])
    ranks = torch.tensor([[0, 1, 2, 3]])
    e = [math.exp(beta * x) for x in s]
    # y1 (reward 2) against both worse candidates; y2 (reward 1) against y0 only (y1 is better).
    loss_1 = -math.log(e[1] / (e[1] + e[0] + e[2]))
    loss_2 = -math.log(e[2] / (e[2] + e[0]))
    # |gain of moving to the top| = reward * (1 - 1/log2(2 + rank)).
    weight_1 = 2.0 * (1.0 - 1.0 / math.log2(3.0))
    weight_2 = 1.0 * (1.0 - 1.0 / math.log2(4.0))
    expected_rspo = weight_1 * loss_1 + weight_2 * loss_2

    config = RspoConfig(beta=beta, candidates=size, kl_weight=0.0, gain="dcg")
    got = rspo_objective(log_pi, log_ref, gains, valid, ranks, config)
    assert float(got.total) == pytest.approx(expected_rspo, rel=1e-6)

    def nls(x: float) -> float:  # -log sigmoid(x)
        return math.log(1.0 + math.exp(-x))

    expected_dpo = (weight_1 * (nls(beta * (s[1] - s[0])) + nls(beta * (s[1] - s[2]))) / 2
                    + weight_2 * nls(beta * (s[2] - s[0])))
    config.loss = "dpo"
    assert float(rspo_objective(log_pi, log_ref, gains, valid, ranks, config).total) == pytest.approx(
        expected_dpo, rel=1e-6)

    # With the gain's DCG cut at K = 2, y2 (rank 2) is outside the top K: its weight is its gain.
    config.loss, config.gain_cutoff = "rspo", 2
    assert float(rspo_objective(log_pi, log_ref, gains, valid, ranks, config).total) == pytest.approx(
        weight_1 * loss_1 + 1.0 * loss_2, rel=1e-6)
    config.gain_cutoff = 0

    # The drift guard: KL of pi to pi_ref, both renormalised over the three valid candidates.
    config.loss, config.kl_weight = "rspo", 0.5
    p = [math.exp(x) for x in log_pi[0, :3].tolist()]
    q = [math.exp(x) for x in log_ref[0, :3].tolist()]
    p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
    kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    got = rspo_objective(log_pi, log_ref, gains, valid, ranks, config)
    assert float(got.total) == pytest.approx(expected_rspo + 0.5 * kl, rel=1e-6)


def test_gain_weights_ndcg_and_teacher_forced_positive() -> None:
    # A positive at the top gains nothing; one past the list's end (teacher-forced) gains all of it.
    gains = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    ranks = torch.tensor([[0, 1, 2], [0, 1, 2]])
    dcg = gain_weights(gains, valid, ranks, list_size=2, mode="dcg")
    assert dcg.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    ndcg = gain_weights(gains, valid, ranks, list_size=2, mode="ndcg")
    assert ndcg[1, 2].item() == pytest.approx(1.0)  # ideal DCG is 3 (the positive at the top)


# -- (2) continual updates -----------------------------------------------------------------------


def feedback_log(users: int, start: str, seed: int, requests: int) -> pd.DataFrame:
    """Requests of two impressions each, one of them converted (reward > 0) half of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(requests):
        when = pd.Timestamp(start, tz="UTC") + pd.Timedelta(minutes=index)
        user = f"u{rng.integers(users)}"
        shown = rng.choice(30, size=2, replace=False)
        converted = rng.random() < 0.5
        for slot, item in enumerate(shown):
            rows.append({"user_id": user, "item_id": f"i{item}", "timestamp": when,
                         "reward": float(rng.uniform(0.5, 3.0)) if converted and slot == 0 else 0.0})
    return pd.DataFrame(rows)


def test_two_feedback_batches_in_sequence_equal_both_at_once(served: Path, tmp_path: Path) -> None:
    config = rspo_config()
    history = leave_one_out(make_log(users=12, items=30, per_user=6))
    first = feedback_log(12, "2024-06-01", seed=1, requests=10)  # 2 steps of 4, 2 requests wait
    second = feedback_log(12, "2024-06-02", seed=2, requests=9)  # with those 2: 2 steps, 3 wait
    served_hash = folder_hash(served)

    a = continual_update(config, served, first, history, log=lambda _: None)
    assert a.folder.name == "v0002" and (a.steps, a.pending_requests) == (2, 2)
    assert folder_hash(served) == served_hash
    b = continual_update(config, a.folder, second, history, log=lambda _: None)
    assert b.folder.name == "v0003" and (b.steps, b.pending_requests) == (2, 3)
    assert folder_hash(served) == served_hash

    both = continual_update(config, served, pd.concat([second, first]), history,
                            models_dir=tmp_path / "at-once", log=lambda _: None)
    assert (both.steps, both.pending_requests) == (4, 3)
    assert folder_hash(served) == served_hash

    sequential, at_once, start = weights(b.folder), weights(both.folder), weights(served)
    assert max((sequential[k] - start[k]).abs().max().item() for k in start) > 1e-3  # it did learn
    for key in start:
        torch.testing.assert_close(sequential[key], at_once[key], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(b.folder / PENDING_FILE),
                                  pd.read_parquet(both.folder / PENDING_FILE))
    # Every version keeps the reference it started from: the served VSL model.
    reference = torch.load(b.folder / REFERENCE_FILE, weights_only=True)
    for key in start:
        torch.testing.assert_close(reference[key], start[key])
    # Feedback older than what a version already learnt from is refused (time order).
    with pytest.raises(FeedbackError, match="pass only newer feedback"):
        continual_update(config, b.folder, first, history, log=lambda _: None)


def test_feedback_validation_names_the_column_and_fix() -> None:
    good = feedback_log(3, "2024-06-01", seed=0, requests=2)
    with pytest.raises(FeedbackError, match="lacks column 'reward'"):
        validate_feedback(good.drop(columns="reward"))
    with pytest.raises(FeedbackError, match="'reward' has 1 values .* use 0 for an impression"):
        validate_feedback(good.assign(reward=[1.0, -1.0, 0.0, 0.0]))
    with pytest.raises(FeedbackError, match="'timestamp' holds values that are not times"):
        validate_feedback(good.assign(timestamp="yesterday"))
    with pytest.raises(FeedbackError, match="'user_id' has 1 empty values"):
        validate_feedback(good.assign(user_id=[None, "u1", "u1", "u2"]))


# -- (3) no validation or test target reaches training -----------------------------------------


def test_rspo_never_sees_valid_or_test_targets(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = leave_one_out(make_log(users=12, items=30, per_user=6))
    # Held-out targets become items that appear nowhere in the training rows.
    held = splits["split"] != "train"
    splits.loc[held, "item_id"] = [f"i{30 + k % 10}" for k in range(int(held.sum()))]
    held_rows = set(range(30, 40))
    seen_rewarded, seen_context = [], []
    original = rspo_trainer.candidate_lists

    def spy(policy, recent, tables, extras, gains, config, include_extras):
        assert include_extras
        lists = original(policy, recent, tables, extras, gains, config, include_extras)
        seen_rewarded.extend(lists.items[lists.gains > 0].tolist())
        seen_context.extend(recent[recent >= 0].tolist())
        return lists

    monkeypatch.setattr(rspo_trainer, "candidate_lists", spy)
    # Teacher forcing on: every positive enters a list, so every reward is checked.
    config = rspo_config(max_examples_per_user=0, positive_window=3, include_target=True)
    result = finetune(config, splits, load_model(served), served, log=lambda _: None)
    assert result.stats["steps"] > 0 and seen_rewarded and seen_context
    assert not held_rows & set(seen_rewarded)
    assert not held_rows & set(seen_context)
    train_items = {int(i[1:]) for i in splits.loc[~held, "item_id"]}
    assert set(seen_rewarded) <= train_items


# -- (4) the command line -----------------------------------------------------------------------


def test_cli_bad_input_is_one_clear_line(served: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def said(result) -> str:  # the message, unwrapped from the terminal width
        return " ".join(result.output.split())
    history = tmp_path / "history.parquet"
    leave_one_out(make_log(users=12, items=30, per_user=6)).to_parquet(history)
    broken = tmp_path / "feedback.parquet"
    feedback_log(12, "2024-06-01", seed=1, requests=3).drop(columns="reward").to_parquet(broken)
    served_hash = folder_hash(served)

    result = runner.invoke(app, ["train", "rspo", "--model", str(served), "--feedback", str(broken),
                                 "--history", str(history)])
    assert result.exit_code == 1 and "lacks column 'reward'" in said(result)
    assert "Traceback" not in said(result)
    result = runner.invoke(app, ["train", "rspo", "--model", str(served), "--feedback", str(broken)])
    assert result.exit_code == 1 and "--feedback needs --history" in said(result)
    result = runner.invoke(app, ["train", "rspo", "--model", str(tmp_path / "nothing"), "--splits",
                                 str(history)])
    assert result.exit_code == 1 and "neither a model folder" in said(result)
    result = runner.invoke(app, ["train", "rspo", "--model", str(served), "--splits", str(history),
                                 "--set", "rspo.loss=ppo"])
    assert result.exit_code == 1 and "rspo.loss must be one of 'rspo', 'dpo'" in said(result)
    assert folder_hash(served) == served_hash and sorted(p.name for p in served.parent.iterdir()) == ["v0001"]

    good = tmp_path / "good.parquet"
    feedback_log(12, "2024-06-01", seed=1, requests=5).to_parquet(good)
    result = runner.invoke(app, ["train", "rspo", "--model", str(served.parent), "--feedback", str(good),
                                 "--history", str(history), "--set", "rspo.batch_size=4"])
    assert result.exit_code == 0, result.output
    # The terminal wraps long paths anywhere, even inside "v0002".
    assert "v0002" in "".join(result.output.split()) and (served.parent / "v0002" / "model.pt").is_file()
    assert folder_hash(served) == served_hash


# -- (5) the Kubeflow component -----------------------------------------------------------------


def test_finetune_rspo_component_runs(served: Path, tmp_path: Path) -> None:
    from components.rspo import finetune_rspo

    splits_path = tmp_path / "splits.parquet"
    leave_one_out(make_log(users=12, items=30, per_user=6)).to_parquet(splits_path)
    out = tmp_path / "out"
    out.mkdir()
    splits = Dataset(uri=str(splits_path), metadata={"dataset": "tiny"})
    vsl = Model(uri=str(served), metadata={})
    model, report, metrics = Model(uri=str(out / "model")), HTML(uri=str(out / "report")), \
        Metrics(uri=str(out / "metrics"))
    served_hash = folder_hash(served)
    finetune_rspo.python_func(config=rspo_config().to_dict(), splits=splits, vsl_model=vsl, model=model,
                              report=report, metrics=metrics)
    tuned = load_model(out / "model")
    assert tuned.manifest["rspo"]["steps"] == 6  # 24 training requests (2 per user) / 4
    assert (out / "model" / REFERENCE_FILE).is_file()
    assert "data:image/png;base64" in (out / "report").read_text()
    assert metrics.metadata["steps"] == 6 and "valid_subset_after_value@10" in metrics.metadata
    assert folder_hash(served) == served_hash


def test_candidate_scores_equal_the_full_teacher_forced_pass(served: Path) -> None:
    decoder = load_model(served).decoder
    recent = torch.tensor([[3, 1, -1, -1], [5, 2, 7, 0]])
    items = torch.tensor([[0, 4, 9], [12, 3, 3]])
    fast = rspo_module.sequence_log_probs(decoder, recent, items)
    context = decoder.embed_context(recent)
    rows = [decoder.code_log_probs(Context(context.tokens[b:b + 1].expand(3, -1, -1),
                                           context.pad[b:b + 1].expand(3, -1)), decoder.item_codes[items[b]])
            .sum(-1) for b in range(2)]
    torch.testing.assert_close(fast, torch.stack(rows), rtol=1e-5, atol=1e-5)


def test_positive_window_takes_the_next_training_items_of_the_same_user() -> None:
    splits = leave_one_out(make_log(users=3, items=30, per_user=6))
    examples = training_examples(splits, tiny_codebook(items=40).item_ids, recent_items=4)
    requests = rspo_module.Requests.from_examples(examples, window=3)
    for user in ("u0", "u1", "u2"):
        rows = np.flatnonzero(examples.users == user)  # 3 examples: train items 2, 3, 4 of the user
        assert requests.items[rows[0]].tolist() == examples.targets[rows].tolist()
        assert requests.items[rows[-1]].tolist() == [examples.targets[rows[-1]], -1, -1]
        assert requests.rewards[rows[1]].tolist() == [*examples.values[rows[1:]].tolist(), 0.0]


def test_tail_average_equals_the_mean_of_the_truncated_runs(served: Path) -> None:
    """Fast path: one run keeping a running mean. Reference: the same run stopped after each step of
    the tail (same seed, same order), its weights averaged by hand."""
    splits = leave_one_out(make_log(users=12, items=30, per_user=6))
    quiet = {"log": lambda _: None}
    base = {"max_examples_per_user": 0, "max_steps": 4, "average_from": 0.0}
    averaged = finetune(rspo_config(**{**base, "average_from": 0.5}), splits, load_model(served), served,
                        **quiet)
    assert averaged.stats["steps"] == 4 and averaged.stats["averaged_steps"] == 2
    iterates = [finetune(rspo_config(**{**base, "max_steps": steps}), splits, load_model(served), served,
                         **quiet).policy.state_dict() for steps in (3, 4)]
    got = averaged.policy.state_dict()
    names = [name for name, _ in averaged.policy.named_parameters()]
    for name in names:
        torch.testing.assert_close(got[name], (iterates[0][name] + iterates[1][name]) / 2)
    # Averaging changed something: the mean differs from the last iterate.
    assert any(not torch.equal(got[name], iterates[1][name]) for name in names)
    # Buffers (the item codes) are the model's own, not averaged.
    for name, buffer in averaged.policy.named_buffers():
        torch.testing.assert_close(buffer, iterates[1][name])


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_average_from_out_of_range_names_the_field(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"rspo\.average_from must be in \[0, 1\)"):
        rspo_config(average_from=bad)
