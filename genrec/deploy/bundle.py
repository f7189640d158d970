"""The serving bundle: what one model version needs to serve, in one folder (one storage URI).

    model/          the generator (genrec.model.artefact layout)
    feature_repo/   the run's Feast repo: feature_store.yaml (sqlite locally, Redis in a cluster),
                    the registry, and the history DARE builds its pools from

The predictor is started with `--model-dir <bundle>/model --feature-repo <bundle>/feature_repo`
(manifests/base/predictor.yaml: the bundle is KServe's /mnt/models).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from genrec.io import atomic_path

MODEL_DIR = "model"
FEATURE_REPO_DIR = "feature_repo"


def write_serving_bundle(target: str | Path, model_dir: str | Path,
                         feature_repo: str | Path | None = None) -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        shutil.copytree(model_dir, tmp / MODEL_DIR)
        if feature_repo is not None:
            shutil.copytree(feature_repo, tmp / FEATURE_REPO_DIR)
    return Path(target)


def bundle_parts(bundle: str | Path) -> tuple[Path, Path | None]:
    """(model folder, feature repo folder or None) of a bundle."""
    bundle = Path(bundle)
    model = bundle / MODEL_DIR
    if not model.is_dir():
        raise FileNotFoundError(f"{bundle} is not a serving bundle: it has no {MODEL_DIR}/ folder")
    repo = bundle / FEATURE_REPO_DIR
    return model, (repo if repo.is_dir() else None)
