"""Hand-computed checks of oreo.losses on tiny tensors."""

import math

import pytest
import torch

from oreo import losses
from oreo.losses import (
    at_next_state,
    importance_weights,
    k3_kl,
    masked_kl_mean,
    next_state_index,
    oreo_policy_loss,
    response_policy_loss,
    scale_reward,
    sequence_mean,
    sft_loss,
    single_step_policy_loss,
    suffix_sum,
    value_loss,
)

BETA = 0.5


def close(a, b, tol=1e-6):
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b))
    return torch.allclose(a, b, atol=tol, rtol=0)


def batch():
    """B=2, T=4, β=0.5, shared by the hand-computed tests.

    Row 0 (right-padded, step-level: states at 0 and 2, last position a pad):
        ρ = [0.2, -0.4, 0.6, 1.0(pad)]   m = [1,1,1,0]   σ = [1,0,1,0]
        V = [0.1, 9, 0.3, 9]            R = 1
        C = [0.2-0.4+0.6, -0.4+0.6, 0.6, 0] = [0.4, 0.2, 0.6, 0]
    Row 1 (left-padded, token-level: every response position a state):
        ρ = [5.0(pad), 1.0, -1.0, 2.0]   m = [0,1,1,1]   σ = [0,1,1,1]
        V = [7, 0.0, 0.5, -0.2]          R = 0
        C = [2, 1-1+2, -1+2, 2] = [2, 2, 1, 2]
    """
    logratio = torch.tensor([[0.2, -0.4, 0.6, 1.0], [5.0, 1.0, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    values = torch.tensor([[0.1, 9.0, 0.3, 9.0], [7.0, 0.0, 0.5, -0.2]], dtype=torch.float64, requires_grad=True)
    action_mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    state_mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return logratio, values, action_mask, state_mask, rewards


# ----------------------------------------------------------------------------- helpers


def test_suffix_sum():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, float("inf")]])
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]])
    # row 0: [1+3+4, 3+4, 3+4, 4]; row 1: [0.5-1, -1, 0, 0] (the inf pad must not leak)
    assert close(suffix_sum(x, mask), [[8, 7, 7, 4], [-0.5, -1, 0, 0]])
    logratio, _, am, _, _ = batch()
    assert close(suffix_sum(logratio, am), [[0.4, 0.2, 0.6, 0], [2, 2, 1, 2]])


def test_next_state_index_hand():
    sm = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    # T = 4 is the terminal sentinel
    expected = [[1, 3, 3, 4], [1, 4, 4, 4], [4, 4, 4, 4], [1, 2, 3, 4]]
    n = next_state_index(sm)
    assert n.dtype == torch.long
    assert n.tolist() == expected
    assert next_state_index(sm.float()).tolist() == expected


def test_next_state_index_matches_loop():
    g = torch.Generator().manual_seed(0)
    sm = torch.rand(16, 11, generator=g) < 0.3
    n = next_state_index(sm)
    for b in range(16):
        for t in range(11):
            later = [j for j in range(t + 1, 11) if sm[b, j]]
            assert n[b, t] == (later[0] if later else 11)


def test_at_next_state():
    x = torch.tensor([[10.0, 11.0, 12.0, 13.0], [20.0, 21.0, 22.0, 23.0]])
    n = torch.tensor([[1, 3, 3, 4], [4, 4, 4, 4]])
    assert close(at_next_state(x, n), [[11, 13, 13, 0], [0, 0, 0, 0]])


def test_sequence_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, float("nan"), 8.0]])
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]])
    mean, valid = sequence_mean(x, mask)
    assert close(mean, [(1 + 3) / 2, 0.0])  # empty row: 0, not NaN
    assert valid.tolist() == [True, False]


# ----------------------------------------------------------------------------- critic


def test_value_loss_hand():
    logratio, values, am, sm, R = batch()
    # row 0 states t=0,2:  (0.1 + 0.5·0.4 − 1)² = 0.49,  (0.3 + 0.5·0.6 − 1)² = 0.16   → mean 0.325
    # row 1 states t=1,2,3: (0 + 0.5·2)² = 1, (0.5 + 0.5·1)² = 1, (−0.2 + 0.5·2)² = 0.64 → mean 2.64/3 = 0.88
    loss = value_loss(values, logratio, am, sm, R, beta=BETA)
    assert close(loss, (0.325 + 0.88) / 2)  # 0.6025
    loss.backward()
    assert logratio.grad is None  # the target is a constant
    # dL/dV_t = 2·resid_t / |S_b| / B_valid
    assert close(values.grad, [[2 * -0.7 / 4, 0, 2 * -0.4 / 4, 0], [0, 2 * 1 / 6, 2 * 1 / 6, 2 * 0.8 / 6]])


