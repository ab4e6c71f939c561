"""Torch helpers shared by the neural policies: device choice, a seeded MLP, masked multi-output regression.

A neural router predicts, for every model k, its quality, normalised cost and latency: an MLP with 3K outputs,
laid out head-major (``[q_1..q_K, c_1..c_K, l_1..l_K]``). Bandit feedback reveals one model per context, so
the loss is a *masked* mean squared error over the observed cells only, each cell weighted by the number of
observations n_ij it holds (its target y_ij is their mean):

    L = sum_{i,j} n_ij (f_j(x_i) - y_ij)^2 / sum_{i,j} n_ij,   y standardised per output column,

which equals the plain squared error over every observation up to a constant: a context seen a thousand times
(prompts that embed identically, a prompt repeated in the bandit stream) weighs a thousand times, as its
observations do, while the training cost stays one row per distinct context. Full-information training is the
same loss with every cell observed. torch is imported on first use only.

On CPU these networks are small (a few hundred units, batches of 64), where torch's intra-op thread pool
costs more than it gives and collapses when the cores are shared; :func:`cpu_threads` runs their training
and inference on one thread (restoring the setting after).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

HEADS = 3  # quality, cost, latency


def resolve_device(device: str | None) -> Any:
    """``auto``/None -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def cpu_threads(device: Any, n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads when ``device`` is a CPU; restore the setting after."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, *, seed: int) -> Any:
    """``Linear -> ReLU`` per hidden size, then a linear output layer; initialised from ``seed`` only."""
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    sizes = [int(in_dim), *(int(h) for h in hidden)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], int(out_dim)))
        return nn.Sequential(*layers)


def head_major(y: np.ndarray) -> np.ndarray:
    """(N, K, 3) per-model targets -> (N, 3K) columns ``[q_1..q_K, c_1..c_K, l_1..l_K]``."""
    return np.ascontiguousarray(np.transpose(y, (0, 2, 1)).reshape(y.shape[0], -1))


