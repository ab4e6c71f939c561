"""A small latency model for the routing simulator.

    latency_s = (ttft_s + output_tokens / output_tokens_per_s) * exp(sigma * z),   z ~ N(0, 1)

i.e. the deterministic time of a streamed answer (time to first token, then decoding at a constant speed)
times log-normal noise with median 1 (``mu = 0``).

The catalog's ``ttft_s`` and ``output_tokens_per_s`` are ASSUMED priors (typical published figures or
guesses), not measurements: latencies sampled from them are a simulation, good for shaping a latency
trade-off, not for claims about real serving latency. Where the data has a measured ``latency_s`` for a
(prompt, model) pair, the environment uses that value instead of sampling.

The fuller model of :mod:`router_rl.envs.simulator` builds on the pieces here: heavy-tailed noise
(:func:`heavy_tail_noise`), priors fitted from measured latencies where the data has them
(:func:`fit_latency_priors`) and a per-model answer-length distribution (:func:`fit_output_lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def expected_latency(
    data: RoutingData,
    sigma: float,
    *,
    tail_prob: float = 0.0,
    tail_alpha: float = 2.5,
    rtt_s: float | np.ndarray = 0.0,
    priors: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(N, K) mean latency the simulator gives each (prompt, model) at no load.

    The measured ``latency_s`` where the data has it, else
    ``(ttft + output_tokens / tokens_per_s) * noise_mean(sigma, tail_prob, tail_alpha) + rtt_s`` (the network
    round trip, a scalar or (K,) per model; a measured latency already includes the network). With the keyword
    defaults this is the v0 model:
    ``(ttft + output_tokens / tokens_per_s) * exp(sigma^2 / 2)``. Queueing and provider load add to it; they
    depend on the traffic, so no closed form is given here.

    Args:
        data: the dataset.
        sigma: log-normal body of the noise.
        tail_prob, tail_alpha: the heavy tail of :func:`heavy_tail_noise`.
        rtt_s: network round trip in seconds, a scalar or (K,).
        priors: ``(ttft_s, tokens_per_s)`` (K,) to use instead of the catalog's (e.g. from
            :func:`fit_latency_priors`); NaN entries get the defaults.
    """
    ttft, tps = priors if priors is not None else (data.catalog.ttft_s, data.catalog.output_tokens_per_s)
    ttft, tps = fill_latency_priors(ttft, tps)
    base = (ttft + fill_output_tokens(data.output_tokens) / tps) * noise_mean(sigma, tail_prob, tail_alpha)
    rtt = np.broadcast_to(np.asarray(rtt_s, dtype=np.float64), (data.n_models,))
    return np.where(np.isnan(data.latency_s), base + rtt[None, :], data.latency_s)


# ---------------------------------------------------------------------- heavy-tailed noise
def heavy_tail_noise(
    rng: np.random.Generator, sigma: float, tail_prob: float, tail_alpha: float, size: int | tuple = ()
) -> np.ndarray:
    """Multiplicative latency noise: ``LogNormal(0, sigma) * T`` with ``T = 1 + Lomax(tail_alpha)`` with
    probability ``tail_prob`` and ``T = 1`` otherwise.

    The log-normal body has median 1; the tail (a Pareto type I factor with scale 1 and shape ``tail_alpha``)
    models the stragglers of hosted APIs: with ``tail_alpha = 2.5`` one request in ``1 / tail_prob`` takes
    1.67 times as long on average and some take many times as long. With ``tail_prob = 0`` this draws exactly
    what :func:`sample_latency` draws (one standard log-normal per element), so the v0 stream is unchanged.
    """
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"latency sigma must be a finite number >= 0, got {sigma}")
    noise = rng.lognormal(mean=0.0, sigma=sigma, size=size)
    if tail_prob > 0:
        hit = rng.random(size) < tail_prob
        noise = noise * np.where(hit, 1.0 + rng.pareto(tail_alpha, size), 1.0)
    return noise


