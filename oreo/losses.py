"""OREO losses (spec §2, §10): pure functions, tensors in, tensors out.

Every per-position tensor is ``[B, T]`` and aligned to *prediction positions*:
for a token sequence ``x_0 … x_{L-1}`` we have ``T = L - 1`` and position ``t``
predicts token ``t + 1``.

* ``logratio``   ρ_t = log π(x_{t+1}|x_≤t) − log π_ref(x_{t+1}|x_≤t)
* ``action_mask`` m_t = 1 iff token t+1 is an action token
* ``state_mask``  σ_t = 1 iff the prefix x_≤t is a trained MDP state
* ``values``      V_t = V(x_≤t)
* ``rewards``     R_b, terminal reward per sequence, shape ``[B]`` (already scaled)

Masks may be bool or 0/1 floats and are 0 on padding. Padding may be on
either side: nothing below depends on where it is. The terminal state is
never valued (V = 0), γ = 1 and the reward is received on the last
transition. Derived quantities:

* C_t = Σ_{j≥t} m_j ρ_j (``suffix_sum``), the cumulative log-ratio;
* n(t) = min{j > t : σ_j = 1}, or the sentinel ``T`` (terminal) if none;
* per-sequence means over states/actions, then a mean over the sequences that
  have at least one such position. Empty rows are dropped, never NaN.

Inputs are masked (``torch.where``) before any arithmetic, so whatever sits on
pads or non-state positions (even inf/NaN) reaches neither the loss nor the
gradients. Losses are computed in at least float32.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "suffix_sum",
    "next_state_index",
    "at_next_state",
    "sequence_mean",
    "value_loss",
    "oreo_policy_loss",
    "response_policy_loss",
    "single_step_policy_loss",
    "k3_kl",
    "masked_kl_mean",
    "scale_reward",
    "importance_weights",
    "sft_loss",
    "sequence_logprob",
    "dpo_loss",
    "simpo_loss",
    "kto_reference_point",
    "kto_loss",
]


# ----------------------------------------------------------------------------- helpers


def _float(x: Tensor) -> Tensor:
    # Sums over thousands of positions are too coarse in bf16/fp16.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked-out entries replaced by 0.

    ``where`` rather than ``x * mask`` so that inf/NaN on pads cannot leak
    into the result (0 * inf = NaN).
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _batch_mean(per_seq: Tensor, valid: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Σ_{b valid} w_b·x_b / #valid; a grad-connected 0 when nothing is valid."""
    if weights is not None:
        per_seq = per_seq * _masked(weights.detach().to(per_seq.dtype), valid)
    total = _masked(per_seq, valid).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)


def suffix_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Masked reverse cumulative sum.

    ``x``, ``mask``: [B, T] → [B, T] with C_t = Σ_{j≥t} mask_j · x_j.
    """
    x = _masked(_float(x), mask)
    return x.flip(-1).cumsum(-1).flip(-1)


def next_state_index(state_mask: Tensor) -> Tensor:
    """Index of the next state.

    ``state_mask``: [B, T] → LongTensor [B, T] with
    n(t) = min{j > t : σ_j = 1}, or ``T`` (the terminal sentinel) if none.
    Computed as a reverse cumulative min of the state indices.
    """
    B, T = state_mask.shape
    pos = torch.arange(T, device=state_mask.device).expand(B, T)
    idx = torch.where(state_mask.bool(), pos, torch.full_like(pos, T))
    # first_at_or_after[t] = min{j ≥ t : σ_j = 1}; shifting by one gives j > t.
    first_at_or_after = idx.flip(-1).cummin(-1).values.flip(-1)
    sentinel = torch.full((B, 1), T, dtype=torch.long, device=state_mask.device)
    return torch.cat([first_at_or_after[:, 1:], sentinel], dim=-1)


def at_next_state(x: Tensor, next_idx: Tensor) -> Tensor:
    """Gather ``x`` at the next state.

    ``x``: [B, T], ``next_idx``: [B, T] in [0, T] → [B, T] with
    out_t = x[b, n(t)], and 0 where n(t) = T (the terminal sentinel).
    """
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=-1)
    return padded.gather(-1, next_idx)


def sequence_mean(x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sequence masked mean.

    ``x``, ``mask``: [B, T] → (mean [B], valid [B] bool) with
    mean_b = Σ_t mask_t x_t / Σ_t mask_t and valid_b = (Σ_t mask_t > 0).
    Rows with an empty mask get mean 0 (not NaN) and valid False.
    """
    x = _float(x)
    count = mask.to(x.dtype).sum(-1)
    valid = count > 0
    return _masked(x, mask).sum(-1) / count.clamp(min=1), valid