def test_value_loss_clip_and_weights():
    logratio, values, am, sm, R = batch()
    # clip C to [−0.5, 0.5]: row 0 C = [0.4, ·, 0.5, ·] → 0.49, (0.3+0.25−1)² = 0.2025 → mean 0.34625
    #                        row 1 C = [·, 0.5, 0.5, 0.5] → 0.25², 0.75², 0.05² → mean 0.6275/3
    loss = value_loss(values, logratio, am, sm, R, beta=BETA, clip_logratio=0.5)
    assert close(loss, (0.34625 + 0.6275 / 3) / 2)
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert close(value_loss(values, logratio, am, sm, R, beta=BETA, weights=w), (2 * 0.325 + 0.5 * 0.88) / 2)


def test_float_masks_equal_bool_masks():
    logratio, values, am, sm, R = batch()
    as_bool = _all_losses(logratio, values, am, sm, R)
    as_float = _all_losses(logratio, values, am.double(), sm.double(), R)
    for name in as_bool:
        assert close(as_bool[name], as_float[name], 1e-12), name


def test_low_precision_inputs_are_upcast():
    logratio, values, am, sm, R = batch()
    loss = value_loss(values.bfloat16(), logratio.bfloat16(), am, sm, R.bfloat16(), beta=BETA)
    assert loss.dtype == torch.float32
    assert close(loss, 0.6025, 2e-2)  # bf16 rounding of the inputs only


# ----------------------------------------------------------------------------- OREO policy loss


def test_oreo_policy_loss_hand():
    logratio, values, am, sm, R = batch()
    # Forward value of ρ̃_t is C_t, so the residuals equal the critic's: 0.6025.
    loss = oreo_policy_loss(logratio, values, am, sm, R, beta=BETA)
    assert close(loss, 0.6025)
    loss.backward()
    assert values.grad is None  # sg[V]
    # dL/dρ_j = Σ_{states t owning j} 2·resid_t·β / |S_b| / B_valid, with j owned by t iff t ≤ j < n(t), m_j = 1.
    # row 0: n(0)=2 → j=0,1 owned by t=0 (resid −0.7); n(2)=4 → j=2 by t=2 (−0.4); j=3 is a pad.
    # row 1: n(t)=t+1 → each j=1,2,3 owned by t=j (resid 1, 1, 0.8); j=0 is a pad.
    expected = [
        [2 * -0.7 * 0.5 / 4, 2 * -0.7 * 0.5 / 4, 2 * -0.4 * 0.5 / 4, 0],
        [0, 2 * 1 * 0.5 / 6, 2 * 1 * 0.5 / 6, 2 * 0.8 * 0.5 / 6],
    ]
    assert close(logratio.grad, expected)


def test_oreo_policy_loss_no_grad_past_next_state():
    # One row, states at 0 and 2. Choose V_2 so the residual at t=2 is 0: then every
    # gradient comes from state 0, and must stop at its next state (j ≥ 2).
    logratio = torch.tensor([[0.3, -0.2, 0.7, 0.4]], requires_grad=True)
    am = torch.ones(1, 4, dtype=torch.bool)
    sm = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    R = torch.tensor([1.0])
    C2 = 0.7 + 0.4
    values = torch.tensor([[0.2, 0.0, 1.0 - BETA * C2, 0.0]])
    oreo_policy_loss(logratio, values, am, sm, R, beta=BETA).backward()
    g = logratio.grad[0]
    assert g[0] != 0 and g[1] != 0
    assert g[0] == g[1]
    assert g[2] == 0 and g[3] == 0


def _random_batch(seed, B=4, T=9):
    g = torch.Generator().manual_seed(seed)
    logratio = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    R = torch.randint(0, 2, (B,), generator=g).double()
    return logratio, values, R


