"""What the scale benchmarks share: the synthetic logs they generate once into their work folder, the
memory of a process tree sampled while a step runs, one embedded Ray per size, and paths as a result
records them."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from genrec.config import GenrecConfig, SynthConfig

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.5
# PSS reads every mapping of every process (smaps): costly on two cores, so one sample in this many.
PSS_EVERY = 10
GIB = 1024**3


# ------------------------------------------------------------------------------------------------
# Memory of a process tree
# ------------------------------------------------------------------------------------------------


@dataclass
class TreeMemory:
    """Peak summed RSS (every half second) and PSS (every PSS_EVERY samples) of a process and its
    descendants."""

    root: int
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with_pss = self.samples % PSS_EVERY == 0
        self.samples += 1
        rss = pss = 0
        for process in processes:
            try:
                if with_pss:
                    full = process.memory_full_info()
                    rss, pss = rss + full.rss, pss + getattr(full, "pss", full.rss)
                else:
                    rss += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if with_pss:
            self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(processes))

    def __enter__(self) -> TreeMemory:
        def loop() -> None:
            while not self._stop.wait(SAMPLE_SECONDS):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def synth_log(events: int, seed: int, work: Path, synth: SynthConfig | None = None, tag: str = "") -> Path:
    """The log of `events` events (default shapes, or `synth`'s under a folder named with `tag`),
    generated once into `work`."""
    from genrec.data.synth import generate
    from genrec.progress import LineProgress

    folder = work / (f"log-{events}-{seed}" + (f"-{tag}" if tag else ""))
    if not (folder / "synth.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        generate(events, folder, seed, synth or SynthConfig(), LineProgress(f"synth {events:,} events"))
        print(f"synth {events:,} events in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def shown_path(path: Path) -> str:
    """A path as a result records it: relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


@contextmanager
def engine_context(engine: str, config: GenrecConfig) -> Iterator[list[float] | None]:
    """For the Ray path, one embedded Ray for the size's steps, as a pipeline run has (or a cluster
    that is up before the run): started here, outside the steps' times (its start time is recorded),
    its processes children of this one, so in the measured tree. The steps join it through
    `ray.address_env`."""
    if engine != "ray":
        yield None
        return
    from genrec.distributed import shared_local_ray

    started = time.perf_counter()
    with shared_local_ray(config.ray):
        yield [time.perf_counter() - started]
