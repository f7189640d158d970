"""KEDA's ScaledObject and the HPA it drives, as Kubernetes computes them (autoscaling/v2 with
`behavior`), polled on KEDA's interval:

- the recommendation: ceil(metric / target) for an AverageValue metric, unless the metric is within
  the HPA's tolerance of target x current replicas (then no change), clamped to min/max;
- stabilisation: a scale-up takes the lowest recommendation of its window (0 s: the latest), a
  scale-down the highest of its window, so a dip shorter than the window never scales in;
- rate limits (policies over a period): up by the larger of `scale_up_replicas_per_minute` replicas
  or 100% a minute; down by one replica per scale-down window. Like the HPA, the limit counts the
  changes already made within the period.

manifests/base/scaledobject.yaml says the same in KEDA's terms; tests/test_manifests.py holds the two
together."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from genrec.config import AutoscalingConfig

# The HPA's scale-up policies: `scale_up_replicas_per_minute` replicas (Pods) or this percent
# (Percent), per minute, whichever allows more (selectPolicy: Max).
SCALE_UP_PERCENT = 100
SCALE_UP_PERIOD_SECONDS = 60
# Scale-down policy: this many replicas per scale-down stabilisation window.
SCALE_DOWN_REPLICAS_PER_WINDOW = 1


@dataclass(frozen=True)
class ScaleChange:
    time: float
    before: int
    after: int


class KedaAutoscaler:
    """The replica count a ScaledObject asks for, given the trigger's value at each poll."""

    def __init__(self, config: AutoscalingConfig, replicas: int) -> None:
        self.config = config
        self.replicas = min(max(replicas, config.min_replicas), config.max_replicas)
        self.recommendations: deque[tuple[float, int]] = deque()
        self.changes: list[ScaleChange] = []

    def recommend(self, metric: float, target: float) -> int:
        """The HPA's raw recommendation for an AverageValue metric (before stabilisation)."""
        current = self.replicas
        ratio = metric / (target * current)
        # The epsilon keeps a metric that is an exact multiple of the target from rounding up.
        wanted = current if abs(ratio - 1.0) <= self.config.tolerance else math.ceil(metric / target - 1e-9)
        return min(max(wanted, self.config.min_replicas), self.config.max_replicas)

    def _changed_within(self, now: float, period: float, up: bool) -> int:
        return sum(abs(c.after - c.before) for c in self.changes
                   if now - c.time < period and (c.after > c.before) == up)

    def poll(self, now: float, metric: float, target: float) -> int:
        """One poll at time `now` (seconds): the new replica count (recorded as a change if it moved)."""
        c, current = self.config, self.replicas
        self.recommendations.append((now, self.recommend(metric, target)))
        keep = max(c.scale_up_stabilisation_seconds, c.scale_down_stabilisation_seconds)
        while self.recommendations and now - self.recommendations[0][0] > keep:
            self.recommendations.popleft()
        up_window = [r for t, r in self.recommendations if now - t <= c.scale_up_stabilisation_seconds]
        down_window = [r for t, r in self.recommendations if now - t <= c.scale_down_stabilisation_seconds]
        # The HPA scales up to the lowest recommendation of the up window and down to the highest of
        # the down window: each direction ignores what the other window's quick swings ask for.
        wanted = current
        if min(up_window) > current:
            start = current - self._changed_within(now, SCALE_UP_PERIOD_SECONDS, up=True)
            limit = max(start + c.scale_up_replicas_per_minute,
                        math.ceil(start * (1 + SCALE_UP_PERCENT / 100)))
            wanted = min(min(up_window), limit)
        elif max(down_window) < current:
            start = current + self._changed_within(now, c.scale_down_stabilisation_seconds, up=False)
            wanted = max(max(down_window), start - SCALE_DOWN_REPLICAS_PER_WINDOW)
        wanted = min(max(wanted, c.min_replicas), c.max_replicas)
        if wanted != current:
            self.changes.append(ScaleChange(now, current, wanted))
            self.replicas = wanted
        return self.replicas
