"""The likelihood verifier: its features by hand, a fit that finds the direction that separates right from wrong,
its save/load round trip, and its scores as a search scorer."""
import math

import pytest

from oreo.encode import Encoder
from oreo.models import load_policy
from oreo.search.value import step_logprobs
from oreo.search.verifier import LikelihoodVerifier, VerifierScorer, fit_on_buffer, likelihood_features
from oreo.trajectory import Trajectory
from oreo.types import Context


def test_features_by_hand():
    assert likelihood_features([-1.0, -4.0, -2.0]) == [-7.0 / 3, -4.0, -2.0, 3.0]
    assert likelihood_features([]) == [0.0, 0.0, 0.0, 0.0]


def test_fit_ranks_the_likelier_responses_first_and_round_trips(tmp_path):
    # right responses: every step likely; wrong ones: one unlikely step (a wrong sum), the same number of steps
    right = [[-0.1 - 0.01 * k, -0.2, -0.1] for k in range(20)]
    wrong = [[-0.1, -3.0 - 0.1 * k, -0.1] for k in range(20)]
    v = LikelihoodVerifier.fit(right + wrong, [True] * 20 + [False] * 20, policy="p")
    assert min(v.score(s) for s in right) > max(v.score(s) for s in wrong)
    assert all(0.0 < v.score(s) < 1.0 for s in right + wrong) and v.n_fit == 40
    v.save(tmp_path)
    again = LikelihoodVerifier.load(tmp_path)
    assert again == v and again.score(right[0]) == pytest.approx(v.score(right[0]))
    with pytest.raises(ValueError, match="right and wrong"):
        LikelihoodVerifier.fit(right, [True] * 20)


def test_scorer_reads_the_policys_step_logprobs_and_fits_on_buffer_rows():
    policy, tok = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                              seed=2)
    encoder = Encoder(tok)
    rows = [Trajectory(id=str(i), task="toy", problem_id=str(i), prompt=f"{i} +1\n",
                       steps=[f"{i}+1={i + 1 + (i % 2)}\n", f"#### {i + 1 + (i % 2)}"], reward=float(i % 2 == 0),
                       correct=i % 2 == 0) for i in range(12)]
    verifier = fit_on_buffer(policy, encoder, rows, policy_name="tiny")
    contexts = [Context(r.prompt, tuple(r.steps)) for r in rows[:3]]
    scores = VerifierScorer(policy, encoder, verifier)(contexts)
    expected = [1 / (1 + math.exp(-verifier.logit(lp))) for lp in step_logprobs(policy, encoder, contexts)]
    assert scores == pytest.approx(expected) and verifier.n_fit == 12