# ----------------------------------------------------------------------------- critic


def value_loss(
    values: Tensor,
    logratio: Tensor,
    action_mask: Tensor,
    state_mask: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    clip_logratio: Optional[float] = None,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """Critic loss (paper Eq. 8, spec §2.1).

    ``values``, ``logratio``, masks: [B, T]; ``rewards``, ``weights``: [B] → scalar

        L_V = mean_{b valid} w_b · mean_{t∈S_b} ( V_t + β·clip_c(sg[C_t]) − R_b )²

    with C = suffix_sum(logratio, action_mask), clip_c = clamp(−c, c) of the
    cumulative log-ratio when ``clip_logratio`` = c is given, and
    S_b = {t : σ_t = 1}. Gradient flows only through ``values``. Sequences
    without a state are excluded.
    """
    C = suffix_sum(logratio.detach(), action_mask)
    if clip_logratio is not None:
        C = C.clamp(-clip_logratio, clip_logratio)
    values = _masked(_float(values), state_mask)
    resid = values + beta * C - _float(rewards).unsqueeze(-1)
    per_seq, valid = sequence_mean(resid.square(), state_mask)
    return _batch_mean(per_seq, valid, weights)


# ----------------------------------------------------------------------------- actor


def oreo_policy_loss(
    logratio: Tensor,
    values: Tensor,
    action_mask: Tensor,
    state_mask: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """OREO policy loss in next-state form (paper Eq. 9, spec §2.2 a).

    ``logratio``, ``values``, masks: [B, T]; ``rewards``, ``weights``: [B] → scalar

        L_π = mean_{b valid} w_b · mean_{t∈S_b} ( sg[V_t] − R_b + β·ρ̃_t )²
        ρ̃_t = (C_t − C_{n(t)}) + sg[C_{n(t)}],   C_T := 0

    The forward value of ρ̃_t is C_t; the gradient flows only through the
    log-ratio of the action(s) between state t and the next state,
    Σ_{t≤j<n(t)} m_j ρ_j. With a token-level state mask this is
    ρ_t + sg[C_{t+1}] (Eq. 9); with a step-level mask it is the step-level
    loss; observation tokens between agent turns (m = 0) are skipped.
    """
    C = suffix_sum(logratio, action_mask)
    own = C - at_next_state(C, next_state_index(state_mask))
    # Forward value exactly sg[C_t]; gradient only through the own action(s).
    rho_tilde = C.detach() + (own - own.detach())
    V = _masked(_float(values).detach(), state_mask)
    resid = V - _float(rewards).unsqueeze(-1) + beta * rho_tilde
    per_seq, valid = sequence_mean(resid.square(), state_mask)
    return _batch_mean(per_seq, valid, weights)


def _first_state(state_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """t0_b = min{t : σ_t = 1} clamped into range [B], and whether it exists [B]."""
    B, T = state_mask.shape
    pos = torch.arange(T, device=state_mask.device).expand(B, T)
    first = torch.where(state_mask.bool(), pos, torch.full_like(pos, T)).min(-1).values
    return first.clamp(max=T - 1), first < T


def response_policy_loss(
    logratio: Tensor,
    values: Tensor,
    action_mask: Tensor,
    state_mask: Tensor,
    rewards: Tensor,
    *,
    beta: float,
) -> Tensor:
    """Response-level OREO (paper Eq. 10, spec §2.2 d).

    ``logratio``, ``values``, masks: [B, T]; ``rewards``: [B] → scalar

        L_π = mean_{b valid} ( β·C_{t0_b} + sg[V_{t0_b}] − R_b )²,   t0_b = min S_b

    Full gradient through C_{t0} (the whole-trajectory log-ratio). Sequences
    without a state are excluded.
    """
    t0, valid = _first_state(state_mask)
    C0 = suffix_sum(logratio, action_mask).gather(-1, t0[:, None]).squeeze(-1)
    V0 = _masked(_float(values).detach(), state_mask).gather(-1, t0[:, None]).squeeze(-1)
    resid = beta * C0 + V0 - _float(rewards)
    return _batch_mean(resid.square(), valid)


def single_step_policy_loss(
    logratio: Tensor,
    values: Tensor,
    action_mask: Tensor,
    state_mask: Tensor,
    rewards: Tensor,
    *,
    beta: float,
) -> Tensor:
    """One-step soft Bellman residual in next-state form (spec §2.2 c).

    ``logratio``, ``values``, masks: [B, T]; ``rewards``: [B] → scalar

        L_π = mean_{b valid} mean_{t∈S_b} ( sg[V_t] − r_t − sg[V_{n(t)}] + β·(C_t − C_{n(t)}) )²

    with r_t = R_b where n(t) = T (the last state of b) and 0 otherwise, and
    V_T := 0. Gradient flows through C_t − C_{n(t)} only. Any padding side.
    """
    n = next_state_index(state_mask)
    C = suffix_sum(logratio, action_mask)
    V = _masked(_float(values).detach(), state_mask)
    V_next = at_next_state(V, n)
    terminal = n == state_mask.shape[-1]
    r = torch.where(terminal, _float(rewards).unsqueeze(-1), torch.zeros_like(V))
    resid = V - r - V_next + beta * (C - at_next_state(C, n))
    per_seq, valid = sequence_mean(resid.square(), state_mask)
    return _batch_mean(per_seq, valid)


# ----------------------------------------------------------------------------- KL and misc


def masked_kl_mean(kl: Tensor, action_mask: Tensor) -> Tensor:
    """Reduce a per-position KL to a scalar (spec §2.3).

    ``kl``, ``action_mask``: [B, T] → scalar
    KL_est = mean_{b valid} Σ_t m_t k_t / Σ_t m_t; rows without actions dropped.
    """
    per_seq, valid = sequence_mean(kl, action_mask)
    return _batch_mean(per_seq, valid)


def k3_kl(logratio: Tensor, action_mask: Tensor) -> Tensor:
    """Schulman's k3 on the data tokens (spec §2.3 default).

    ``logratio``, ``action_mask``: [B, T] → scalar
    k_t = exp(−ρ_t) + ρ_t − 1, reduced by ``masked_kl_mean``.
    """
    rho = _masked(_float(logratio), action_mask)  # pads → ρ=0 → k=0, no inf
    return masked_kl_mean(torch.expm1(-rho) + rho, action_mask)


def scale_reward(reward: Union[Tensor, float], *, mul: float = 1.0, add: float = 0.0):
    """R = reward · mul + add. The one place rewards are scaled, for every task."""
    return reward * mul + add


def importance_weights(
    logratio: Tensor, action_mask: Tensor, *, log_clip: Optional[float] = 1.0
) -> Tensor:
    """Per-trajectory importance weight (spec §2.4), detached.

    ``logratio``, ``action_mask``: [B, T] → [B]
    w_b = exp(min(Σ_t m_t ρ_t, log_clip)); no clipping if ``log_clip`` is None.
    """
    log_w = _masked(_float(logratio).detach(), action_mask).sum(-1)
    if log_clip is not None:
        log_w = log_w.clamp(max=log_clip)
    return log_w.exp()


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Token-mean negative log-likelihood over the batch.

    ``logprobs``, ``mask``: [B, T] → scalar  −Σ_{b,t} mask·logprobs / Σ_{b,t} mask;
    a grad-connected 0 when the mask is empty.
    """
    logprobs = _float(logprobs)
    total = _masked(logprobs, mask).sum()
    return -total / mask.to(logprobs.dtype).sum().clamp(min=1)


# ----------------------------------------------------------------------------- preferences (DPO, IPO, SimPO, KTO)


def sequence_logprob(logprobs: Tensor, action_mask: Tensor) -> Tensor:
    """Log-probability of a sequence's actions.

    ``logprobs``, ``action_mask``: [B, T] → [B] with  Σ_t m_t·logprobs_t  (observations and the prompt
    have m = 0, so an agent episode's log-probability counts its own turns only).
    """
    return _masked(_float(logprobs), action_mask).sum(-1)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
) -> Tuple[Tensor, dict]:
    """DPO (Rafailov et al. 2023), conservative DPO with label smoothing, or IPO (Azar et al. 2023).

    Sequence log-probabilities [B] each → (scalar loss, diagnostics). With the implicit rewards
    r_c = β(log π(y_c) − log π_ref(y_c)), r_r likewise, and h = (r_c − r_r)/β:

        DPO:  mean_b  −(1−ε)·log σ(β h) − ε·log σ(−β h)        (ε = ``label_smoothing``)
        IPO:  mean_b  (h − 1/(2β))²                            (sums of log-probs, as in the paper)

    When the policy equals the reference h = 0 and the DPO loss is log 2. Diagnostics (detached):
    ``chosen_reward`` and ``rejected_reward`` (means of r_c, r_r), ``reward_margin`` (mean r_c − r_r)
    and ``reward_accuracy`` (share of pairs with r_c > r_r).
    """
    chosen = beta * (_float(policy_chosen) - _float(ref_chosen))
    rejected = beta * (_float(policy_rejected) - _float(ref_rejected))
    h = (chosen - rejected) / beta
    if ipo:
        loss = (h - 1 / (2 * beta)).square().mean()
    else:
        loss = (-(1 - label_smoothing) * torch.nn.functional.logsigmoid(beta * h)
                - label_smoothing * torch.nn.functional.logsigmoid(-beta * h)).mean()
    return loss, _pair_stats(chosen, rejected)


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    length_chosen: Tensor,
    length_rejected: Tensor,
    *,
    beta: float,
    gamma: float,
) -> Tuple[Tensor, dict]:
    """SimPO (Meng, Xia and Chen 2024): reference-free, length-normalised preference optimisation.

    Sequence log-probabilities [B] each (``sequence_logprob``) and the responses' lengths in action
    tokens [B] each (clamped to at least 1) → (scalar loss, diagnostics). With the implicit rewards
    r_c = β·log π(y_c)/|y_c| and r_r = β·log π(y_r)/|y_r|:

        mean_b  −log σ(r_c − r_r − γ)                          (γ: the target reward margin)

    Equal average log-likelihoods give −log σ(−γ), log 2 for γ = 0. Diagnostics as ``dpo_loss``'s.
    """
    chosen = beta * _float(policy_chosen) / _float(length_chosen).clamp(min=1)
    rejected = beta * _float(policy_rejected) / _float(length_rejected).clamp(min=1)
    loss = -torch.nn.functional.logsigmoid(chosen - rejected - gamma).mean()
    return loss, _pair_stats(chosen, rejected)


def _pair_stats(chosen: Tensor, rejected: Tensor) -> dict:
    """The implicit rewards' diagnostics of a preference loss (detached means)."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {"chosen_reward": chosen.mean(), "rejected_reward": rejected.mean(),
            "reward_margin": (chosen - rejected).mean(), "reward_accuracy": (chosen > rejected).float().mean()}


def step_apo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    q_chosen: Tensor,
    q_rejected: Tensor,
    *,
    beta: float = 0.3,
    alpha: float = 1.0,
) -> Tuple[Tensor, dict]:
    """CPL's Step-APO (spec §2.4): step-level DPO with the MCTS advantage gap as a margin.

    Log-probs of one step summed over its tokens [B] each, for the chosen and the rejected sibling step
    under the policy and the frozen reference, and the siblings' MCTS Q-values [B] each → (scalar loss,
    diagnostics). With h = [log π(a_w) − log π_ref(a_w)] − [log π(a_l) − log π_ref(a_l)]:

        mean_b  −log σ( β·h − α·(Q_w − Q_l) )

    A pair with a larger advantage gap keeps a gradient longer; ``alpha`` = 0 is step-level DPO. At the
    reference (h = 0) the loss is −log σ(−α ΔQ), log 2 for ``alpha`` = 0. Diagnostics as ``dpo_loss``'s,
    plus ``q_gap`` (mean Q_w − Q_l).
    """
    gap = _float(q_chosen) - _float(q_rejected)
    chosen = beta * (_float(policy_chosen) - _float(ref_chosen))
    rejected = beta * (_float(policy_rejected) - _float(ref_rejected))
    loss = -torch.nn.functional.logsigmoid(chosen - rejected - alpha * gap).mean()
    return loss, {**_pair_stats(chosen, rejected), "q_gap": gap.detach().mean()}


def kto_reference_point(logratios: Tensor) -> Tensor:
    """KTO's reference point z_0, an estimate of KL(π‖π_ref) (Ethayarajh et al. 2024, §4.1).

    ``logratios``: [N] sequence log-ratios log π(y'|x) − log π_ref(y'|x) of *mismatched* pairs (a prompt
    with another example's response) → scalar  max(0, mean_n logratios_n), detached: it shifts the
    value function without being optimised.
    """
    return _float(logratios).detach().mean().clamp(min=0)


def kto_loss(
    policy_logprob: Tensor,
    ref_logprob: Tensor,
    desirable: Tensor,
    reference_point: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tuple[Tensor, dict]:
    """KTO (Ethayarajh et al. 2024) on unpaired examples.

    ``policy_logprob``, ``ref_logprob``: [B] sequence log-probabilities; ``desirable``: [B] bool;
    ``reference_point``: scalar z_0 (``kto_reference_point``). With r = log π − log π_ref:

        loss = mean_b  λ_D·(1 − σ(β(r_b − z_0)))  if b is desirable,
                       λ_U·(1 − σ(β(z_0 − r_b)))  otherwise.

    Diagnostics (detached): mean β·r over the desirable and the undesirable examples of the batch
    (0 when there are none) and ``reference_point``.
    """
    r = _float(policy_logprob) - _float(ref_logprob)
    z = _float(reference_point).detach()
    d = desirable.bool()
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - r)))
    loss = torch.where(d, good, bad).mean()
    reward = beta * r.detach()
    return loss, {"desirable_reward": _masked(reward, d).sum() / d.sum().clamp(min=1),
                  "undesirable_reward": _masked(reward, ~d).sum() / (~d).sum().clamp(min=1),
                  "reference_point": z}


def process_value_loss(values: Tensor, targets: Tensor) -> Tensor:
    """MSE of a process value model against per-step targets (ReST-MCTS*'s PRM loss, spec §1.4).

    ``values``: [B, L] V(x_≤t) at every position; ``targets``: [B, L] the step's target at the position of
    each step's last token, NaN where there is none. Returns the mean of (V − v)² over the targets (a
    scalar; 0 with a gradient if there are none)."""
    has = ~torch.isnan(targets)
    if not bool(has.any()):
        return values.sum() * 0.0
    diff = _float(values)[has] - targets[has].float()
    return (diff * diff).mean()

