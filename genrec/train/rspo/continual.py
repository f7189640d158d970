"""Continual RSPO: one update from a feedback log into a new model version.

The log is taken in time order. Rows that share (user_id, timestamp) are one request: its impressed
items with their rewards. The context is the user's interactions strictly before that time in a
history log (a point-in-time join, so the feedback item itself is never in its own context).
Requests go in (timestamp, user_id) order, `rspo.batch_size` to a step; a last partial batch is not
trained on but carried in the new version (`rspo_pending.parquet`) to the next update. With the
optimiser state carried too (`rspo_state.pt`), applying two logs one after the other takes exactly
the steps that applying both at once takes: same batches, same order, same Adam moments.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.config import GenrecConfig
from genrec.data.schema import ContractError
from genrec.model.artefact import load_model
from genrec.model.decoder import PAD_ITEM
from genrec.train.data import item_rows
from genrec.train.rspo.candidates import Requests, gain_scale
from genrec.train.rspo.trainer import RspoTrainer, _mean_stats
from genrec.train.rspo.versions import (
    PENDING_FILE,
    RspoResult,
    _load_state,
    next_version_dir,
    reference_decoder,
    save_rspo_model,
)

# The feedback log's columns: what each holds, and so what the error for a bad one says.
FEEDBACK_COLUMNS = {
    "user_id": "the user the items were shown to (string)",
    "item_id": "the impressed item, as in the catalogue (string)",
    "timestamp": "when the request was served (a datetime, or text pandas parses as one)",
    "reward": "the value the impression earned: a number >= 0, 0 for no conversion",
}


HISTORY_COLUMNS = ("user_id", "item_id", "timestamp")


class FeedbackError(ContractError):
    """A feedback or history log does not fit the schema; the message names the column and fix."""


def _utc(column: pd.Series, name: str, what: str) -> pd.Series:
    try:
        # "mixed": text may hold several ISO 8601 forms; each value is parsed on its own.
        text = column.dtype == object
        stamps = pd.to_datetime(column, utc=True, format="mixed" if text else None)
    except (ValueError, TypeError) as exc:
        raise FeedbackError(f"{what} column {name!r} holds values that are not times ({exc}): write "
                            "datetimes or ISO 8601 text") from exc
    if stamps.isna().any():
        raise FeedbackError(f"{what} column {name!r} has {int(stamps.isna().sum())} empty times: fill or "
                            "drop those rows")
    return stamps


def validate_feedback(frame: pd.DataFrame, source: str = "feedback log") -> pd.DataFrame:
    """The feedback log with typed columns (user_id, item_id str; timestamp UTC; reward float), or
    a FeedbackError naming the column and the fix."""
    if not len(frame):
        raise FeedbackError(f"{source} is empty: pass a log with at least one impression")
    for name, meaning in FEEDBACK_COLUMNS.items():
        if name not in frame.columns:
            raise FeedbackError(f"{source} lacks column {name!r} ({meaning}); it has "
                                f"{', '.join(map(str, frame.columns))}")
        if name != "timestamp" and frame[name].isna().any():
            raise FeedbackError(f"{source} column {name!r} has {int(frame[name].isna().sum())} empty values: "
                                f"fill or drop those rows ({meaning})")
    out = frame[list(FEEDBACK_COLUMNS)].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["timestamp"] = _utc(out["timestamp"], "timestamp", source)
    reward = pd.to_numeric(out["reward"], errors="coerce")
    bad = reward.isna() | ~np.isfinite(reward.fillna(0.0)) | (reward < 0)
    if bad.any():
        example = out.loc[bad, "reward"].iloc[0]
        raise FeedbackError(f"{source} column 'reward' has {int(bad.sum())} values that are not finite "
                            f"numbers >= 0 (e.g. {example!r}): use 0 for an impression without conversion")
    out["reward"] = reward.astype(float)
    return out


def validate_history(frame: pd.DataFrame, source: str = "history log") -> pd.DataFrame:
    for name in HISTORY_COLUMNS:
        if name not in frame.columns:
            raise FeedbackError(f"{source} lacks column {name!r}: pass the interaction log (user_id, "
                                "item_id, timestamp), e.g. the splits parquet")
    out = frame[list(HISTORY_COLUMNS)].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["timestamp"] = _utc(out["timestamp"], "timestamp", source)
    return out


def _ordered(feedback: pd.DataFrame) -> pd.DataFrame:
    """Time order, ties by user then item: the one order every way of slicing the log agrees on."""
    return feedback.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def feedback_requests(feedback: pd.DataFrame, history: pd.DataFrame, item_ids: np.ndarray,
                      recent_items: int) -> tuple[Requests, np.ndarray]:
    """One request per (user_id, timestamp) of a time-ordered log, and each row's request index.
    The context is the user's history strictly before the request time, most recent first."""
    keys = feedback["user_id"] + "\x00" + feedback["timestamp"].astype("int64").astype(str)
    request_of, _ = pd.factorize(keys)
    count = int(request_of.max()) + 1 if len(request_of) else 0
    rows = item_rows(feedback["item_id"], item_ids)
    width = int(np.bincount(request_of).max()) if count else 1
    items = np.full((count, width), PAD_ITEM, dtype=np.int64)
    rewards = np.zeros((count, width), dtype=np.float64)
    slot = feedback.groupby(request_of, sort=False).cumcount().to_numpy()
    items[request_of, slot] = rows
    rewards[request_of, slot] = feedback["reward"].to_numpy(float)
    first = np.unique(request_of, return_index=True)[1]
    users = feedback["user_id"].to_numpy()[first]
    times = feedback["timestamp"].dt.tz_localize(None).to_numpy("datetime64[ns]")[first]

    known = history.assign(row=item_rows(history["item_id"], item_ids))
    known = known[known["row"] >= 0].sort_values(["user_id", "timestamp"], kind="stable")
    by_user = {user: (group["timestamp"].dt.tz_localize(None).to_numpy("datetime64[ns]"),
                      group["row"].to_numpy()) for user, group in known.groupby("user_id", sort=False)}
    recent = np.full((count, recent_items), PAD_ITEM, dtype=np.int64)
    lengths = np.zeros(count, dtype=np.int64)
    for index, (user, when) in enumerate(zip(users, times)):
        stamps, item_list = by_user.get(user, (np.empty(0, "datetime64[ns]"), np.empty(0, np.int64)))
        before = item_list[:np.searchsorted(stamps, when, side="left")][-recent_items:][::-1]
        recent[index, :len(before)] = before
        lengths[index] = len(before)
    return Requests(recent, lengths, items, rewards, times), request_of


