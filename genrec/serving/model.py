"""`GenerativeRecommender`: the KServe model that serves a trained genrec generator.

`load()` reads the model folder (decoder weights, semantic-ID codes, item ids; the trie is rebuilt
from the codes) from `model_dir`, which is a local path or a `file://` URI. In a cluster KServe's
storage initializer downloads `storageUri` (gs://, s3://, pvc://, https://) into `/mnt/models`
before the container starts, so the predictor always sees a local folder; genrec itself never
downloads.

`predict()` takes v1 (`{"instances": [...]}`) and v2 / Open Inference Protocol requests (see
`genrec.serving.requests` for both shapes), validates them (a bad request is HTTP 400 with a message
naming the field), and hands the instances to the dynamic batcher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from genrec.config import GenrecConfig
from genrec.serving._kserve import import_kserve
from genrec.serving.admin import PolicyState
from genrec.serving.batching import DynamicBatcher
from genrec.serving.engine import Recommendation, ServingEngine, SummaryFetcher
from genrec.serving.policy import BeamLadder
from genrec.serving.requests import Instance, RequestError, parse_v1, parse_v2
from genrec.serving.speculative import POOL_FILE, PoolError, RetrievalPool, pool_from_histories

kserve = import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

log = logging.getLogger("genrec.serving")

# Seconds the Feast warm-up read may take at start (opening the registry is slower than a read).
FEAST_WARMUP_SECONDS = 30.0


class ModelSourceError(ValueError):
    """The model location cannot be served from."""


def resolve_model_dir(location: str | Path) -> Path:
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else text)
    else:
        raise ModelSourceError(f"{text}: genrec serves a local folder or a file:// URI; in a cluster "
                               "KServe's storage initializer downloads storageUri into /mnt/models first")
    if not path.is_dir():
        raise ModelSourceError(f"model folder {path} does not exist (pass the `model` output of training)")
    return path


class GenerativeRecommender(kserve.Model):  # type: ignore[name-defined,misc]
    def __init__(self, name: str, model_dir: str | Path, config: GenrecConfig | None = None,
                 feature_repo: str | Path | None = None, history: str | Path | None = None,
                 device: str = "cpu") -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.config = config or GenrecConfig()
        self.serving = self.config.serving
        self.feature_repo = feature_repo
        self.history = history
        self.device = device
        self.ladder = BeamLadder.from_config(self.serving.beam_ladder, self.serving.default_rung,
                                             self.serving.max_beam_width)
        self.state = PolicyState(self.ladder, self.serving.inflight_guard)
        self.engine: ServingEngine | None = None
        self.batcher: DynamicBatcher[Instance, Recommendation] | None = None

    def load(self) -> bool:
        from genrec.model.artefact import load_model

        folder = resolve_model_dir(self.model_dir)
        model = load_model(folder, self.device)
        fetcher, shape = None, None
        if self.feature_repo is not None:
            fetcher = SummaryFetcher(self.feature_repo, self.serving.feature_timeout_ms)
            shape = fetcher.warm_up(FEAST_WARMUP_SECONDS)
        pool = self._pool(model, folder) if self.serving.dare else None
        self.engine = ServingEngine(model, self.serving, self.state, fetcher, pool, shape)
        self.batcher = DynamicBatcher(self.engine.decode, self.serving.max_batch_size,
                                      self.serving.max_batch_wait_ms, self.serving.max_queue_ms)
        self.ready = True
        return self.ready

    def _pool(self, model: Any, folder: Path) -> RetrievalPool:
        """The DARE pool: `dare_pool.npz` in the model folder, else built from the interactions of
        `history` (or of the feature repo's history file)."""
        codes = model.decoder.item_codes.cpu().numpy()
        if (folder / POOL_FILE).is_file():
            return RetrievalPool.load(folder / POOL_FILE, codes)
        source = self.history
        if source is None and self.feature_repo is not None:
            from genrec.features.repo import FeatureRepo

            source = FeatureRepo.open(self.feature_repo).history_path
        if source is None:
            raise PoolError(f"serving.dare is on but there is no {POOL_FILE} in {folder} and no history to "
                            "build one from: pass --history (an interactions file) or a feature repo with "
                            "its history, or switch serving.dare off")
        return build_pool_from_file(model, source, self.config)

    # -- KServe handlers ------------------------------------------------------------------------------

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if self.engine is None or self.batcher is None:
            raise RuntimeError("the model is not loaded")
        v2 = isinstance(payload, InferRequest)
        try:
            instances = self._parse_v2(payload) if v2 else parse_v1(payload, self.serving, self.ladder)
        except RequestError as exc:
            raise InvalidInput(str(exc)) from exc
        unknown = self.engine.unknown_items(instances)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InvalidInput(f"recent_items holds {len(unknown)} item id(s) this model does not know: "
                               f"{shown}")
        answers = await self.batcher.submit_many(instances)
        if v2:
            return self._v2_response(payload, answers)
        return {"predictions": [a.to_json(i.user_id) for a, i in zip(answers, instances)]}

    def _parse_v2(self, request: Any) -> list[Instance]:
        tensors = []
        for tensor in request.inputs:
            data = tensor.data
            if not isinstance(data, list):
                try:
                    data = tensor.as_numpy().ravel().tolist()
                except Exception as exc:  # noqa: BLE001 - any undecodable tensor is the client's
                    raise RequestError(f"input {tensor.name!r} cannot be read: {exc}") from exc
            shape = tensor.shape
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise RequestError(f"input {tensor.name!r} has an invalid shape {shape!r}")
            if int(np.prod(shape)) != len(data):
                raise RequestError(f"input {tensor.name!r}: shape {shape} does not match {len(data)} values")
            tensors.append((tensor.name, shape, data))
        return parse_v2(tensors, self.serving, self.ladder)

    def _v2_response(self, request: Any, answers: list[Recommendation]) -> Any:
        k = max((len(a.item_ids) for a in answers), default=0)
        levels = self.engine.decoder.levels if self.engine is not None else 0
        ids = np.full((len(answers), k), "", dtype=object)
        scores = np.zeros((len(answers), k), dtype=np.float32)
        sids = np.full((len(answers), k, levels), -1, dtype=np.int64)
        for row, answer in enumerate(answers):
            n = len(answer.item_ids)
            ids[row, :n] = answer.item_ids
            scores[row, :n] = answer.scores
            if n:
                sids[row, :n] = np.asarray(answer.sids)
        outputs = []
        for name, array, datatype in (("item_ids", ids, "BYTES"), ("scores", scores, "FP32"),
                                      ("sids", sids, "INT64")):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.engine is not None and self.engine.fetcher is not None:
            self.engine.fetcher.close()


def build_pool_from_file(model: Any, path: str | Path, config: GenrecConfig) -> RetrievalPool:
    """A DARE pool from an interactions file (parquet or csv with user_id, item_id[, timestamp])."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return build_pool_from_frame(model, frame, config)


def build_pool_from_frame(model: Any, frame: Any, config: GenrecConfig) -> RetrievalPool:
    if "timestamp" in frame.columns:
        frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    rows = frame["item_id"].astype(str).map(model._row_of)
    frame = frame.assign(_row=rows).dropna(subset=["_row"])
    histories = {str(u): g["_row"].astype(int).tolist() for u, g in frame.groupby("user_id", sort=False)}
    serving = config.serving
    return pool_from_histories(model.decoder, histories, None, serving.dare_clusters, serving.dare_drafts,
                               serving.max_beam_width, seed=config.seed)
