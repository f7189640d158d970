"""The local model registry: versioned, never-overwritten copies of promoted models.

Layout of `deploy.registry_dir`:
    models/v0001/ ...     one serving bundle per promoted model (genrec.deploy.bundle), written once
                          (atomically) and never changed
    deployed.json         the version in force: {version, path, source_uri, metrics, deployed_at}
    history.jsonl         every promotion, appended
A server keeps reading its version's folder while a newer one is registered beside it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genrec.io import atomic_path, write_json

VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class DeployedModel:
    version: str
    path: str
    source_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    deployed_at: str = ""


class LocalRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def deployed_file(self) -> Path:
        return self.root / "deployed.json"

    def versions(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted((p.name for p in self.models.iterdir() if VERSION.match(p.name)),
                      key=lambda name: int(name[1:]))

    def current(self) -> DeployedModel | None:
        if not self.deployed_file.exists():
            return None
        try:
            raw: dict[str, Any] = json.loads(self.deployed_file.read_text())
            return DeployedModel(**raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.deployed_file} is not a genrec deployment record ({exc}); move it "
                             "away to start a fresh registry") from exc

    def register(self, model_dir: str | Path, metrics: dict[str, float],
                 source_uri: str = "") -> DeployedModel:
        """Copies `model_dir` (a serving bundle) to the next version and makes it the deployed one."""
        source = Path(model_dir)
        if not source.is_dir():
            raise FileNotFoundError(f"model folder {source} does not exist")
        existing = self.versions()
        version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
        target = self.models / version
        with atomic_path(target) as tmp:
            shutil.copytree(source, tmp)
        record = DeployedModel(version=version, path=str(target), source_uri=source_uri or str(source),
                               metrics=dict(metrics), deployed_at=datetime.now(UTC).isoformat())
        write_json(asdict(record), self.deployed_file)
        with (self.root / "history.jsonl").open("a") as history:
            history.write(json.dumps(asdict(record), sort_keys=True) + "\n")
        return record
