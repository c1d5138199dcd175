"""Episode replay buffer: fixed-size arrays ``[capacity, T+1, ...]`` of whole padded episodes, sampled whole.

Index ``t`` holds the views an agent acted on at step ``t`` (``obs/state/avail``, ``T+1`` long so the
last next-state is kept) and the transition taken there (``actions/reward/terminated/filled``, ``T``
long). ``filled[t]`` marks real transitions (padding after the episode is False); ``terminated[t]``
marks a true end (no bootstrap), while a truncated episode simply stops with its next views stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from marlctl.agents.files import atomic_path
from marlctl.envs.base import EnvSpec


@dataclass
class EpisodeBatch:
    """A batch of whole episodes as tensors (padded to the longest one in the batch)."""

    obs: torch.Tensor  # [B, T+1, N, O] float32
    state: torch.Tensor  # [B, T+1, S] float32
    avail: torch.Tensor  # [B, T+1, N, A] bool
    actions: torch.Tensor  # [B, T, N] int64
    reward: torch.Tensor  # [B, T] float32
    terminated: torch.Tensor  # [B, T] bool: the transition at t ended the episode for real
    filled: torch.Tensor  # [B, T] bool: the transition at t exists

    @property
    def batch_size(self) -> int:
        return self.actions.shape[0]

    @property
    def max_t(self) -> int:
        return self.actions.shape[1]

    @property
    def prev_actions(self) -> torch.Tensor:
        """Previous own action at every ``t`` in ``[0, T]``: -1 at t=0. ``[B, T+1, N]`` int64."""
        first = torch.full_like(self.actions[:, :1], -1)
        return torch.cat([first, self.actions], dim=1)

    @property
    def views(self) -> torch.Tensor:
        """Views (obs/state/avail steps) each episode has, ``[B]`` int64: its transitions plus the last next-state."""
        return self.filled.sum(dim=1) + 1

    @property
    def mask(self) -> torch.Tensor:
        """``filled`` as float ``[B, T]`` for masked means."""
        return self.filled.float()


def _field_shapes(spec: EnvSpec, t_len: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    n, o, s, a = spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions
    return {
        "obs": ((t_len + 1, n, o), np.float32),
        "state": ((t_len + 1, s), np.float32),
        "avail": ((t_len + 1, n, a), np.bool_),
        "actions": ((t_len, n), np.int64),
        "reward": ((t_len,), np.float32),
        "terminated": ((t_len,), np.bool_),
        "filled": ((t_len,), np.bool_),
    }


FIELDS = tuple(f.name for f in fields(EpisodeBatch))


class EpisodeArrays:
    """``[rows, T+1, ...]`` NumPy arrays of the ``EpisodeBatch`` fields (the rollout's staging area too)."""

    def __init__(self, spec: EnvSpec, rows: int, max_t: int) -> None:
        self.rows, self.max_t = rows, max_t
        # np.zeros pages memory lazily: a large, mostly empty buffer costs what it holds.
        self.data: dict[str, np.ndarray] = {
            name: np.zeros((rows, *shape), dtype=dtype) for name, (shape, dtype) in _field_shapes(spec, max_t).items()
        }

    def clear_rows(self, rows: np.ndarray) -> None:
        for arr in self.data.values():
            arr[rows] = 0


class ReplayBuffer:
    """Fixed-capacity ring buffer of whole episodes, with uniform sampling of whole episodes."""

    def __init__(self, spec: EnvSpec, capacity: int, max_t: int) -> None:
        self.spec, self.capacity, self.max_t = spec, capacity, max_t
        self.arrays = EpisodeArrays(spec, capacity, max_t)
        self.lengths = np.zeros(capacity, dtype=np.int64)  # [C] filled steps per stored episode
        self.pos = 0  # next row to write
        self.size = 0  # rows holding an episode
        self.episodes_added = 0

    def __len__(self) -> int:
        return self.size

    def insert(self, src: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Copy episodes ``src[field][rows]`` (arrays shaped like this buffer's) into the ring, vectorized."""
        k = len(rows)
        if k == 0:
            return
        if k > self.capacity:
            rows = rows[-self.capacity:]
            k = self.capacity
        dest = (self.pos + np.arange(k)) % self.capacity  # [k]
        for name, arr in self.arrays.data.items():
            arr[dest] = src[name][rows]
        self.lengths[dest] = src["filled"][rows].sum(axis=1)
        self.pos = int((self.pos + k) % self.capacity)
        self.size = min(self.size + k, self.capacity)
        self.episodes_added += k

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> EpisodeBatch:
        """``batch_size`` distinct episodes uniformly (with replacement when fewer are stored)."""
        if self.size == 0:
            raise RuntimeError("sample() on an empty replay buffer")
        idx = rng.choice(self.size, size=batch_size, replace=self.size < batch_size)  # [B]
        return self.gather(idx, device)

    def gather(self, idx: np.ndarray, device: torch.device | str = "cpu") -> EpisodeBatch:
        """Episodes at rows ``idx`` as an ``EpisodeBatch``, cut to the longest of them."""
        t = max(int(self.lengths[idx].max()), 1)
        out = {}
        for name, arr in self.arrays.data.items():
            cut = arr[idx, : t + 1] if name in ("obs", "state", "avail") else arr[idx, :t]
            out[name] = torch.from_numpy(np.ascontiguousarray(cut)).to(device)
        return EpisodeBatch(**out)

    def save_arrays(self, path: str | Path) -> int:
        """Write the stored episodes to ``path`` as one uncompressed ``.npz`` of plain arrays (no pickle), atomically
        and fsynced; returns its size in bytes. The checkpoint of the same step names the file."""
        n = self.size
        arrays = {f"data_{name}": arr[:n] for name, arr in self.arrays.data.items()}  # views: no copy
        meta = np.array([self.capacity, self.max_t, self.pos, n, self.episodes_added], dtype=np.int64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=meta, lengths=self.lengths[:n], **arrays)
                f.flush()
                os.fsync(f.fileno())
            size = tmp.stat().st_size
        return size

    def load_arrays(self, path: str | Path) -> None:
        """Refill the buffer from ``save_arrays``' file (``ValueError`` when it does not fit this buffer)."""
        with np.load(path, allow_pickle=False) as z:
            capacity, max_t, pos, n, added = (int(v) for v in z["meta"])
            if capacity != self.capacity or max_t != self.max_t:
                raise ValueError(f"replay snapshot {path} holds capacity={capacity} max_t={max_t}; this run's buffer "
                                 f"has capacity={self.capacity} max_t={self.max_t}")
            for name, arr in self.arrays.data.items():
                src = z[f"data_{name}"]
                if src.shape != (n, *arr.shape[1:]) or src.dtype != arr.dtype:
                    raise ValueError(f"replay snapshot {path}: {name} is {src.dtype}{list(src.shape)}, expected "
                                     f"{arr.dtype}{[n, *arr.shape[1:]]}")
                arr[:n] = src
                arr[n:] = 0
            self.lengths[:] = 0
            self.lengths[:n] = z["lengths"]
        self.pos, self.size, self.episodes_added = pos, n, added

    def state_dict(self) -> dict[str, Any]:
        """The stored episodes as tensors (``torch.load(weights_only=True)``-safe), oldest order kept."""
        n = self.size
        return {
            "capacity": self.capacity,
            "max_t": self.max_t,
            "pos": self.pos,
            "size": n,
            "episodes_added": self.episodes_added,
            "lengths": torch.from_numpy(self.lengths[:n].copy()),
            "data": {name: torch.from_numpy(arr[:n].copy()) for name, arr in self.arrays.data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity or state["max_t"] != self.max_t:
            raise ValueError(f"replay buffer shape mismatch: checkpoint capacity={state['capacity']} "
                             f"max_t={state['max_t']}, config capacity={self.capacity} max_t={self.max_t}")
        n = int(state["size"])
        for name, arr in self.arrays.data.items():
            arr[:] = 0
            arr[:n] = state["data"][name].numpy()
        self.lengths[:] = 0
        self.lengths[:n] = state["lengths"].numpy()
        self.pos, self.size = int(state["pos"]), n
        self.episodes_added = int(state["episodes_added"])
