"""TD(lambda) and n-step returns: two independent TD(lambda) implementations agree, and the edge cases hold."""
from __future__ import annotations

import pytest
import torch
from marlctl.trainer.targets import (
    greedy_next_values,
    n_step_returns,
    one_step_targets,
    td_lambda_returns,
    td_lambda_returns_forward,
)


def random_episodes(seed: int, B: int = 6, T: int = 9) -> tuple[torch.Tensor, ...]:
    """Padded episodes of random lengths, some terminated, some truncated (bootstrapping)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full-length episode
    t = torch.arange(T)
    filled = t[None, :] < lengths[:, None]
    terminated = torch.zeros(B, T, dtype=torch.bool)
    ends_for_real = torch.rand(B, generator=g) < 0.5
    terminated[torch.arange(B), lengths - 1] = ends_for_real
    reward = torch.randn(B, T, generator=g) * filled
    v_next = torch.randn(B, T, generator=g)
    return reward, terminated, filled, v_next


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backward_recursion_matches_forward_view(lam: float, seed: int) -> None:
    reward, terminated, filled, v_next = random_episodes(seed)
    backward = td_lambda_returns(reward, terminated, filled, v_next, 0.9, lam)
    forward = td_lambda_returns_forward(reward, terminated, filled, v_next, 0.9, lam)
    torch.testing.assert_close(backward, forward, rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_one_step_and_lambda_one_is_monte_carlo() -> None:
    reward, terminated, filled, v_next = random_episodes(3)
    gamma = 0.95
    one = one_step_targets(reward, terminated, v_next, gamma) * filled
    torch.testing.assert_close(td_lambda_returns(reward, terminated, filled, v_next, gamma, 0.0), one)
    mc = td_lambda_returns(reward, terminated, filled, v_next, gamma, 1.0)
    for b in range(reward.shape[0]):
        L = int(filled[b].sum())
        boot = 0.0 if terminated[b, L - 1] else float(v_next[b, L - 1])
        g = boot
        for t in reversed(range(L)):
            g = float(reward[b, t]) + gamma * g
            assert mc[b, t].item() == pytest.approx(g, abs=1e-5)
        assert torch.all(mc[b, L:] == 0)


def test_n_step_by_hand() -> None:
    # One episode of 3 steps, truncated (bootstraps), rewards 1, 2, 3; gamma 0.5.
    reward = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    filled = torch.tensor([[True, True, True, False]])
    terminated = torch.zeros(1, 4, dtype=torch.bool)
    v_next = torch.tensor([[10.0, 20.0, 30.0, 99.0]])
    g2 = n_step_returns(reward, terminated, filled, v_next, 0.5, 2)
    # t=0: 1 + 0.5*2 + 0.25*v(s2)=20*0.25 -> 7; t=1: 2 + 0.5*3 + 0.25*30 -> 11; t=2: 3 + 0.5*30 -> 18.
    torch.testing.assert_close(g2, torch.tensor([[7.0, 11.0, 18.0, 0.0]]))
    terminated[0, 2] = True  # now the episode really ends: no bootstrap at its end
    g2 = n_step_returns(reward, terminated, filled, v_next, 0.5, 2)
    torch.testing.assert_close(g2, torch.tensor([[7.0, 3.5, 3.0, 0.0]]))
    torch.testing.assert_close(n_step_returns(reward, terminated, filled, v_next, 0.5, 1),
                               one_step_targets(reward, terminated, v_next, 0.5) * filled)


def test_double_q_selects_with_online_and_respects_avail() -> None:
    target = torch.tensor([[[[1.0, 5.0, 9.0]]]])  # [B=1, T=1, N=1, A=3]
    online = torch.tensor([[[[3.0, 2.0, 8.0]]]])
    avail = torch.tensor([[[[True, True, False]]]])
    values, actions = greedy_next_values(target, online, avail)
    assert actions.item() == 0 and values.item() == 1.0  # online's best available is 0, valued by target
    values, actions = greedy_next_values(target, target, avail)
    assert actions.item() == 1 and values.item() == 5.0
