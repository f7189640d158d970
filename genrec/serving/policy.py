"""Beam policies and the ladder they are chosen from.

A beam policy is one width per semantic-ID level. The ladder lists policies from the cheapest
(narrowest) rung to the most expensive (widest); the controller and each replica's local guard only
ever move along it, so every policy in force is one an operator configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genrec.config import beam_ladder_problem


class PolicyError(ValueError):
    """A beam policy is outside what the ladder allows."""


@dataclass(frozen=True)
class BeamPolicy:
    widths: tuple[int, ...]

    def for_levels(self, levels: int) -> tuple[int, ...]:
        """Widths for `levels` levels: a shorter policy repeats its last width for deeper levels."""
        if not self.widths:
            raise PolicyError("a beam policy needs at least one width")
        return tuple(self.widths[min(i, len(self.widths) - 1)] for i in range(levels))

    @property
    def cost(self) -> int:
        """Beams expanded over all levels: what decode time grows with."""
        return sum(self.widths)

    def label(self) -> str:
        return "x".join(map(str, self.widths))


@dataclass(frozen=True)
class BeamLadder:
    rungs: tuple[BeamPolicy, ...]
    default_rung: int
    max_width: int

    @classmethod
    def from_config(cls, rungs: Sequence[Sequence[int]], default_rung: int, max_width: int) -> BeamLadder:
        """The ladder, by the rule the config is checked with at load time (`beam_ladder_problem`)."""
        problem = beam_ladder_problem(rungs, default_rung, max_width)
        if problem:
            raise PolicyError(problem)
        policies = tuple(BeamPolicy(tuple(int(w) for w in widths)) for widths in rungs)
        return cls(policies, default_rung, max_width)

    def __len__(self) -> int:
        return len(self.rungs)

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def clamp(self, rung: int) -> int:
        return max(0, min(self.top, rung))

    def policy(self, rung: int) -> BeamPolicy:
        if not 0 <= rung < len(self.rungs):
            raise PolicyError(f"rung {rung} is outside the ladder 0..{self.top}")
        return self.rungs[rung]

    def width_bound(self, level: int) -> int:
        """The widest width a request may ask for at `level`: the widest rung's, its last width
        repeated for deeper levels."""
        widths = self.rungs[-1].widths
        return widths[min(level, len(widths) - 1)]

    def check_request_policy(self, widths: Sequence[int], levels: int) -> BeamPolicy:
        """A per-request policy may be narrower than the widest rung, never wider, and never longer
        than the model's `levels` semantic-ID levels (one width per level; a shorter policy repeats
        its last width). Linear in the policy's length, which is checked first."""
        if not widths:
            raise PolicyError("beam_policy must list at least one width")
        if len(widths) > levels:
            raise PolicyError(f"beam_policy has {len(widths)} widths but the model has {levels} "
                              f"semantic-ID levels: send at most {levels} (a shorter policy repeats its "
                              "last width)")
        for level, width in enumerate(widths):
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise PolicyError(f"beam_policy[{level}] must be a positive integer, got {width!r}")
            bound = self.width_bound(level)
            if width > bound:
                raise PolicyError(f"beam_policy[{level}]={width} exceeds the widest allowed width {bound}")
        return BeamPolicy(tuple(widths))
