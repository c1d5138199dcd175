"""ReMIX projection weights on hand-built tensors: each of the four factors, the case split, the range, ablations."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from marlctl.trainer.learners.remix_weights import (
    RemixWeightConfig,
    boltzmann_chosen_prob,
    mixer_gradient,
    remix_weights,
)

CFG = RemixWeightConfig(w_min=0.1)


def _batch(**over: torch.Tensor) -> dict[str, torch.Tensor]:
    """Four underestimated transitions, identical unless overridden."""
    base = {
        "q_tot_B": torch.tensor([0.0, 0.0, 0.0, 0.0]),
        "y_B": torch.tensor([1.0, 1.0, 1.0, 1.0]),
        "q_star_B": torch.tensor([0.5, 0.5, 0.5, 0.5]),
        "pi_BN": torch.full((4, 2), 0.25),
        "mixer_grad_BN": torch.full((4, 2), 0.5),
        "on_policy_B": torch.ones(4),
    }
    base.update(over)
    return base


def test_overestimates_get_the_small_constant_and_underestimates_more() -> None:
    b = _batch(q_tot_B=torch.tensor([2.0, 0.0, 1.5, 0.5]))  # y = 1: rows 0 and 2 overestimate
    out = remix_weights(**b, config=CFG)
    assert out.underestimate.tolist() == [False, True, False, True]
    assert out.w[0].item() == pytest.approx(CFG.w_min) and out.w[2].item() == pytest.approx(CFG.w_min)
    assert out.raw[0].item() == 0.0 and out.raw[2].item() == 0.0
    assert (out.w[[1, 3]] > CFG.w_min).all()
    # Q_tot == y counts as "Q_tot <= y" (Theorem 1's case split) but has zero Bellman error.
    eq = remix_weights(**_batch(q_tot_B=torch.tensor([1.0, 0.0, 0.0, 0.0])), config=CFG)
    assert eq.underestimate[0] and eq.w[0].item() == pytest.approx(CFG.w_min)


def test_weight_grows_with_bellman_error() -> None:
    out = remix_weights(**_batch(y_B=torch.tensor([0.5, 1.0, 2.0, 4.0]), q_star_B=torch.zeros(4)), config=CFG)
    assert torch.all(out.raw[1:] > out.raw[:-1]) and torch.all(out.w[1:] >= out.w[:-1]) and out.w[3] > out.w[0]
    torch.testing.assert_close(out.bellman_error, torch.tensor([0.5, 1.0, 2.0, 4.0]))
    # Proportional above the floor: raw doubles with the Bellman error.
    torch.testing.assert_close(out.raw[1:] / out.raw[:-1], torch.full((3,), 2.0))


def test_weight_grows_with_underestimation_gap_exponentially() -> None:
    q_star = torch.tensor([-1.0, 0.0, 1.0, 2.0])  # Q* - Q_tot = -1, 0, 1, 2
    out = remix_weights(**_batch(q_star_B=q_star), config=CFG)
    assert torch.all(out.raw[1:] > out.raw[:-1]) and torch.all(out.w[1:] >= out.w[:-1]) and out.w[3] > out.w[0]
    torch.testing.assert_close(out.underestimation, torch.exp(q_star))
    torch.testing.assert_close(out.raw[1:] / out.raw[:-1], torch.full((3,), torch.e))


def test_weight_follows_inverse_mixer_gradient() -> None:
    grads = torch.tensor([[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.1, 0.1]])
    pi = torch.full((4, 2), 0.5)
    out = remix_weights(**_batch(mixer_grad_BN=grads, pi_BN=pi), config=CFG)
    expected = ((1 - pi) / grads).sum(-1) - 1  # sum_j (1 - pi^j) / f'_j - 1 = 0, 1, 3, 9
    torch.testing.assert_close(out.mixer_gradient, expected)
    assert torch.all(out.raw[1:] > out.raw[:-1]) and torch.all(out.w[1:] >= out.w[:-1]) and out.w[3] > out.w[0]
    # A confident policy (pi -> 1) makes the factor small: the transition matters less.
    sure = remix_weights(**_batch(pi_BN=torch.tensor([[0.99, 0.99]] * 4)), config=CFG)
    assert (sure.mixer_gradient == 0).all()


def test_on_policy_factor_scales_recent_transitions() -> None:
    out = remix_weights(**_batch(on_policy_B=torch.tensor([1.0, 1.0, 3.0, 3.0])), config=CFG)
    assert out.w[2] > out.w[0] and out.w[2].item() == pytest.approx(1.0)  # E / mean(E) = 1.5 -> capped at 1
    torch.testing.assert_close(out.w[0], torch.tensor(0.5))  # E / mean(E) = 1 / 2
    torch.testing.assert_close(out.raw[2] / out.raw[0], torch.tensor(3.0))


@pytest.mark.parametrize("switch", ["bellman_error", "underestimation", "mixer_gradient", "on_policy"])
def test_each_ablation_switch_removes_exactly_its_term(switch: str) -> None:
    g = torch.Generator().manual_seed(0)
    b = _batch(
        q_tot_B=torch.rand(4, generator=g),
        y_B=1.0 + torch.rand(4, generator=g),
        q_star_B=torch.randn(4, generator=g),
        pi_BN=0.1 + 0.5 * torch.rand(4, 2, generator=g),
        mixer_grad_BN=0.05 + 0.5 * torch.rand(4, 2, generator=g),  # keeps every factor > 0
        on_policy_B=1.0 + torch.rand(4, generator=g),
    )
    full = remix_weights(**b, config=CFG)
    ablated = remix_weights(**b, config=dataclasses.replace(CFG, **{switch: False}))
    assert torch.all(getattr(ablated, switch) == 1.0)
    torch.testing.assert_close(ablated.raw, full.raw / getattr(full, switch))
    for other in {"bellman_error", "underestimation", "mixer_gradient", "on_policy"} - {switch}:
        torch.testing.assert_close(getattr(ablated, other), getattr(full, other))


def test_weights_stay_in_range_for_wild_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    for w_min, norm in itertools.product((0.1, 0.5, 0.8), ("mean", "max")):
        out = remix_weights(
            q_tot_B=100 * torch.randn(256, generator=g),
            y_B=100 * torch.randn(256, generator=g),
            q_star_B=100 * torch.randn(256, generator=g),
            pi_BN=torch.rand(256, 3, generator=g),
            mixer_grad_BN=torch.rand(256, 3, generator=g) * 1e-6,
            on_policy_B=torch.rand(256, generator=g) * 5,
            config=RemixWeightConfig(w_min=w_min, normalization=norm),
        )
        assert torch.isfinite(out.w).all()
        assert out.w.min() >= w_min - 1e-6 and out.w.max() <= 1.0 + 1e-6
        assert out.w.max().item() == pytest.approx(1.0)


def test_mapping_into_range_mean_and_max() -> None:
    """mean: w = clip(E / mean(E), w_min, 1) (Theorem 1's E_mu[w] = 1); max: w_min + (1 - w_min) E / max(E)."""
    y = torch.tensor([3.0, 0.5, 1.0, 2.0, 5.0, 0.0])  # Q_tot = 0: Bellman errors; row 5 has E = 0
    b = _batch(q_tot_B=torch.zeros(6), y_B=y, q_star_B=torch.zeros(6), pi_BN=torch.full((6, 2), 0.25),
               mixer_grad_BN=torch.full((6, 2), 0.5), on_policy_B=torch.ones(6))
    b["q_tot_B"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # row 5 overestimates
    raw = y * 2.0  # mixer factor: 2 * 0.75 / 0.5 - 1 = 2
    raw[5] = 0.0
    mean_out = remix_weights(**b, config=CFG)
    torch.testing.assert_close(mean_out.raw, raw)
    torch.testing.assert_close(mean_out.w, (raw / raw.mean()).clamp(0.1, 1.0))
    max_cfg = dataclasses.replace(CFG, normalization="max")
    max_out = remix_weights(**b, config=max_cfg)
    torch.testing.assert_close(max_out.w, 0.1 + 0.9 * raw / raw.max())


def test_padded_rows_do_not_set_the_scale() -> None:
    b = _batch(y_B=torch.tensor([1.0, 2.0, 1.0, 100.0]), q_star_B=torch.zeros(4))
    valid = torch.tensor([True, True, True, False])
    out = remix_weights(**b, config=dataclasses.replace(CFG, normalization="max"), valid_B=valid)
    assert out.w[1].item() == pytest.approx(1.0)
    mean_out = remix_weights(**b, config=CFG, valid_B=valid)
    torch.testing.assert_close(mean_out.w[:3], (torch.tensor([1.0, 2.0, 1.0]) / (4 / 3)).clamp(0.1, 1.0))
    assert out.w[3].item() == pytest.approx(CFG.w_min)
    # Garbage (NaN) in a padded row stays out of every weight.
    b["pi_BN"] = b["pi_BN"].clone()
    b["pi_BN"][3] = float("nan")
    out = remix_weights(**b, config=CFG, valid_B=valid)
    assert torch.isfinite(out.w).all()


def test_boltzmann_prob_is_finite_on_padding() -> None:
    util = torch.zeros(1, 2, 3)
    avail = torch.tensor([[[True, False, False], [False, False, False]]])  # agent 1: padding row
    p = boltzmann_chosen_prob(util, torch.tensor([[0, 0]]), avail)
    assert torch.isfinite(p).all() and p[0, 0].item() == pytest.approx(1.0)


def test_weights_carry_no_gradient() -> None:
    q_tot = torch.zeros(4, requires_grad=True)
    out = remix_weights(**_batch(q_tot_B=q_tot), config=CFG)
    assert not out.w.requires_grad


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="w_min"):
        RemixWeightConfig(w_min=0.0)
    with pytest.raises(ValueError, match="w_min"):
        RemixWeightConfig(w_min=1.5)
    with pytest.raises(ValueError, match="valid: mean, max"):
        RemixWeightConfig(normalization="median")  # type: ignore[arg-type]


def test_boltzmann_prob_ignores_unavailable_actions() -> None:
    util = torch.tensor([[[0.0, 0.0, 100.0]]])  # [B=1, N=1, A=3]
    avail = torch.tensor([[[True, True, False]]])
    p = boltzmann_chosen_prob(util, torch.tensor([[0]]), avail)
    torch.testing.assert_close(p, torch.tensor([[0.5]]))


def test_mixer_gradient_matches_lemma_1() -> None:
    """Autograd f' equals Lemma 1's closed form for a two-layer non-negative mixer with ELU."""
    g = torch.Generator().manual_seed(2)
    B, N, M = 5, 3, 4
    W1, b1 = torch.rand(B, N, M, generator=g), torch.randn(B, 1, M, generator=g)
    W2 = torch.rand(B, M, 1, generator=g)
    q_BN = torch.randn(B, N, generator=g, requires_grad=True)
    pre_B1M = q_BN.unsqueeze(1) @ W1 + b1
    q_tot_B = (torch.nn.functional.elu(pre_B1M) @ W2).view(B)
    grad_BN = mixer_gradient(q_tot_B, q_BN)
    elu_prime_B1M = torch.where(pre_B1M > 0, torch.ones_like(pre_B1M), torch.exp(pre_B1M))
    lemma_BN = (W1 * elu_prime_B1M * W2.transpose(1, 2)).sum(-1)  # sum_j h'(.)_j w1_aj w2_j
    torch.testing.assert_close(grad_BN, lemma_BN.detach())


@pytest.mark.parametrize("hypernet_layers", [1, 2])
def test_qmixer_closed_form_gradient_equals_autograd(hypernet_layers: int) -> None:
    """QMixer.forward_with_gradient (Lemma 1 from the hypernetworks' weights) equals autograd's dQ_tot/dQ_j,
    on rows whose ELU pre-activations are negative as well as positive, and returns the same Q_tot."""
    from marlctl.trainer.mixers.qmix import QMixer

    torch.manual_seed(3)
    B, T, N, S = 6, 5, 4, 7
    mixer = QMixer(N, S, embed_dim=8, hypernet_embed=16, hypernet_layers=hypernet_layers)
    q_BTN = (3.0 * torch.randn(B, T, N)).requires_grad_(True)
    state_BTS = torch.randn(B, T, S)
    q_tot_BT, closed_BTN = mixer.forward_with_gradient(q_BTN, state_BTS)
    _, w1_RNE, pre_R1E, _ = mixer._mix(q_BTN, state_BTS)
    assert (pre_R1E < 0).any() and (pre_R1E > 0).any()  # both branches of elu' are exercised
    assert not closed_BTN.requires_grad
    autograd_BTN = mixer_gradient(q_tot_BT.reshape(-1), q_BTN).view(B, T, N)
    torch.testing.assert_close(closed_BTN, autograd_BTN, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_tot_BT, mixer(q_BTN, state_BTS))
    assert (closed_BTN >= 0).all()  # monotonic mixer
    # Q_tot still trains through the closed-form path: its gradient reaches the hypernetworks.
    q_tot_BT.sum().backward()
    last_w1 = mixer.hyper_w1 if hypernet_layers == 1 else mixer.hyper_w1[-1]
    assert last_w1.weight.grad.abs().sum() > 0
