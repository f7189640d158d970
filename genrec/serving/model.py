"""`GenerativeRecommender`: the KServe model that serves a trained genrec generator.

`load()` reads the model folder (decoder weights, semantic-ID codes, item ids; the trie is rebuilt
from the codes) from `model_dir`, which is a local path or a `file://` URI. In a cluster KServe's
storage initializer downloads `storageUri` (gs://, s3://, pvc://, https://) into `/mnt/models`
before the container starts, so the predictor always sees a local folder; genrec itself never
downloads. A missing or damaged part is one `ModelArtefactError` line naming the file.

Requests arrive validated (`genrec.serving.requests`, `genrec.serving.v2`) as `Instance`s;
`recommend` refuses unknown items, hands the instances to the dynamic batcher and answers within
`serving.request_timeout_ms` or raises `Overloaded` (a 503 with Retry-After).

Health, as the probes and the readiness detail report it:

- live: the event loop answers, and no decode batch has run past `serving.decode_stall_seconds`;
- ready: the model is loaded and its decode worker is running; the feature store's state is a
  detail (a store that is down degrades answers to history-only, it does not stop them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from genrec.config import GenrecConfig
from genrec.serving import v2
from genrec.serving._kserve import import_kserve
from genrec.serving.admin import PolicyState
from genrec.serving.batching import DynamicBatcher, Overloaded
from genrec.serving.decode_worker import DecodeProcess
from genrec.serving.engine import Recommendation, ServingEngine, SummaryFetcher
from genrec.serving.housekeeping import Housekeeper
from genrec.serving.policy import BeamLadder
from genrec.serving.requests import Instance, RequestError, RequestRules, parse_v1
from genrec.serving.speculative import POOL_FILE, PoolError, RetrievalPool, pool_from_histories

kserve = import_kserve()

log = logging.getLogger("genrec.serving")

# Seconds the Feast warm-up read may take at start (opening the registry is slower than a read).
FEAST_WARMUP_SECONDS = 30.0
# The v2 outputs, their datatypes, and their shapes with -1 for sizes a request decides (B and K).
V2_INPUTS = (("user_id", "BYTES", [-1]), ("recent_items", "BYTES", [-1, -1]), ("k", "INT64", [-1]),
             ("beam_policy", "INT64", [-1, -1]))
V2_OUTPUTS = (("item_ids", "BYTES"), ("scores", "FP32"), ("sids", "INT64"))
OUTPUT_NAMES = tuple(name for name, _ in V2_OUTPUTS)


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
        self.state = PolicyState(self.ladder, self.serving.inflight_guard,
                                 self.serving.guard_recover_fraction, self.serving.guard_recover_seconds)
        # Not `engine`: KServe's ModelServer reads a truthy `model.engine` as "start an engine task".
        self.serving_engine: ServingEngine | None = None
        self.batcher: DynamicBatcher[Instance, Recommendation] | None = None
        self.fetcher: SummaryFetcher | None = None
        self.rules: RequestRules | None = None
        self.housekeeper: Housekeeper | None = None
        self.searcher: DecodeProcess | None = None

    def load(self) -> bool:
        from genrec.model.artefact import load_model

        folder = resolve_model_dir(self.model_dir)
        in_child = self.serving.decode_worker == "process"
        # With a decode process this process only validates, maps item ids and writes answers: its
        # copy of the model stays on the CPU, and only the child puts one on the accelerator.
        model = load_model(folder, "cpu" if in_child else self.device)
        shape = None
        if self.feature_repo is not None:
            self.fetcher = SummaryFetcher(self.feature_repo, self.serving.feature_timeout_ms,
                                          self.serving.feature_probe_seconds)
            shape = self.fetcher.warm_up(FEAST_WARMUP_SECONDS)
        pool = self._pool(model, folder) if self.serving.dare else None
        searcher = None
        if in_child:
            # The child loads the same folder; this process keeps the model for validation, the
            # history rows and the answers' item ids.
            searcher = DecodeProcess(folder, self.device, self.serving, pool)
        self.searcher = searcher
        self.serving_engine = ServingEngine(model, self.serving, self.state, self.fetcher, pool, shape,
                                            searcher)
        self.batcher = DynamicBatcher(self.serving_engine.decode, self.serving.max_batch_size,
                                      self.serving.max_batch_wait_ms, self.serving.max_queue_ms)
        self.rules = RequestRules(self.serving, self.ladder, self.serving_engine.decoder.levels)
        chores = [self.state.tick] + ([self.fetcher.probe_if_idle] if self.fetcher is not None else [])
        self.housekeeper = Housekeeper(chores)
        self.housekeeper.start()
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

    # -- serving ---------------------------------------------------------------------------------------

    def request_rules(self) -> RequestRules:
        if self.rules is None:
            raise NotReady("the model is not loaded")
        return self.rules

    async def recommend(self, instances: list[Instance]) -> list[Recommendation]:
        """Answers for validated instances, within `serving.request_timeout_ms`."""
        if self.serving_engine is None or self.batcher is None or not self.ready or self.batcher.closed:
            raise NotReady("the model is not loaded (or is shutting down): retry on another replica")
        unknown = self.serving_engine.unknown_items(instances)
        if unknown:
            shown = ", ".join(u[:40] for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise RequestError(f"recent_items holds {len(unknown)} item id(s) this model does not know: "
                               f"{shown}")
        timeout = self.serving.request_timeout_ms / 1000.0
        try:
            return await self.batcher.submit_many(instances, timeout)
        except TimeoutError as exc:
            raise Overloaded(f"no answer within serving.request_timeout_ms={timeout * 1000:.0f}: the "
                             "server is overloaded, retry") from exc

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """KServe's model API for a v1 body (`{"instances": [...]}`) -> `{"predictions": [...]}`."""
        instances = parse_v1(payload, self.request_rules())
        return predictions(await self.recommend(instances), instances)

    async def infer(self, request: v2.InferRequest) -> list[v2.OutputTensor]:
        """The v2 outputs for a decoded v2 request (the requested ones are picked when encoding)."""
        return self.v2_outputs(await self.recommend(self.v2_instances(request)))

    def v2_instances(self, request: v2.InferRequest) -> list[Instance]:
        """A decoded v2 request's validated instances."""
        request.selected(OUTPUT_NAMES)  # an unknown output name is a 400 before any decoding
        return v2.parse_v2(request.inputs, self.request_rules())

    def v2_outputs(self, answers: list[Recommendation]) -> list[v2.OutputTensor]:
        k = max((len(a.item_ids) for a in answers), default=0)
        levels = self.rules.levels if self.rules is not None else 0
        ids = np.full((len(answers), k), "", dtype=object)
        scores = np.zeros((len(answers), k), dtype=np.float32)
        sids = np.full((len(answers), k, levels), -1, dtype=np.int64)
        for row, answer in enumerate(answers):
            n = len(answer.item_ids)
            ids[row, :n] = answer.item_ids
            scores[row, :n] = answer.scores
            if n:
                sids[row, :n] = np.asarray(answer.sids)
        arrays = {"item_ids": ids, "scores": scores, "sids": sids}
        return [v2.OutputTensor(name, datatype, arrays[name]) for name, datatype in V2_OUTPUTS]

    def v2_metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata: the real inputs and outputs."""
        levels = self.rules.levels if self.rules is not None else -1
        output_shapes = {"item_ids": [-1, -1], "scores": [-1, -1], "sids": [-1, -1, levels]}
        return {
            "name": self.name, "versions": [], "platform": "pytorch",
            "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in V2_INPUTS],
            "outputs": [{"name": n, "datatype": d, "shape": output_shapes[n]} for n, d in V2_OUTPUTS],
        }

    # -- health ---------------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready?, detail): ready when loaded and the decode worker runs."""
        detail: dict[str, Any] = {"model": self.name}
        problem = ""
        if not self.ready or self.serving_engine is None or self.batcher is None:
            problem = "the model is not loaded"
        elif self.batcher.closed:
            problem = "the decode worker is stopped (the server is shutting down)"
        detail["feature_store"] = self.fetcher.status() if self.fetcher is not None else {"status": "none"}
        if self.searcher is not None:
            # A decode process that died is replaced by the next batch: restarts say how often.
            detail["decode_process"] = {"pid": self.searcher.pid, "restarts": self.searcher.restarts}
        if problem:
            detail["error"] = problem
        return not problem, detail

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(live?, detail): not live when one decode batch has run past serving.decode_stall_seconds."""
        stalled = self.batcher.stalled_for() if self.batcher is not None else 0.0
        if stalled > self.serving.decode_stall_seconds:
            bound = self.serving.decode_stall_seconds
            return False, {"error": f"a decode batch has run for {stalled:.0f} s, past "
                                    f"serving.decode_stall_seconds={bound:.0f}: the decode thread is stuck"}
        return True, {}

    def stop(self) -> None:
        self.ready = False
        if self.housekeeper is not None:
            self.housekeeper.stop()
        if self.batcher is not None:
            self.batcher.close()
        if self.fetcher is not None:
            self.fetcher.close()
        if self.searcher is not None:
            self.searcher.close()


def predictions(answers: list[Recommendation], instances: list[Instance]) -> dict[str, Any]:
    """The v1 answer body."""
    return {"predictions": [a.to_json(i.user_id) for a, i in zip(answers, instances)]}


class NotReady(RuntimeError):
    """The model cannot answer now (not loaded, or stopping): a 503 for this replica only."""


def build_pool_from_file(model: Any, path: str | Path, config: GenrecConfig) -> RetrievalPool:
    """A DARE pool from interactions (a parquet file or folder, or csv with user_id, item_id[,
    timestamp])."""
    import pandas as pd

    from genrec.io import read_parquet

    path = Path(path)
    frame = read_parquet(path) if path.suffix == ".parquet" or path.is_dir() else pd.read_csv(path)
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