def test_oreo_policy_loss_token_level_identity():
    """Token-level masks: ρ̃_t = ρ_t + sg[C_{t+1}] (Eq. 9), values and gradients."""
    logratio, values, R = _random_batch(1)
    B, T = logratio.shape
    # left padding of varied length; the prompt's last token is the first state
    start = torch.tensor([0, 2, 5, 3])
    am = torch.arange(T)[None, :] >= start[:, None]
    sm = am.clone()  # token level: σ_t = m_t

    lr1 = logratio.clone().requires_grad_(True)
    loss = oreo_policy_loss(lr1, values, am, sm, R, beta=BETA)
    loss.backward()

    lr2 = logratio.clone().requires_grad_(True)
    rho = torch.where(am, lr2, 0.0)
    C = rho.flip(-1).cumsum(-1).flip(-1)
    C_next = torch.cat([C[:, 1:], torch.zeros(B, 1, dtype=C.dtype)], -1).detach()
    sq = (values - R[:, None] + BETA * (rho + C_next)) ** 2
    ref = ((sq * sm).sum(-1) / sm.sum(-1)).mean()
    ref.backward()

    assert close(loss, ref, 1e-12)
    assert close(lr1.grad, lr2.grad, 1e-12)


def _step_reference(logratio, values, am, sm, R, beta):
    """Loop form of the step-level loss: ρ̃_t = Σ_{t≤j<n(t)} m_j ρ_j + sg[C_{n(t)}]."""
    B, T = logratio.shape
    per_seq = []
    for b in range(B):
        states = [t for t in range(T) if sm[b, t]]
        if not states:
            continue
        terms = []
        for k, t in enumerate(states):
            n = states[k + 1] if k + 1 < len(states) else T
            own = sum(logratio[b, j] for j in range(t, n) if am[b, j])
            rest = sum(logratio[b, j].detach() for j in range(n, T) if am[b, j])
            terms.append((values[b, t] - R[b] + beta * (own + rest)) ** 2)
        per_seq.append(sum(terms) / len(terms))
    return sum(per_seq) / len(per_seq)


