"""Request parsing and validation for the predictor: v1 (`instances`) and v2 (Open Inference Protocol).

Everything a client can get wrong is checked here, before any model work, and raised as
`RequestError` with a message that names the field and what is allowed; the server turns it into
HTTP 400. The model only ever sees well-formed `Instance`s.

v1 body::

    {"instances": [{"user_id": "u1", "recent_items": ["i3", "i9"], "k": 10, "beam_policy": [16, 8]}]}

`user_id` (string) and `k` (1..serving.max_top_k) are required; `recent_items` (item ids, oldest
first) and `beam_policy` (per-level widths, never wider than the widest ladder rung) are optional.

v2 body (Open Inference Protocol), one row per request::

    {"inputs": [
      {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "u2"]},
      {"name": "recent_items", "datatype": "BYTES", "shape": [2, 3], "data": ["i1", "i2", "", ...]},
      {"name": "k", "datatype": "INT64", "shape": [1], "data": [10]},
      {"name": "beam_policy", "datatype": "INT64", "shape": [1, 2], "data": [16, 8]}]}

Item ids the model does not know are refused (400, naming them) rather than dropped: a history the
model cannot read would silently degrade the answer. An explicitly empty `recent_items` is refused
too; leave the field out to ask for summary-only (or popular-item) recommendations.

`recent_items` rows are padded with "" (ignored); `k` and `beam_policy` hold one row for the whole
request or one per row. The answer has outputs `item_ids` (BYTES [B, K]), `scores` (FP32 [B, K]) and
`sids` (INT64 [B, K, L]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from genrec.config import ServingConfig
from genrec.serving.policy import BeamLadder, BeamPolicy, PolicyError

V1_FIELDS = {"user_id", "recent_items", "k", "beam_policy"}
V2_INPUTS = {"user_id", "recent_items", "k", "beam_policy"}
# Longest user id accepted: ids are keys, not documents; a bound keeps logs and Feast keys sane.
MAX_USER_ID_CHARS = 256


class RequestError(ValueError):
    """The request is malformed; the message says which field and what is allowed."""


@dataclass(frozen=True)
class Instance:
    user_id: str
    recent_items: tuple[str, ...]
    k: int
    # None: the policy in force (the ladder rung the admin endpoint, guard or default set).
    policy: BeamPolicy | None
    # The client omitted recent_items (as opposed to sending some).
    history_given: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_k(value: Any, where: str, config: ServingConfig) -> int:
    if not _is_int(value):
        raise RequestError(f"{where}.k must be an integer 1..{config.max_top_k}, got {_show(value)}")
    if not 1 <= value <= config.max_top_k:
        raise RequestError(f"{where}.k={value} is out of range: ask for 1..{config.max_top_k} items")
    return int(value)


def check_user(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(f"{where}.user_id must be a non-empty string, got {_show(value)}")
    if len(value) > MAX_USER_ID_CHARS:
        raise RequestError(f"{where}.user_id is longer than {MAX_USER_ID_CHARS} characters")
    return value


def check_items(value: Any, where: str, config: ServingConfig) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(f"{where}.recent_items must be a list of item id strings, got {_show(value)}")
    if len(value) > config.max_recent_items:
        raise RequestError(f"{where}.recent_items has {len(value)} items; at most "
                           f"{config.max_recent_items} are accepted (send the most recent ones)")
    if not value:
        raise RequestError(f"{where}.recent_items is empty: leave the field out to recommend from the "
                           "user's stored summary (or popular items) alone")
    for position, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise RequestError(f"{where}.recent_items[{position}] must be a non-empty item id string, "
                               f"got {_show(item)}")
    return tuple(value)


def check_policy(value: Any, where: str, ladder: BeamLadder) -> BeamPolicy:
    if not isinstance(value, list):
        raise RequestError(f"{where}.beam_policy must be a list of per-level beam widths, got {_show(value)}")
    try:
        return ladder.check_request_policy(value)
    except PolicyError as exc:
        raise RequestError(f"{where}.{exc}") from exc


def parse_v1(payload: Any, config: ServingConfig, ladder: BeamLadder) -> list[Instance]:
    if not isinstance(payload, dict):
        raise RequestError('the body must be a JSON object {"instances": [...]} (v1) or an Open '
                           'Inference Protocol request (v2)')
    if "instances" not in payload:
        raise RequestError('missing field "instances": send {"instances": [{"user_id": ..., "k": ...}]}')
    extra = set(payload) - {"instances", "parameters"}
    if extra:
        raise RequestError(f"unknown top-level field(s) {sorted(extra)}: only instances is read")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError('"instances" must be a non-empty list of request objects')
    if len(instances) > config.max_instances_per_request:
        raise RequestError(f'"instances" has {len(instances)} entries; at most '
                           f"{config.max_instances_per_request} per request")
    out = []
    for index, raw in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(raw, dict):
            raise RequestError(f"{where} must be an object with user_id and k, got {_show(raw)}")
        unknown = set(raw) - V1_FIELDS
        if unknown:
            raise RequestError(f"{where} has unknown field(s) {sorted(unknown)}; "
                               f"allowed: {sorted(V1_FIELDS)}")
        for required in ("user_id", "k"):
            if required not in raw:
                raise RequestError(f"{where} is missing the required field {required!r}")
        history_given = "recent_items" in raw
        out.append(Instance(
            user_id=check_user(raw["user_id"], where),
            recent_items=check_items(raw["recent_items"], where, config) if history_given else (),
            k=check_k(raw["k"], where, config),
            policy=check_policy(raw["beam_policy"], where, ladder) if "beam_policy" in raw else None,
            history_given=history_given,
        ))
    return out


def parse_v2(inputs: Sequence[Any], config: ServingConfig, ladder: BeamLadder) -> list[Instance]:
    """`inputs`: (name, shape, data as a flat python list) per input tensor."""
    tensors: dict[str, tuple[list[int], list[Any]]] = {}
    for name, shape, data in inputs:
        if name not in V2_INPUTS:
            raise RequestError(f"unknown input {name!r}; allowed inputs: {sorted(V2_INPUTS)}")
        if name in tensors:
            raise RequestError(f"input {name!r} is given twice")
        tensors[name] = (list(shape), list(data))
    for required in ("user_id", "k"):
        if required not in tensors:
            raise RequestError(f"missing the required input {required!r}")
    users_shape, users = tensors["user_id"]
    if len(users_shape) != 1 or not users:
        raise RequestError(f"input user_id must have shape [B] with B >= 1, got {users_shape}")
    batch = len(users)
    if batch > config.max_instances_per_request:
        raise RequestError(f"user_id has {batch} rows; at most {config.max_instances_per_request} "
                           "per request")
    users = [_text(u) for u in users]
    ks = _rows("k", tensors["k"], batch, scalar=True)
    policies = _rows("beam_policy", tensors["beam_policy"], batch, scalar=False) \
        if "beam_policy" in tensors else [None] * batch
    histories: list[list[Any] | None] = [None] * batch
    if "recent_items" in tensors:
        shape, data = tensors["recent_items"]
        if len(shape) != 2 or shape[0] != batch:
            raise RequestError(f"input recent_items must have shape [{batch}, R] (pad rows with \"\"), "
                               f"got {shape}")
        width = shape[1]
        histories = [[_text(x) for x in data[row * width:(row + 1) * width] if _text(x) != ""]
                     for row in range(batch)]
    out = []
    for row in range(batch):
        where = f"row {row}"
        history = histories[row]
        # An all-padding row means "no recent items" for that row, as an omitted field does in v1.
        history_given = bool(history)
        out.append(Instance(
            user_id=check_user(users[row], where),
            recent_items=check_items(history, where, config) if history_given else (),
            k=check_k(ks[row], where, config),
            policy=None if policies[row] is None else check_policy(policies[row], where, ladder),
            history_given=history_given,
        ))
    ks_seen = {instance.k for instance in out}
    if len(ks_seen) > 1:
        raise RequestError("a v2 request returns one [B, K] tensor: give every row the same k")
    return out


def _rows(name: str, tensor: tuple[list[int], list[Any]], batch: int, scalar: bool) -> list[Any]:
    """One value (scalar) or one list (vector) per row, from a [1]/[B] or [1, L]/[B, L] tensor."""
    shape, data = tensor
    if scalar:
        if len(shape) != 1 or shape[0] not in (1, batch) or len(data) != shape[0]:
            raise RequestError(f"input {name} must have shape [1] or [{batch}], got {shape}")
        values = [_number(v, name) for v in data]
        return values * batch if len(values) == 1 else values
    if len(shape) != 2 or shape[0] not in (1, batch) or shape[1] < 1 or len(data) != shape[0] * shape[1]:
        raise RequestError(f"input {name} must have shape [1, L] or [{batch}, L], got {shape}")
    width = shape[1]
    rows = [[_number(v, name) for v in data[r * width:(r + 1) * width]] for r in range(shape[0])]
    return rows * batch if len(rows) == 1 else rows


def _number(value: Any, name: str) -> Any:
    # JSON numbers in a v2 INT tensor may arrive as floats (1.0); only integral values count.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
