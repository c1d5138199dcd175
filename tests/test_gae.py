"""GAE: the vectorized implementation against a plain per-env loop, the TAD virtual-step layout, ValueNorm."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from marlctl.trainer.ppo.gae import deinterleave, gae, interleave_virtual_steps
from marlctl.trainer.ppo.value_norm import ValueNorm


def gae_reference(rewards, values, next_values, terminated, ended, gamma, lam):
    """Textbook GAE, one environment and one step at a time, in plain Python floats."""
    T, B = len(rewards), len(rewards[0])
    adv = [[0.0] * B for _ in range(T)]
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t][b] else next_values[t][b]
            delta = rewards[t][b] + gamma * bootstrap - values[t][b]
            running = delta + (0.0 if ended[t][b] else gamma * lam * running)
            adv[t][b] = running
    return adv


def _random_rollout(T: int, B: int, seed: int):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    terminated = rng.random((T, B)) < 0.1
    truncated = (rng.random((T, B)) < 0.05) & ~terminated
    ended = terminated | truncated
    next_values = np.concatenate([values[1:], rng.normal(size=(1, B))])
    # Where truncated, the bootstrap is the value of the final observation, not of the next episode's start.
    next_values = np.where(truncated, rng.normal(size=(T, B)), next_values)
    return rewards, values, next_values, terminated, ended


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_vectorized_gae_matches_plain_loop(gamma: float, lam: float) -> None:
    rewards, values, next_values, terminated, ended = _random_rollout(T=37, B=6, seed=3)
    adv_ref = np.array(gae_reference(rewards.tolist(), values.tolist(), next_values.tolist(),
                                     terminated.tolist(), ended.tolist(), gamma, lam))
    t = [torch.tensor(x) for x in (rewards, values, next_values, terminated, ended)]
    adv, ret = gae(*t, gamma=gamma, lam=lam)
    np.testing.assert_allclose(adv.numpy(), adv_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), adv_ref + values, rtol=1e-10, atol=1e-10)


def test_gae_trace_does_not_cross_episode_end() -> None:
    # Two envs identical up to step 2; env 1 ends its episode at step 2, so its steps <= 2 must not
    # see the (huge) reward that env 0 gets at step 3.
    rewards = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [100.0, 100.0]])
    values = torch.zeros(4, 2)
    ended = torch.tensor([[False, False], [False, False], [False, True], [False, False]])
    adv, _ = gae(rewards, values, torch.zeros(4, 2), ended, ended, gamma=0.9, lam=0.9)
    assert adv[0, 0] > 1.0
    assert torch.all(adv[:3, 1] == 0.0)


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2), 0.9, 0.9)


def test_virtual_steps_match_an_explicit_transformed_mdp() -> None:
    """TAD (Algorithm 1): N agents per env step = N steps of a single-agent MDP, reward on the last one."""
    T, B, N = 5, 3, 3
    rewards, _, _, terminated, ended = _random_rollout(T=T, B=B, seed=7)
    rng = np.random.default_rng(8)
    values_TBN = rng.normal(size=(T, B, N))
    next_first = np.concatenate([values_TBN[1:, :, 0], rng.normal(size=(1, B))])
    gamma_v, lam_v = 0.99 ** (1 / N), 0.95 ** (1 / N)
    # Explicit transformed trajectory, written out step by step in plain Python.
    r_v, v_v, nv_v, term_v, end_v = [], [], [], [], []
    for t in range(T):
        for i in range(N):
            last = i == N - 1
            r_v.append([rewards[t, b] if last else 0.0 for b in range(B)])
            v_v.append([values_TBN[t, b, i] for b in range(B)])
            nv_v.append([next_first[t, b] if last else values_TBN[t, b, i + 1] for b in range(B)])
            term_v.append([bool(terminated[t, b]) and last for b in range(B)])
            end_v.append([bool(ended[t, b]) and last for b in range(B)])
    adv_ref = np.array(gae_reference(r_v, v_v, nv_v, term_v, end_v, gamma_v, lam_v))
    flat = interleave_virtual_steps(
        torch.tensor(rewards), torch.tensor(values_TBN), torch.tensor(next_first),
        torch.tensor(terminated), torch.tensor(ended),
    )
    adv, _ = gae(*flat, gamma=gamma_v, lam=lam_v)
    np.testing.assert_allclose(adv.numpy(), adv_ref, atol=1e-10)
    np.testing.assert_allclose(deinterleave(flat[1], N).numpy(), values_TBN)


def test_value_norm_tracks_mean_and_std_and_round_trips() -> None:
    torch.manual_seed(0)
    norm = ValueNorm(beta=0.99)
    for _ in range(2000):
        norm.update(torch.randn(256) * 3.0 + 7.0)
    mean, var = norm.mean_var()
    assert abs(mean.item() - 7.0) < 0.2 and abs(var.sqrt().item() - 3.0) < 0.2
    x = torch.randn(10) * 5
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)
    with pytest.raises(ValueError, match="beta"):
        ValueNorm(beta=1.0)