@dataclass
class UpdateResult:
    folder: Path
    trained_requests: int
    pending_requests: int
    dropped_rows: int
    steps: int


def continual_update(config: GenrecConfig, model_dir: str | Path, feedback: pd.DataFrame,
                     history: pd.DataFrame, models_dir: str | Path | None = None,
                     log: Callable[[str], None] = print,
                     on_step: Callable[[int, int], None] | None = None) -> UpdateResult:
    """One continual update: the model at `model_dir` (read only) + a feedback log -> a new version
    folder in `models_dir` (default: beside `model_dir`)."""
    rspo = config.rspo
    if rspo.threads:
        torch.set_num_threads(rspo.threads)
    torch.manual_seed(rspo.seed)
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    feedback = validate_feedback(feedback)
    # Gains are scaled once per chain of versions: by the saved scale, else by the history's values
    # (the VSL training data's, when the history is the splits), else not at all.
    values = pd.to_numeric(history["value"], errors="coerce").dropna() if "value" in history else pd.Series()
    history = validate_history(history)
    saved = _load_state(model_dir)
    scale = float(saved["gain_scale"]) if saved else gain_scale(values.to_numpy(float), rspo.reward_transform)
    last = pd.Timestamp(saved["last_time"]) if saved and saved.get("last_time") is not None else None
    if last is not None and (feedback["timestamp"] < last).any():
        first = feedback["timestamp"].min()
        raise FeedbackError(f"feedback log has events from {first} but {model_dir} already learnt from "
                            f"events up to {last}: pass only newer feedback (time order)")
    known = item_rows(feedback["item_id"], model.item_ids) >= 0
    dropped = int((~known).sum())
    if dropped:
        log(f"{dropped} feedback rows name items without a semantic ID in this model; they are left out "
            "until the codebook is rebuilt")
    feedback = feedback[known]
    if (model_dir / PENDING_FILE).is_file():
        pending = validate_feedback(pd.read_parquet(model_dir / PENDING_FILE), "pending feedback")
        feedback = pd.concat([pending, feedback], ignore_index=True)
    if not len(feedback):
        raise FeedbackError("no feedback row names an item this model knows: check the item_id column")
    feedback = _ordered(feedback)
    requests, request_of = feedback_requests(feedback, history, model.item_ids,
                                             model.decoder.config.recent_items)
    trained = len(requests) // rspo.batch_size * rspo.batch_size
    trainer = RspoTrainer(copy.deepcopy(model.decoder), reference_decoder(model, model_dir), rspo, scale,
                          saved, model.decoder.item_codes.device)
    total = trained // rspo.batch_size
    log(f"continual rspo: {len(requests)} requests, {total} steps of {rspo.batch_size}; "
        f"{len(requests) - trained} requests wait for the next update")
    started = time.perf_counter()
    curve, window = [], []
    for step, start in enumerate(range(0, trained, rspo.batch_size), 1):
        window.append(trainer.step(requests.subset(np.arange(start, start + rspo.batch_size))))
        if on_step is not None:
            on_step(step, total)
        if step % rspo.log_every == 0 or step == total:
            curve.append(_mean_stats(window, step, time.perf_counter() - started))
            window = []
    state = trainer.state()
    state["last_time"] = (pd.Timestamp(requests.times[trained - 1], tz="UTC") if trained else last)
    pending = feedback[request_of >= trained]
    stats = {"mode": "continual", "loss": rspo.loss, "steps": total, "trained_requests": trained,
             "pending_requests": len(requests) - trained, "dropped_rows": dropped,
             "train_seconds": time.perf_counter() - started, "config": dataclasses.asdict(rspo)}
    result = RspoResult(trainer.policy, trainer.reference.state_dict(), state, curve, stats)
    folder = next_version_dir(models_dir if models_dir is not None else model_dir.parent, rspo)
    save_rspo_model(folder, result, model.item_ids, model_dir, pending, model.value_tilt)
    log(f"wrote {folder} ({total} steps; served model {model_dir} untouched)")
    return UpdateResult(folder, trained, len(requests) - trained, dropped, total)