def test_oreo_policy_loss_step_level_identity():
    """Step-level masks incl. multi-turn observation gaps (m = 0 between turns)."""
    logratio, values, R = _random_batch(2, B=4, T=10)
    am = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],  # math: prompt then 8 action tokens
            [0, 1, 1, 1, 0, 0, 1, 1, 1, 0],  # agent: turn, observation, turn, pad
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],  # left padded
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no actions, no states
        ],
        dtype=torch.bool,
    )
    sm = torch.tensor(
        [
            [0, 1, 0, 0, 1, 0, 0, 1, 0, 0],  # steps of 3 tokens
            [1, 0, 0, 0, 0, 1, 0, 1, 0, 0],  # a state per turn, one mid-turn
            [0, 0, 0, 1, 1, 0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    lr1 = logratio.clone().requires_grad_(True)
    loss = oreo_policy_loss(lr1, values, am, sm, R, beta=BETA)
    loss.backward()
    lr2 = logratio.clone().requires_grad_(True)
    ref = _step_reference(lr2, values, am, sm, R, BETA)
    ref.backward()
    assert close(loss, ref, 1e-12)
    assert close(lr1.grad, lr2.grad, 1e-12)
    # observation tokens and pads get no gradient
    assert (lr1.grad[~am] == 0).all()


def test_oreo_policy_loss_weights():
    logratio, values, am, sm, R = batch()
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert close(oreo_policy_loss(logratio, values, am, sm, R, beta=BETA, weights=w), (2 * 0.325 + 0.5 * 0.88) / 2)


# ----------------------------------------------------------------------------- other actor losses


def test_response_policy_loss_hand():
    logratio, values, am, sm, R = batch()
    # row 0: t0=0: (0.5·0.4 + 0.1 − 1)² = 0.49;  row 1: t0=1: (0.5·2 + 0 − 0)² = 1
    loss = response_policy_loss(logratio, values, am, sm, R, beta=BETA)
    assert close(loss, (0.49 + 1) / 2)
    loss.backward()
    assert values.grad is None
    # full gradient through C_{t0}: 2·resid·β / B on every action position j ≥ t0
    assert close(logratio.grad, [[-0.35, -0.35, -0.35, 0], [0, 0.5, 0.5, 0.5]])


def test_single_step_policy_loss_hand():
    logratio, values, am, sm, R = batch()
    # row 0, n = [2, 4, ·, ·]:
    #   t=0: V0 − 0 − V2 + β(C0 − C2) = 0.1 − 0.3 + 0.5·(0.4 − 0.6) = −0.3 → 0.09
    #   t=2 (last state): V2 − R − 0 + β·C2 = 0.3 − 1 + 0.3 = −0.4 → 0.16       mean 0.125
    # row 1, n = [·, 2, 3, 4]:
    #   t=1: 0 − 0.5 + 0.5·(2 − 1) = 0;  t=2: 0.5 + 0.2 + 0.5·(1 − 2) = 0.2 → 0.04
    #   t=3: −0.2 − 0 − 0 + 0.5·2 = 0.8 → 0.64                                   mean 0.68/3
    loss = single_step_policy_loss(logratio, values, am, sm, R, beta=BETA)
    assert close(loss, (0.125 + 0.68 / 3) / 2)
    loss.backward()
    assert values.grad is None
    # gradient through C_t − C_{n(t)} only: 2·resid·β / |S_b| / B_valid
    assert close(logratio.grad, [[-0.3 / 4, -0.3 / 4, -0.4 / 4, 0], [0, 0, 0.2 / 6, 0.8 / 6]])


# ----------------------------------------------------------------------------- KL, weights, rewards, SFT


def k3(r):
    return math.exp(-r) + r - 1


def test_k3_kl_hand():
    logratio, _, am, _, _ = batch()
    # row 0 actions ρ = 0.2, −0.4, 0.6; row 1 actions ρ = 1, −1, 2
    expected = ((k3(0.2) + k3(-0.4) + k3(0.6)) / 3 + (k3(1) + k3(-1) + k3(2)) / 3) / 2
    loss = k3_kl(logratio, am)
    assert close(loss, expected)
    loss.backward()
    # d k3/dρ = 1 − exp(−ρ), / n_actions / B
    assert close(logratio.grad[0, 0], (1 - math.exp(-0.2)) / 6)
    assert logratio.grad[0, 3] == 0 and logratio.grad[1, 0] == 0


def test_masked_kl_mean_hand():
    kl = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]])
    am = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    # (1+2+3)/3 = 2, (6+7+8)/3 = 7; the third row has no actions and is dropped
    assert close(masked_kl_mean(kl, am), 4.5)


def test_scale_reward():
    assert scale_reward(1.0, mul=2.0, add=-1.0) == 1.0
    assert scale_reward(0.0, mul=2.0, add=-1.0) == -1.0
    assert scale_reward(0.5) == 0.5
    assert close(scale_reward(torch.tensor([0.0, 1.0]), mul=2.0, add=-1.0), [-1.0, 1.0])


def test_importance_weights_hand():
    logratio, _, am, _, _ = batch()
    # Σ m ρ: row 0 = 0.2 − 0.4 + 0.6 = 0.4; row 1 = 1 − 1 + 2 = 2, clipped to 1
    w = importance_weights(logratio, am)
    assert close(w, [math.exp(0.4), math.e])
    assert not w.requires_grad
    assert close(importance_weights(logratio, am, log_clip=None), [math.exp(0.4), math.exp(2)])


def test_sft_loss_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.5, -2.5, -3.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    loss = sft_loss(logprobs, mask)
    assert close(loss, (1 + 2 + 1.5 + 2.5 + 3.5) / 5)  # token mean over the batch
    loss.backward()
    assert close(logprobs.grad, -mask / 5)
    empty = torch.zeros(2, 4, requires_grad=True)
    loss = sft_loss(empty, torch.zeros(2, 4))
    assert loss == 0
    loss.backward()
    assert (empty.grad == 0).all()


# ----------------------------------------------------------------------------- padding and empty rows


def _pad(rows, T, side, fill):
    out = torch.full((len(rows), T), fill, dtype=rows[0].dtype)
    for b, r in enumerate(rows):
        if side == "left":
            out[b, T - len(r):] = r
        else:
            out[b, : len(r)] = r
    return out


