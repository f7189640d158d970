"""A day of requests shaped like ad traffic: a diurnal curve with its trough in the small hours and
its peak in the evening, bursts that triple the rate within a minute, and Poisson arrivals.

The curve between trough and peak is half a cosine each way, so the rate is smooth and the climb
(trough to peak) and the fall (peak to trough) can take different times, as ad traffic does: it
climbs all day and falls in a few hours after the evening peak."""

from __future__ import annotations

import numpy as np

from genrec.config import FleetSimConfig, SpikeConfig

SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600


def diurnal_share(seconds: np.ndarray, fleet: FleetSimConfig) -> np.ndarray:
    """Each second's rate as a share of the peak: trough_share at trough_hour, 1 at peak_hour."""
    hour = (seconds / SECONDS_PER_HOUR) % 24
    climb = (fleet.peak_hour - fleet.trough_hour) % 24
    since_trough = (hour - fleet.trough_hour) % 24
    # 0 at the trough, 1 at the peak, back to 0 at the next trough.
    phase = np.where(since_trough <= climb, since_trough / climb,
                     1.0 + (since_trough - climb) / (24 - climb))
    rising = 0.5 - 0.5 * np.cos(np.pi * phase)
    return fleet.trough_share + (1 - fleet.trough_share) * rising


def spike_factor(seconds: np.ndarray, spike: SpikeConfig) -> np.ndarray:
    """1 outside the spike, `multiplier` at its height: a linear rise, a hold and a linear fall."""
    since = seconds - spike.start_hour * SECONDS_PER_HOUR
    rise = np.clip(since / max(spike.rise_seconds, 1e-9), 0.0, 1.0)
    falling = since - spike.rise_seconds - spike.hold_seconds
    fall = np.clip(falling / max(spike.fall_seconds, 1e-9), 0.0, 1.0)
    height = np.where(since < 0, 0.0, rise * (1.0 - fall))
    return 1.0 + (spike.multiplier - 1.0) * height


def expected_rates(fleet: FleetSimConfig) -> np.ndarray:
    """The mean request rate of every second of the day (requests/s, all replicas together)."""
    seconds = np.arange(SECONDS_PER_DAY, dtype=np.float64)
    rate = fleet.peak_rps * diurnal_share(seconds, fleet)
    for spike in fleet.spikes:
        rate = rate * spike_factor(seconds, spike)
    return rate


def arrivals(fleet: FleetSimConfig) -> np.ndarray:
    """Requests arriving in each second: Poisson around the expected rate, seeded by fleet.seed."""
    return np.random.default_rng(fleet.seed).poisson(expected_rates(fleet)).astype(np.float64)
