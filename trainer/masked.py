"""Padded batches (episodes padded to a common length): means over the real entries, and per-transition
networks run on the real transitions only."""
from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true (``mask`` broadcasts to ``x``); 0 when none is."""
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def on_real_rows(fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], mask_BT: torch.Tensor,
                 *xs_BT: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``fn(*xs_BT)`` computed on the rows where ``mask_BT`` is true only, zeros elsewhere.

    ``fn`` maps ``[B, T, ...]`` inputs to ``[B, T, ...]`` outputs row by row (a mixer, Q*); it is called
    once with the real rows packed as ``[1, P, ...]``. With episodes padded to the longest one in the
    batch, that skips the padding's share of the work (often half of it on SMAX)."""
    if bool(mask_BT.all()):  # nothing to skip
        return fn(*xs_BT)
    if not bool(mask_BT.any()):  # no real row: the full call's shapes (and graph), all zero
        full = fn(*xs_BT)
        return tuple(y * 0 for y in full) if isinstance(full, tuple) else full * 0
    out = fn(*(x[mask_BT].unsqueeze(0) for x in xs_BT))

    def unpack(y_1P: torch.Tensor) -> torch.Tensor:
        y_BT = y_1P.new_zeros(mask_BT.shape + y_1P.shape[2:])
        y_BT[mask_BT] = y_1P[0]
        return y_BT

    return tuple(unpack(y) for y in out) if isinstance(out, tuple) else unpack(out)