def column_stats(y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (>= 1e-3) over the observed cells, each weighted by its count
    in ``mask`` (0/1 or observation counts); unobserved columns (0, 1)."""
    n = mask.sum(axis=0)
    mean = np.where(n > 0, (y * mask).sum(axis=0) / np.maximum(n, 1), 0.0)
    var = np.where(n > 1, (((y - mean) * mask) ** 2).sum(axis=0) / np.maximum(n - 1, 1), 1.0)
    return mean, np.maximum(np.sqrt(var), 1e-3)


def fit_masked(
    net: Any,
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: Any,
    on_epoch: Callable[[int, np.ndarray, np.ndarray], Any] | None = None,
    standardize: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Train ``net`` in place on the count-weighted masked MSE of standardised targets (Adam, minibatches).

    Args:
        x: (N, d) inputs, one row per distinct context; y: (N, C) targets (cell means; any value where
            unobserved); mask: (N, C) observation counts n_ij (0 where unobserved; 0/1 for one observation).
    Returns:
        (column means (C,), column sds (C,), last epoch's mean loss); predictions are ``out * sd + mean``.

    ``standardize``: the network trains on inputs centred and scaled per dimension (count-weighted mean and
    sd over the rows, :func:`input_stats`), and the scaling is folded into its first layer, so ``net`` takes
    raw inputs whenever ``on_epoch`` runs and once this returns (nothing downstream sees the difference).

    An epoch is N rows. When every row holds the same total count (e.g. a full table of distinct prompts) the
    rows are shuffled and a minibatch's loss is ``sum n e / sum n`` over its cells. Otherwise rows are drawn
    with replacement with probability ``w_i / W`` (``w_i = sum_j n_ij``) and a drawn row contributes its
    cells' errors weighted ``n_ij / w_i``: an unbiased minibatch estimate of ``L = sum n e / sum n``, so a
    context counts with its multiplicity (importance sampling, no per-observation rows).
    """
    import torch

    mask = np.maximum(np.asarray(mask, dtype=np.float64), 0.0)
    y = np.where(mask > 0, np.asarray(y, dtype=np.float64), 0.0)
    mean, sd = column_stats(y, mask)
    row_w = mask.sum(axis=1)
    uniform = bool(np.all(row_w == row_w[0])) if len(row_w) else True
    x = np.asarray(x, dtype=np.float32)
    shift, scale = input_stats(x, row_w) if standardize else (None, None)
    if shift is not None:
        x = ((x - shift) / scale).astype(np.float32)
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(((y - mean) / sd).astype(np.float32), device=device)
    cell_w = mask if uniform else mask / np.maximum(row_w, 1e-300)[:, None]
    mt = torch.as_tensor(cell_w.astype(np.float32), device=device)
    draw_p = None if uniform else torch.as_tensor(row_w / row_w.sum(), dtype=torch.float64)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    loss_sum = 0.0
    with cpu_threads(device):
        for epoch in range(int(epochs)):
            if draw_p is None:
                order = torch.randperm(len(xt), generator=gen).to(device)
            else:
                order = torch.multinomial(draw_p, len(xt), replacement=True, generator=gen).to(device)
            loss_sum, n_batches = 0.0, 0
            for start in range(0, len(xt), int(batch_size)):
                idx = order[start : start + int(batch_size)]
                m = mt[idx]
                err = ((net(xt[idx]) - yt[idx]) ** 2) * m
                loss = err.sum() / (m.sum().clamp(min=1.0) if draw_p is None else len(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum, n_batches = loss_sum + loss.item(), n_batches + 1
            loss_sum /= max(n_batches, 1)
            if on_epoch is not None:
                net.eval()
                with _raw_inputs(net, shift, scale):
                    stop = on_epoch(epoch + 1, mean, sd)
                net.train()
                if stop:
                    break
    net.eval()
    if shift is not None:
        _fold_inputs(net, shift, scale)
    return mean, sd, loss_sum


def input_stats(x: np.ndarray, row_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and sd (floored at 1e-4) of the rows of ``x``, each weighted by ``row_w`` (its
    observation count: a context counts with its multiplicity, as in the loss)."""
    w = np.asarray(row_w, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(x), 1.0 / max(len(x), 1))
    x64 = np.asarray(x, dtype=np.float64)
    shift = w @ x64
    scale = np.sqrt(np.maximum(w @ (x64 - shift) ** 2, 0.0))
    return shift, np.maximum(scale, 1e-4)


def _fold_inputs(net: Any, shift: np.ndarray, scale: np.ndarray) -> None:
    """Make the first layer take raw inputs: ``W (x - shift) / scale + b = (W / scale) x + b - (W / scale)
    shift``."""
    import torch

    first = net[0]
    with torch.no_grad():
        w = first.weight.double() / torch.as_tensor(scale, dtype=torch.float64, device=first.weight.device)
        b = first.bias.double() - w @ torch.as_tensor(shift, dtype=torch.float64, device=first.weight.device)
        first.weight.copy_(w.to(first.weight.dtype))
        first.bias.copy_(b.to(first.bias.dtype))


@contextmanager
def _raw_inputs(net: Any, shift: np.ndarray | None, scale: np.ndarray | None) -> Iterator[None]:
    """Within the block ``net`` takes raw inputs (its first layer folded); after it, the trained parameters
    exactly as they were (training goes on from them)."""
    if shift is None:
        yield
        return
    first = net[0]
    saved = first.weight.detach().clone(), first.bias.detach().clone()
    _fold_inputs(net, shift, scale)
    try:
        yield
    finally:
        import torch

        with torch.no_grad():
            first.weight.copy_(saved[0])
            first.bias.copy_(saved[1])


def forward_numpy(net: Any, x: np.ndarray, device: Any, *, upto: int | None = None) -> np.ndarray:
    """``net(x)`` (or its first ``upto`` layers) without gradients, as float64 numpy."""
    import torch

    with torch.no_grad(), cpu_threads(device):
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
        module = net if upto is None else net[:upto]
        return module(xt).double().cpu().numpy()


def module_arrays(net: Any, prefix: str) -> dict[str, np.ndarray]:
    """The module's parameters as ``{prefix + name: float32 array}``."""
    return {f"{prefix}{k}": v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def load_module_arrays(net: Any, state: dict[str, np.ndarray], prefix: str, *, owner: str) -> None:
    """Load ``{prefix + name: array}`` into ``net``, with a clear error on a missing or misshaped tensor."""
    import torch

    own = net.state_dict()
    new = {}
    for k, v in own.items():
        key = prefix + k
        if key not in state or tuple(np.shape(state[key])) != tuple(v.shape):
            got = None if key not in state else tuple(np.shape(state[key]))
            raise ValueError(f"{owner} state: {key!r} must have shape {tuple(v.shape)}, got {got}")
        new[k] = torch.as_tensor(np.asarray(state[key]), dtype=v.dtype)
    net.load_state_dict(new)


def resize_output(net: Any, keep: np.ndarray, n_new: int, n_models: int) -> None:
    """Re-lay the head-major output layer of ``net`` when models change.

    Args:
        keep: indices of the kept models (in their new order); ``n_new``: models appended at the end (zero
        output weights, i.e. the column mean). ``n_models``: the current number of models.
    """
    import torch
    from torch import nn

    old = net[-1]
    k_new = len(keep) + n_new
    layer = nn.Linear(old.in_features, HEADS * k_new).to(old.weight.device)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        for h in range(HEADS):
            src = torch.as_tensor(h * n_models + np.asarray(keep, dtype=np.int64), device=old.weight.device)
            layer.weight[h * k_new : h * k_new + len(keep)] = old.weight[src]
            layer.bias[h * k_new : h * k_new + len(keep)] = old.bias[src]
    net[-1] = layer


def relayout_columns(a: np.ndarray, keep: np.ndarray, n_new: int, n_models: int, fill: float) -> np.ndarray:
    """The (..., 3K) head-major array ``a`` with models ``keep`` kept and ``n_new`` columns of ``fill`` added."""
    parts = []
    for h in range(HEADS):
        block = a[..., h * n_models : (h + 1) * n_models][..., np.asarray(keep, dtype=np.int64)]
        pad = np.full((*a.shape[:-1], n_new), fill, dtype=a.dtype)
        parts += [block, pad]
    return np.concatenate(parts, axis=-1)
