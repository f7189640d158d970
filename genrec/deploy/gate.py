"""The promotion gate: a candidate replaces the deployed model only if it is not worse.

"Not worse" is per metric: candidate >= deployed - tolerance, for Recall@10 and Value@10 (names and
tolerances in `GateConfig`). With nothing deployed yet, the first valid candidate is promoted. With
`gate.must_beat`, the candidate's Recall@10 must also be above that baseline's, whatever is deployed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from genrec.config import GateConfig

# The evaluate step's name for a baseline's figure: baseline_<name>_<split>_<metric>.
BASELINE_PREFIX = "baseline_"


class GateError(ValueError):
    """The candidate's figures cannot be judged (a metric is missing or not a number)."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, float] = field(default_factory=dict)
    deployed: dict[str, float] | None = None

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "REJECT"
        return f"{verdict}: " + "; ".join(self.reasons)


def _metric(figures: Mapping[str, object], name: str, whose: str) -> float:
    if name not in figures:
        known = ", ".join(sorted(figures)) or "none"
        raise GateError(f"the {whose} model has no metric {name!r} (it has: {known}); set "
                        f"gate.recall_metric / gate.value_metric to metrics the evaluate step writes")
    value = figures[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise GateError(f"the {whose} model's metric {name!r} is {value!r}, not a finite number")
    return float(value)


def gate_decision(candidate: Mapping[str, object], deployed: Mapping[str, object] | None,
                  config: GateConfig) -> GateDecision:
    checks = ((config.recall_metric, config.recall_tolerance), (config.value_metric, config.value_tolerance))
    mine = {name: _metric(candidate, name, "candidate") for name, _ in checks}
    reasons, promote = [], True
    if config.must_beat != "none":
        # The evaluate step reports each baseline's figures beside the candidate's.
        key = f"{BASELINE_PREFIX}{config.must_beat}_{config.recall_metric}"
        if key not in candidate:
            raise GateError(f"gate.must_beat={config.must_beat} but the evaluation has no {key!r}: run the "
                            "baselines step, or set gate.must_beat to none")
        floor = _metric(candidate, key, "baseline")
        beats = mine[config.recall_metric] > floor
        promote &= beats
        reasons.append(f"{config.recall_metric} {mine[config.recall_metric]:.4f} "
                       f"{'>' if beats else '<='} {config.must_beat} baseline {floor:.4f}")
    if deployed is None:
        return GateDecision(promote, [*reasons, "nothing is deployed yet"], mine, None)
    theirs = {name: _metric(deployed, name, "deployed") for name, _ in checks}
    for name, tolerance in checks:
        floor = theirs[name] - tolerance
        ok = mine[name] >= floor
        promote &= ok
        reasons.append(f"{name} {mine[name]:.4f} {'>=' if ok else '<'} deployed {theirs[name]:.4f} "
                       f"- {tolerance:g}")
    return GateDecision(promote, reasons, mine, theirs)