def _all_losses(logratio, values, am, sm, R):
    return {
        "value": value_loss(values, logratio, am, sm, R, beta=BETA, clip_logratio=1.0),
        "oreo": oreo_policy_loss(logratio, values, am, sm, R, beta=BETA, weights=importance_weights(logratio, am)),
        "response": response_policy_loss(logratio, values, am, sm, R, beta=BETA),
        "single_step": single_step_policy_loss(logratio, values, am, sm, R, beta=BETA),
        "k3": k3_kl(logratio, am),
        "kl_mean": masked_kl_mean(logratio, am),  # linear: inf pads stay harmless in backward
        "sft": sft_loss(logratio, am),
    }


def test_left_and_right_padding_agree():
    g = torch.Generator().manual_seed(3)
    lengths = [7, 3, 5, 1]
    T = 8
    rows = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    vrows = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    arows = [torch.arange(n) >= 1 for n in lengths]  # first position is the prompt's last token
    srows = [torch.arange(n) % 2 == 0 for n in lengths]  # step level, states every 2 positions
    R = torch.tensor([1.0, 0.0, 1.0, 0.5], dtype=torch.float64)

    results = {}
    for side, fill in (("left", 123.0), ("right", -77.0)):  # pads hold garbage, different per side
        logratio = _pad(rows, T, side, fill).requires_grad_(True)
        values = _pad(vrows, T, side, fill).requires_grad_(True)
        am = _pad(arows, T, side, False)
        sm = _pad(srows, T, side, False)
        grads = {}
        for name, loss in _all_losses(logratio, values, am, sm, R).items():
            gl, gv = torch.autograd.grad(loss, (logratio, values), allow_unused=True, retain_graph=True)
            # map gradients back to the unpadded rows
            unpad = lambda G: None if G is None else torch.cat(  # noqa: E731
                [G[b, T - n:] if side == "left" else G[b, :n] for b, n in enumerate(lengths)]
            )
            grads[name] = (loss.detach(), unpad(gl), unpad(gv))
        results[side] = grads

    for name in results["left"]:
        (l1, gl1, gv1), (l2, gl2, gv2) = results["left"][name], results["right"][name]
        assert torch.isfinite(l1), name
        assert close(l1, l2, 1e-12), name
        for a, b in ((gl1, gl2), (gv1, gv2)):
            assert (a is None) == (b is None), name
            if a is not None:
                assert close(a, b, 1e-12), name


def test_rows_without_states_or_actions_are_dropped_without_nan():
    logratio, values, am, sm, R = batch()
    ref = {k: v.detach() for k, v in _all_losses(logratio, values, am, sm, R).items()}
    # add a row with no state and no action whose pads hold inf/nan garbage
    junk = torch.tensor([[float("inf"), float("-inf"), float("nan"), 1e30]], dtype=torch.float64)
    lr2 = torch.cat([logratio.detach(), junk]).requires_grad_(True)
    v2 = torch.cat([values.detach(), junk]).requires_grad_(True)
    am2 = torch.cat([am, torch.zeros(1, 4, dtype=torch.bool)])
    sm2 = torch.cat([sm, torch.zeros(1, 4, dtype=torch.bool)])
    R2 = torch.cat([R, torch.tensor([1.0], dtype=torch.float64)])
    for name, loss in _all_losses(lr2, v2, am2, sm2, R2).items():
        assert close(loss, ref[name], 1e-12), name
        for G in torch.autograd.grad(loss, (lr2, v2), allow_unused=True, retain_graph=True):
            if G is not None:
                assert torch.isfinite(G).all(), name


@pytest.mark.parametrize("name", ["value", "oreo", "response", "single_step", "k3", "kl_mean", "sft"])
def test_all_empty_batch_gives_zero_with_grad(name):
    logratio = torch.randn(2, 4, requires_grad=True)
    values = torch.randn(2, 4, requires_grad=True)
    zeros = torch.zeros(2, 4, dtype=torch.bool)
    loss = _all_losses(logratio, values, zeros, zeros, torch.ones(2))[name]
    assert loss == 0
    loss.backward()  # must not raise: the zero stays connected to the graph
    for p in (logratio, values):
        assert p.grad is None or (p.grad == 0).all()


# ----------------------------------------------------------------------------- preferences (DPO, IPO, KTO)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_sequence_logprob_sums_actions_only_and_ignores_what_is_masked():
    logp = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("-inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    torch.testing.assert_close(losses.sequence_logprob(logp, mask), torch.tensor([3.0, 10.0]))


def _dpo_inputs():
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.5], requires_grad=True)
    return pc, pr, torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])