def noise_mean(sigma: float, tail_prob: float = 0.0, tail_alpha: float = 2.5) -> float:
    """Mean of :func:`heavy_tail_noise`: ``exp(sigma^2 / 2) * (1 + tail_prob / (tail_alpha - 1))``."""
    if tail_prob > 0 and not tail_alpha > 1:
        raise ValueError(f"tail_alpha must be > 1 for the noise to have a mean, got {tail_alpha}")
    return float(np.exp(sigma**2 / 2) * (1.0 + (tail_prob / (tail_alpha - 1) if tail_prob > 0 else 0.0)))


# ---------------------------------------------------------------------- fitting to measured data
@dataclass(frozen=True)
class LatencyPriors:
    """Per-model latency parameters and where each came from.

    Attributes:
        ttft_s: (K,) time to first token (seconds).
        tokens_per_s: (K,) decode speed.
        source: (K,) ``"fit"`` (least squares on the data's measured ``latency_s``), ``"catalog"`` (the
            catalog's ASSUMED priors) or ``"default"`` (:data:`DEFAULT_TTFT_S`, :data:`DEFAULT_OUTPUT_TOKENS_PER_S`).
    """

    ttft_s: np.ndarray
    tokens_per_s: np.ndarray
    source: tuple[str, ...]


def fit_latency_priors(data: RoutingData, *, min_points: int = 10) -> LatencyPriors:
    """Latency priors fitted from the measured ``latency_s`` where a model has enough measurements.

    For a model with at least ``min_points`` measured (latency, output tokens) pairs, ordinary least squares of
    ``latency_s = ttft_s + output_tokens / tokens_per_s`` (intercept clipped at 0, slope at least
    1e-4 s/token); every other model keeps the catalog's prior (an assumption) or the default.
    """
    ttft_cat, tps_cat = (
        np.asarray(data.catalog.ttft_s, float),
        np.asarray(data.catalog.output_tokens_per_s, float),
    )
    ttft, tps = fill_latency_priors(ttft_cat, tps_cat)
    source = [
        "catalog" if np.isfinite(a) and np.isfinite(b) else "default"
        for a, b in zip(ttft_cat, tps_cat, strict=True)
    ]
    for k in range(data.n_models):
        lat, tok = data.latency_s[:, k], data.output_tokens[:, k]
        ok = np.isfinite(lat) & np.isfinite(tok)
        if ok.sum() < min_points or np.ptp(tok[ok]) == 0:
            continue
        slope, intercept = np.polyfit(tok[ok], lat[ok], 1)
        slope = max(float(slope), 1e-4)
        intercept = max(float(np.mean(lat[ok] - slope * tok[ok])), 0.0)
        ttft[k], tps[k], source[k] = intercept, 1.0 / slope, "fit"
    return LatencyPriors(ttft_s=ttft, tokens_per_s=tps, source=tuple(source))


@dataclass(frozen=True)
class OutputLengths:
    """Per-model log-normal distribution of answer lengths: ``log(max(tokens, 1)) ~ N(mu, sigma^2)``."""

    mu: np.ndarray
    sigma: np.ndarray

    def sample(self, rng: np.random.Generator, model: int) -> float:
        return float(np.exp(rng.normal(self.mu[model], self.sigma[model])))


def fit_output_lengths(output_tokens: np.ndarray, default: float = DEFAULT_OUTPUT_TOKENS) -> OutputLengths:
    """Fit :class:`OutputLengths` per model to the recorded (N, K) ``output_tokens``.

    A model with fewer than two recorded lengths gets the pooled fit of all models; data without any recorded
    length gets ``log(default)`` with sigma 0.5 (an assumption).
    """
    tokens = np.asarray(output_tokens, dtype=np.float64)
    logs = np.log(np.maximum(tokens, 1.0))
    ok = np.isfinite(logs)
    if ok.sum() >= 2:
        pooled_mu, pooled_sigma = float(logs[ok].mean()), float(logs[ok].std())
    else:
        pooled_mu, pooled_sigma = float(np.log(default)), 0.5
    mu = np.full(tokens.shape[1], pooled_mu)
    sigma = np.full(tokens.shape[1], pooled_sigma)
    for k in range(tokens.shape[1]):
        col = logs[ok[:, k], k]
        if col.size >= 2:
            mu[k], sigma[k] = col.mean(), col.std()
    return OutputLengths(mu=mu, sigma=sigma)
