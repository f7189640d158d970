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
request or one per row. `user_id` and `recent_items` are BYTES; `k` and `beam_policy` any integer
type. The answer has outputs `item_ids` (BYTES [B, K]), `scores` (FP32 [B, K]) and `sids`
(INT64 [B, K, L]).

Bodies are parsed here too (`parse_json`), with their nesting depth bounded: no field of a request
may nest deeper than `serving.max_json_depth`, so no input can exhaust the parser's stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from genrec.config import ServingConfig
from genrec.serving.policy import BeamLadder, BeamPolicy, PolicyError

V1_FIELDS = frozenset({"user_id", "recent_items", "k", "beam_policy"})
# Longest user id accepted: ids are keys, not documents; a bound keeps logs and Feast keys sane.
MAX_USER_ID_CHARS = 256


class RequestError(ValueError):
    """The request is malformed; the message says which field and what is allowed."""


@dataclass(frozen=True)
class RequestRules:
    """What a request may ask of this model: the serving bounds, the beam ladder and the model's
    number of semantic-ID levels (a beam policy has at most one width per level)."""

    config: ServingConfig
    ladder: BeamLadder
    levels: int


@dataclass(frozen=True)
class Instance:
    user_id: str
    recent_items: tuple[str, ...]
    k: int
    # None: the policy in force (the ladder rung the admin endpoint, guard or default set).
    policy: BeamPolicy | None
    # The client omitted recent_items (as opposed to sending some).
    history_given: bool


def parse_json(body: bytes, max_depth: int, what: str) -> Any:
    """`body` as JSON, its nesting at most `max_depth` deep (RequestError otherwise)."""
    if not body.strip():
        raise RequestError(f"{what} has an empty body: send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"{what} is not valid JSON: {str(exc)[:120]}") from exc
    check_depth(value, max_depth, what)
    return value


def check_depth(value: Any, max_depth: int, what: str) -> None:
    """Iterative, so the check itself cannot run out of stack."""
    if not isinstance(value, (list, dict)):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise RequestError(f"{what} nests lists and objects more than {max_depth} levels deep "
                               "(serving.max_json_depth); no genrec request needs that")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))


def check_fields(value: Any, allowed: frozenset[str], where: str, expected: str) -> dict[str, Any]:
    """`value` as a JSON object whose keys are all in `allowed`."""
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be {expected}, got {_show(value)}")
    unknown = set(value) - allowed
    if unknown:
        raise RequestError(f"{where} has unknown field(s) {sorted(unknown)[:10]}; allowed: {sorted(allowed)}")
    return value


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


def check_policy(value: Any, where: str, rules: RequestRules) -> BeamPolicy:
    if not isinstance(value, list):
        raise RequestError(f"{where}.beam_policy must be a list of per-level beam widths, got {_show(value)}")
    try:
        return rules.ladder.check_request_policy(value, rules.levels)
    except PolicyError as exc:
        raise RequestError(f"{where}.{exc}") from exc


def parse_v1(payload: Any, rules: RequestRules) -> list[Instance]:
    config = rules.config
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
        check_fields(raw, V1_FIELDS, where, "an object with user_id and k")
        for required in ("user_id", "k"):
            if required not in raw:
                raise RequestError(f"{where} is missing the required field {required!r}")
        history_given = "recent_items" in raw
        out.append(Instance(
            user_id=check_user(raw["user_id"], where),
            recent_items=check_items(raw["recent_items"], where, config) if history_given else (),
            k=check_k(raw["k"], where, config),
            policy=check_policy(raw["beam_policy"], where, rules) if "beam_policy" in raw else None,
            history_given=history_given,
        ))
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