def test_dpo_loss_value_gradient_and_diagnostics_by_hand():
    # β = 0.5: implicit rewards chosen (0.25, 0), rejected (-0.25, -0.25); h = (1.0, 0.5), βh = (0.5, 0.25)
    pc, pr, rc, rr = _dpo_inputs()
    loss, stats = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-0.25))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # ∂/∂log π(y_c) = −β σ(−βh) / B and the opposite for the rejected response
    grad = torch.tensor([-0.5 * _sigmoid(-0.5) / 2, -0.5 * _sigmoid(-0.25) / 2])
    torch.testing.assert_close(pc.grad, grad)
    torch.testing.assert_close(pr.grad, -grad)
    assert stats["chosen_reward"].item() == pytest.approx(0.125)
    assert stats["rejected_reward"].item() == pytest.approx(-0.25)
    assert stats["reward_margin"].item() == pytest.approx(0.375)
    assert stats["reward_accuracy"].item() == 1.0


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    logp = torch.tensor([-3.0, -7.5, -0.25])
    other = torch.tensor([-1.0, -9.0, -4.0])
    loss, stats = losses.dpo_loss(logp, other, logp, other, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["reward_accuracy"].item() == 0.0 and stats["reward_margin"].item() == 0.0


def test_dpo_label_smoothing_by_hand():
    pc, pr, rc, rr = _dpo_inputs()
    loss, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    expected = sum(-0.9 * math.log(_sigmoid(z)) - 0.1 * math.log(_sigmoid(-z)) for z in (0.5, 0.25)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_step_apo_loss_value_and_gradient_by_hand():
    # β = 0.5: βh = (0.5, 0.25); Q gaps (0.8 − (−0.3), 0.5 − (−0.5)) = (1.1, 1.0), α = 1: logits (−0.6, −0.75)
    pc, pr, rc, rr = _dpo_inputs()
    qc, qr = torch.tensor([0.8, 0.5]), torch.tensor([-0.3, -0.5])
    loss, stats = losses.step_apo_loss(pc, pr, rc, rr, qc, qr, beta=0.5, alpha=1.0)
    expected = (math.log(1 + math.exp(0.6)) + math.log(1 + math.exp(0.75))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # ∂/∂log π(a_w) = −β σ(−z) / B, z the logit: a larger gap keeps a larger gradient
    grad = torch.tensor([-0.5 * _sigmoid(0.6) / 2, -0.5 * _sigmoid(0.75) / 2])
    torch.testing.assert_close(pc.grad, grad)
    torch.testing.assert_close(pr.grad, -grad)
    assert stats["q_gap"].item() == pytest.approx(1.05)
    assert stats["reward_margin"].item() == pytest.approx(0.375)


def test_step_apo_without_margin_is_dpo_and_at_the_reference_is_log_sigmoid_of_the_gap():
    pc, pr, rc, rr = _dpo_inputs()
    qc, qr = torch.tensor([0.8, 0.5]), torch.tensor([-0.3, -0.5])
    apo, _ = losses.step_apo_loss(pc, pr, rc, rr, qc, qr, beta=0.5, alpha=0.0)
    dpo, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert apo.item() == pytest.approx(dpo.item(), abs=1e-7)
    at_ref, _ = losses.step_apo_loss(rc, rr, rc, rr, qc, qr, beta=0.3, alpha=2.0)
    assert at_ref.item() == pytest.approx(-(math.log(_sigmoid(-2.2)) + math.log(_sigmoid(-2.0))) / 2, abs=1e-6)


def test_ipo_loss_value_and_gradient_by_hand():
    # h = (1.0, 0.5) and 1/(2β) = 1: loss = mean((0)², (−0.5)²) = 0.125; ∂/∂log π(y_c) = 2(h − 1)/B
    pc, pr, rc, rr = _dpo_inputs()
    loss, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, ipo=True)
    assert loss.item() == pytest.approx(0.125)
    loss.backward()
    torch.testing.assert_close(pc.grad, torch.tensor([0.0, -0.5]))
    torch.testing.assert_close(pr.grad, torch.tensor([0.0, 0.5]))


def test_simpo_loss_value_gradient_and_diagnostics_by_hand():
    # β = 2, γ = 1. Chosen: log π = (−4, −6) over (2, 3) tokens → r_c = 2·(−2, −2) = (−4, −4); rejected:
    # log π = (−9, −4) over (3, 1) tokens → r_r = 2·(−3, −4) = (−6, −8). Logits r_c − r_r − γ = (1, 3):
    # loss = (log(1 + e^−1) + log(1 + e^−3)) / 2 ≈ (0.31326 + 0.04859) / 2 ≈ 0.18093
    pc = torch.tensor([-4.0, -6.0], requires_grad=True)
    pr = torch.tensor([-9.0, -4.0], requires_grad=True)
    loss, stats = losses.simpo_loss(pc, pr, torch.tensor([2, 3]), torch.tensor([3, 1]), beta=2.0, gamma=1.0)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.18093, abs=1e-5)
    loss.backward()
    # ∂/∂log π(y_c) = −σ(−z)·β/|y_c| / B: (−σ(−1)·2/2/2, −σ(−3)·(2/3)/2) = (−σ(−1)/2, −σ(−3)/3); ∂/∂log π(y_r)
    # = +σ(−z)·β/|y_r| / B: (σ(−1)/3, σ(−3)). Descent raises the chosen log-prob and lowers the rejected one.
    torch.testing.assert_close(pc.grad, torch.tensor([-_sigmoid(-1) / 2, -_sigmoid(-3) / 3]))
    torch.testing.assert_close(pr.grad, torch.tensor([_sigmoid(-1) / 3, _sigmoid(-3)]))
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert stats["chosen_reward"].item() == pytest.approx(-4.0)
    assert stats["rejected_reward"].item() == pytest.approx(-7.0)
    assert stats["reward_margin"].item() == pytest.approx(3.0)
    assert stats["reward_accuracy"].item() == 1.0


def test_simpo_loss_normalises_by_length_and_is_log_sigmoid_of_the_margin_at_equal_rewards():
    # the same average log-likelihood (−1.5 per token) over 2 and 4 tokens: equal rewards, loss −log σ(−γ)
    loss, stats = losses.simpo_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([2]),
                                    torch.tensor([4]), beta=2.5, gamma=1.25)
    assert loss.item() == pytest.approx(-math.log(_sigmoid(-1.25)), abs=1e-6)
    assert stats["reward_margin"].item() == 0.0
    zero, _ = losses.simpo_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([2]), torch.tensor([4]),
                                beta=2.5, gamma=0.0)
    assert zero.item() == pytest.approx(math.log(2), abs=1e-7)


