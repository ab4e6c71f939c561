"""A small latency model for the routing simulator.

    latency_s = (ttft_s + output_tokens / output_tokens_per_s) * exp(sigma * z),   z ~ N(0, 1)

i.e. the deterministic time of a streamed answer (time to first token, then decoding at a constant speed)
times log-normal noise with median 1 (``mu = 0``).

The catalog's ``ttft_s`` and ``output_tokens_per_s`` are ASSUMED priors (typical published figures or
guesses), not measurements: latencies sampled from them are a simulation, good for shaping a latency
trade-off, not for claims about real serving latency. Where the data has a measured ``latency_s`` for a
(prompt, model) pair, the environment uses that value instead of sampling.
"""

from __future__ import annotations

import numpy as np

from router_rl.types import RoutingData

DEFAULT_TTFT_S = 0.5
"""Time-to-first-token prior (seconds) for a model whose catalog entry has none."""
DEFAULT_OUTPUT_TOKENS_PER_S = 50.0
"""Decode-speed prior (tokens per second) for a model whose catalog entry has none."""
DEFAULT_OUTPUT_TOKENS = 256.0
"""Answer length assumed when the data records no output tokens at all."""


def sample_latency(
    rng: np.random.Generator,
    ttft_s: np.ndarray | float,
    output_tokens_per_s: np.ndarray | float,
    output_tokens: np.ndarray | float,
    sigma: float,
) -> np.ndarray:
    """Sample end-to-end latencies in seconds.

    ``(ttft_s + output_tokens / output_tokens_per_s) * LogNormal(mu=0, sigma)``; the noise has median 1, so
    the noiseless latency is the median of the samples. A pure function of its arguments: all randomness
    comes from ``rng`` (one standard-normal draw per output element).

    Args:
        rng: the generator to draw the noise from (an env passes its ``np_random``).
        ttft_s: time to first token in seconds, >= 0 (an assumed prior, not a measurement).
        output_tokens_per_s: decode speed, > 0 (an assumed prior, not a measurement).
        output_tokens: answer length in tokens, >= 0.
        sigma: standard deviation of the log of the noise, >= 0; 0 gives the deterministic latency.

    Returns:
        The latencies, float64, with the broadcast shape of the three array arguments (0-d for scalars).
    """
    ttft = np.asarray(ttft_s, dtype=np.float64)
    tps = np.asarray(output_tokens_per_s, dtype=np.float64)
    tokens = np.asarray(output_tokens, dtype=np.float64)
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"latency sigma must be a finite number >= 0, got {sigma}")
    if not (np.isfinite(ttft).all() and (ttft >= 0).all()):
        raise ValueError(
            f"ttft_s must be finite and >= 0, got {ttft}; fill missing priors with fill_latency_priors"
        )
    if not (np.isfinite(tps).all() and (tps > 0).all()):
        raise ValueError(
            f"output_tokens_per_s must be finite and > 0, got {tps}; fill missing priors with fill_latency_priors"
        )
    if not (np.isfinite(tokens).all() and (tokens >= 0).all()):
        raise ValueError(f"output_tokens must be finite and >= 0, got {tokens}")
    base = ttft + tokens / tps
    noise = rng.lognormal(mean=0.0, sigma=sigma, size=base.shape)
    return base * noise


def fill_latency_priors(
    ttft_s: np.ndarray,
    tps: np.ndarray,
    default_ttft: float = DEFAULT_TTFT_S,
    default_tps: float = DEFAULT_OUTPUT_TOKENS_PER_S,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace missing (NaN) latency priors with defaults.

    Args:
        ttft_s: (K,) time-to-first-token priors in seconds, NaN where the catalog has none.
        tps: (K,) decode-speed priors in tokens per second, NaN where the catalog has none.
        default_ttft: value used for a missing ``ttft_s``.
        default_tps: value used for a missing ``tps``.

    Returns:
        New float64 arrays ``(ttft_s, tps)``; the inputs are not modified.
    """
    ttft = np.array(ttft_s, dtype=np.float64)
    speed = np.array(tps, dtype=np.float64)
    ttft[np.isnan(ttft)] = default_ttft
    speed[np.isnan(speed)] = default_tps
    return ttft, speed


def fill_output_tokens(output_tokens: np.ndarray, default: float = DEFAULT_OUTPUT_TOKENS) -> np.ndarray:
    """Replace missing output-token counts so that latency can be simulated for every (prompt, model).

    A missing count becomes the model's mean count over the prompts where it is recorded; a model with no
    recorded count gets the mean over all models, and ``default`` when the data has no counts at all.

    Args:
        output_tokens: (N, K) output tokens, NaN where missing.
        default: the length used when nothing is recorded.

    Returns:
        A new (N, K) float64 array without NaN.
    """
    tokens = np.array(output_tokens, dtype=np.float64)
    if tokens.ndim != 2:
        raise ValueError(f"output_tokens must be a 2-D (prompts, models) array, got shape {tokens.shape}")
    missing = np.isnan(tokens)
    if not missing.any():
        return tokens
    overall = float(np.nanmean(tokens)) if (~missing).any() else float(default)
    recorded = (~missing).sum(axis=0)
    per_model = np.where(
        recorded > 0, np.where(missing, 0.0, tokens).sum(axis=0) / np.maximum(recorded, 1), overall
    )
    return np.where(missing, per_model[None, :], tokens)


def expected_latency(data: RoutingData, sigma: float) -> np.ndarray:
    """(N, K) mean latency the simulator gives each (prompt, model): the measured ``latency_s`` where the data
    has it, else ``(ttft + output_tokens / tokens_per_s) * exp(sigma^2 / 2)`` (the log-normal noise's mean)."""
    ttft, tps = fill_latency_priors(data.catalog.ttft_s, data.catalog.output_tokens_per_s)
    base = (ttft + fill_output_tokens(data.output_tokens) / tps) * np.exp(sigma**2 / 2)
    return np.where(np.isnan(data.latency_s), base, data.latency_s)