def test_kto_reference_point_is_the_mean_log_ratio_clamped_at_zero():
    assert losses.kto_reference_point(torch.tensor([0.3, 0.6])).item() == pytest.approx(0.45)
    assert losses.kto_reference_point(torch.tensor([0.3, -0.5, 0.1])).item() == 0.0
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not losses.kto_reference_point(x).requires_grad


def test_kto_loss_value_gradient_and_diagnostics_by_hand():
    # r = (0.5, 0, −1), z_0 = 0.2, β = 1, λ_D = 1, λ_U = 2; examples 0 and 2 desirable
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -2.0, -2.0])
    desirable = torch.tensor([True, False, True])
    z = torch.tensor(0.2, requires_grad=True)
    loss, stats = losses.kto_loss(policy, ref, desirable, z, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    expected = ((1 - _sigmoid(0.3)) + 2 * (1 - _sigmoid(0.2)) + (1 - _sigmoid(-1.2))) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    dsig = [_sigmoid(x) * (1 - _sigmoid(x)) for x in (0.3, 0.2, -1.2)]
    # desirable: ∂/∂r = −λ_D β σ'(β(r − z))/B; undesirable: +λ_U β σ'(β(z − r))/B
    torch.testing.assert_close(policy.grad, torch.tensor([-dsig[0] / 3, 2 * dsig[1] / 3, -dsig[2] / 3]))
    assert z.grad is None  # the reference point is not optimised
    assert stats["desirable_reward"].item() == pytest.approx(-0.25)
    assert stats["undesirable_reward"].item() == pytest.approx(0.0)
    assert stats["reference_point"].item() == pytest.approx(0.2)
