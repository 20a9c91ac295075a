"""Test-time search (oreo/search): the selection rules, every strategy on hand-built candidates whose
values are known, the beam's bookkeeping, value reading, and resumable evaluation."""
import json

import pytest
import torch

from oreo.encode import Encoder
from oreo.evaluate import evaluate_search
from oreo.models import ValueModel, load_policy
from oreo.search.strategies import (
    Choice,
    SearchConfig,
    Searcher,
    best_of_k_actions,
    best_value_index,
    majority_index,
    weighted_vote_index,
)
from oreo.search.value import ValueScorer
from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from oreo.types import Completion, Context

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_selection_rules_by_hand():
    assert majority_index(["3", None, "5", "5", "3"]) == 0  # tie 2-2: the earliest
    assert majority_index(["3", "5", "5"]) == 1
    assert majority_index([None, None]) is None
    assert best_value_index([0.9, 0.5, 0.7], [False, True, True]) == 2  # the ineligible 0.9 never wins
    assert best_value_index([0.1], [False]) is None
    # answer "a": 0.2 + 0.2 + 0.2 = 0.6 beats "b": 0.5; of "a", the highest-valued sample
    assert weighted_vote_index(["a", "b", "a", "a", None], [0.2, 0.5, 0.1, 0.3, 9.0]) == 3
    assert weighted_vote_index(["a", "b", "a"], [0.1, 0.5, 0.1]) == 1


class Task:
    """Answers are the text after "#### "; steps end with a newline."""
    name = "toy"
    step_stops = ["\n"]

    def grade(self, problem, text):
        answer = text.rsplit("#### ", 1)[1] if "#### " in text else None
        return answer, answer == problem.answer

    def split_steps(self, text):
        return [line for line in text.splitlines(keepends=True)]


class Problem:
    def __init__(self, pid, answer):
        self.id, self.prompt, self.answer = pid, f"q{pid}\n", answer


class Scripted:
    """A sampler whose completions of a context are scripted by the context's steps."""
    max_new_tokens = 100
    batch_size = 64

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None, stop=None, max_new_tokens=None):
        self.calls.append(dict(prompts=list(prompts), n=n, temperature=temperature, stop=stop))
        out = []
        for p in prompts:
            steps = p.steps if isinstance(p, Context) else ()
            row = self.script["greedy" if temperature == 0 else "".join(steps)]
            out.append([row[k % len(row)] for k in range(n)])
        return out


def scorer_from(values: dict):
    """V of a context is ``values[its response text]`` (0 if absent); records every call."""
    calls = []

    def score(contexts):
        calls.append(len(contexts))
        return [values.get("".join(c.steps), 0.0) for c in contexts]

    score.calls = calls
    return score


def done(text, tokens=3):
    return Completion(text, True, tokens)


def step(text):
    return Completion(text, False, len(text), "\n")


def cut(text):
    return Completion(text, False, 100)


SAMPLES = {"greedy": [done("#### 1")],
           "": [done("#### 2"), done("#### 2"), done("#### 3"), cut("#### 9"), done("#### 2"), done("#### 4")]}
VALUES = {"#### 1": 0.5, "#### 2": 0.1, "#### 3": 0.35, "#### 4": 0.8, "#### 9": 5.0}


@pytest.mark.parametrize("strategy, picked, value", [
    ("greedy", "#### 1", 0.5),
    ("majority", "#### 2", 0.1),          # three votes
    ("best_of_n", "#### 4", 0.8),         # the cut "#### 9" has the highest value but is no answer
    ("weighted_vote", "#### 4", 0.8),     # 0.8 > 0.1·3 > 0.35
])
def test_each_sampling_strategy_picks_the_known_candidate(strategy, picked, value):
    searcher = Searcher(SearchConfig(strategy=strategy, n=6), Task(), Scripted(SAMPLES), scorer_from(VALUES))
    (choice,) = searcher.solve([Problem(0, "4")])
    assert (choice.response, choice.value) == (picked, value)
    n = 1 if strategy == "greedy" else 6
    assert choice.samples == n and choice.tokens == (3 if n == 1 else 5 * 3 + 100)


def test_weighted_vote_differs_from_majority_when_values_disagree():
    samples = {"": [done("#### 2"), done("#### 2"), done("#### 3")]}
    values = {"#### 2": 0.2, "#### 3": 0.9}
    pick = {s: Searcher(SearchConfig(strategy=s, n=3), Task(), Scripted(samples), scorer_from(values))
            .solve([Problem(0, "3")])[0].response for s in ("majority", "weighted_vote", "best_of_n")}
    assert pick == {"majority": "#### 2", "weighted_vote": "#### 3", "best_of_n": "#### 3"}


# A tree: from the root, steps a/b/c; a→ a1 (finished, wrong) / a2; b→ finished right answer; c→ cut.
TREE = {
    "": [step("a\n"), step("b\n"), step("c\n")],
    "a\n": [done("#### 7"), step("x\n"), step("y\n")],
    "b\n": [done("#### 5"), step("z\n"), cut("long")],
    "c\n": [cut("never"), step("w\n"), step("v\n")],
    "a\nx\n": [done("#### 6")], "a\ny\n": [done("#### 6")], "b\nz\n": [done("#### 6")],
    "c\nw\n": [done("#### 6")], "c\nv\n": [done("#### 6")],
}
TREE_VALUES = {"a\n": 0.9, "b\n": 0.5, "c\n": 0.1, "a\n#### 7": 0.3, "b\n#### 5": 0.95, "c\nlong": 9.0,
               "b\nlong": 9.0, "a\nx\n": 0.6, "a\ny\n": 0.2, "b\nz\n": 0.4, "a\nx\n#### 6": 0.1}


def test_beam_keeps_exactly_b_states_and_answers_with_the_best_finished():
    sampler, scorer = Scripted(TREE), scorer_from(TREE_VALUES)
    searcher = Searcher(SearchConfig(strategy="beam", width=3, max_steps=5), Task(), sampler, scorer)
    (choice,) = searcher.solve([Problem(0, "5")])
    assert choice.response == "b\n#### 5" and choice.value == 0.95  # not the cut "b\nlong" (9.0)
    beams = [[c.steps for c in call["prompts"]] for call in sampler.calls]
    assert beams[0] == [()]
    assert beams[1] == [("a\n",), ("b\n",), ("c\n",)]
    # step 2: #### 7 and #### 5 go to the pool; of the unfinished x 0.6, z 0.4, y 0.2, w 0, v 0 the best 3 stay
    assert beams[2] == [("a\n", "x\n"), ("b\n", "z\n"), ("a\n", "y\n")]
    assert len(beams) == 3  # step 3 finishes every state: the beam is empty
    assert all(call["n"] == 3 and call["stop"] == ["\n"] for call in sampler.calls)
    assert choice.samples == 1 * 3 + 3 * 3 + 3 * 3  # every generated completion counts


def test_beam_never_answers_with_a_cut_candidate_and_may_answer_nothing():
    tree = {"": [step("a\n"), cut("zzz")], "a\n": [cut("more")]}
    values = {"zzz": 9.0, "a\nmore": 9.0, "a\n": 0.5}
    (choice,) = Searcher(SearchConfig(strategy="beam", width=2), Task(), Scripted(tree), scorer_from(values)) \
        .solve([Problem(0, "1")])
    assert choice == Choice(None, None, 2 + 100 + 100 + 100, 4)


def test_beam_drops_a_candidate_over_the_whole_response_limit():
    tree = {"": [step("aaaa\n")], "aaaa\n": [done("#### 1", tokens=3)]}
    sampler = Scripted(tree)
    sampler.max_new_tokens = 7  # 5 + 3 > 7: the finished answer came too late
    (choice,) = Searcher(SearchConfig(strategy="beam", width=1), Task(), sampler, scorer_from({})) \
        .solve([Problem(0, "1")])
    assert choice.response is None


def test_beam_generates_and_scores_every_problem_of_a_step_in_one_call():
    sampler, scorer = Scripted(TREE), scorer_from(TREE_VALUES)
    Searcher(SearchConfig(strategy="beam", width=2), Task(), sampler, scorer).solve([Problem(i, "5") for i in range(3)])
    assert [len(c["prompts"]) for c in sampler.calls] == [3, 6, 6]
    # the distinct uncut candidates of all three problems at once: a, b; #### 7, x, #### 5, z; #### 6 twice
    assert scorer.calls == [3 * 2, 3 * 4, 3 * 2]


def test_value_strategies_need_a_value_model():
    with pytest.raises(ValueError, match="needs a value model"):
        Searcher(SearchConfig(strategy="beam"), Task(), Scripted(TREE), None)
    with pytest.raises(ValueError, match="needs a value model"):
        Searcher(SearchConfig(strategy="mcts"), Task(), Scripted(TREE), None)
    with pytest.raises(ValueError, match="strategy: must be one of greedy, .*got 'dfs'"):
        SearchConfig(strategy="dfs")


def test_the_tag_tells_settings_apart():
    assert SearchConfig().tag == "greedy" and SearchConfig(strategy="beam", width=5).tag == "beam-w5"
    assert SearchConfig(strategy="best_of_n", n=5, temperature=0.3).tag == "best_of_n-n5-t0.3"


def test_best_of_k_actions_executes_the_highest_valued_action():
    contexts = [Context("task\n", ("go\n",), ("you see a key\n",))]
    script = {"go\n": [step("open\n"), step("take key\n"), cut("tak")], "greedy": [step("open\n")]}
    values = {"go\nopen\n": 0.2, "go\ntake key\n": 0.7, "go\ntak": 3.0}
    (choice,) = best_of_k_actions(Scripted(script), scorer_from(values), contexts, k=3)
    assert choice.response == "take key\n" and choice.value == 0.7 and choice.samples == 3
    (greedy,) = best_of_k_actions(Scripted(script), None, contexts, k=1)
    assert greedy.response == "open\n"


def test_value_scorer_reads_v_at_the_last_token_of_each_context():
    torch.manual_seed(0)
    policy, tok = load_policy("tiny", tiny=TINY, seed=1)
    value = ValueModel.from_policy(policy)
    torch.nn.init.normal_(value.head.weight)
    enc = Encoder(tok)
    contexts = [Context("12 +3\n", ("12+3=15\n",)), Context("4 *2\n", ()), Context("7 -1\n", ("7-1=6\n", "#### 6"))]
    got = ValueScorer(value, enc, batch_size=2)(contexts)  # mixed lengths, padded
    for ctx, v in zip(contexts, got):
        ids = torch.tensor([enc.context_ids(ctx.prompt, ctx.steps)])
        alone = value(ids, torch.ones_like(ids))[0, -1].item()
        assert v == pytest.approx(alone, abs=1e-5)


class Flaky:
    """Wraps a searcher; raises on its ``fail_at``-th block."""

    def __init__(self, searcher, fail_at=None):
        self.searcher, self.cfg, self.fail_at, self.blocks = searcher, searcher.cfg, fail_at, 0

    def solve(self, problems, seed=0):
        self.blocks += 1
        if self.blocks == self.fail_at:
            raise KeyboardInterrupt
        return self.searcher.solve(problems, seed)


def test_search_evaluation_resumes_by_block_with_the_same_rows(tmp_path):
    task = ArithmeticTask(ArithmeticConfig(n_train=4, n_test=10, n_heldout=2))
    problems = task.problems("test")
    policy, tok = load_policy("tiny", tiny=TINY, seed=1)
    from oreo.rollout.sampler import HFSampler

    sampler = HFSampler(policy, tok, Encoder(tok), batch_size=64, max_new_tokens=12)
    scorer = ValueScorer(ValueModel.from_policy(policy), Encoder(tok))
    cfg = SearchConfig(strategy="beam", width=2, max_steps=3, step_max_tokens=6, problems_per_batch=3)
    fp = {"run": 1}
    whole = evaluate_search(task, problems, Searcher(cfg, task, sampler, scorer), out_path=tmp_path / "a/test.jsonl",
                            fingerprint=fp)
    flaky = Flaky(Searcher(cfg, task, sampler, scorer), fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate_search(task, problems, flaky, out_path=tmp_path / "b/test.jsonl", fingerprint=fp)
    assert len((tmp_path / "b/test.partial.jsonl").read_text().splitlines()) == 2
    again = Flaky(Searcher(cfg, task, sampler, scorer))
    resumed = evaluate_search(task, problems, again, out_path=tmp_path / "b/test.jsonl", fingerprint=fp)
    assert again.blocks == 2  # blocks 2 and 3 of 4
    rows = [json.loads(x) for x in (tmp_path / "a/test.jsonl").read_text().splitlines()]
    assert rows == [json.loads(x) for x in (tmp_path / "b/test.jsonl").read_text().splitlines()]
    assert not list((tmp_path / "b").glob("*.partial*"))
    keys = ("accuracy", "mean_tokens", "n")
    assert {k: whole[k] for k in keys} == {k: resumed[k] for k in keys}
    assert whole["n"] == 10 and whole["mean_tokens"] > 0
    assert set(rows[0]) == {"problem_id", "prompt", "response", "answer", "gold", "correct", "value", "tokens",
                            "samples"}


def test_step_logprobs_sum_each_steps_token_logprobs():
    import torch

    from oreo.encode import Encoder
    from oreo.models import tiny_causal_lm, tiny_tokenizer
    from oreo.search.value import step_logprobs

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    encoder = Encoder.unbounded(tok)
    contexts = [Context("1 +2\n", ("1+2=3\n", "#### 3")), Context("4 -1 *2\n", ("4-1=3\n",)), Context("7\n", ())]
    got = step_logprobs(model, encoder, contexts, batch_size=2)
    for ctx, per_step in zip(contexts, got):
        ids = encoder.prompt_ids(ctx.prompt)
        expected = []
        for step in ctx.steps:
            for t in encoder._ids(step):   # each token scored alone, by a full forward of its prefix
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0, -1]
                expected.append((len(expected), float(torch.log_softmax(logits, -1)[t])))
                ids = ids + [t]
        lengths = [len(encoder._ids(s)) for s in ctx.steps]
        sums, pos = [], 0
        for n in lengths:
            sums.append(sum(v for _, v in expected[pos:pos + n]))
            pos += n
        assert per_step == pytest.approx(sums, abs=1e-4)
    assert got[2] == []


def test_step_likelihood_scorer_is_exp_of_the_mean_step_logprob():
    import math

    from oreo.search.value import StepLikelihoodScorer, step_logprobs

    policy, tok = load_policy("tiny", tiny=TINY, seed=1)
    contexts = [Context("1 +2\n", ("1+2=3\n", "#### 3")), Context("5\n", ())]
    per_step = step_logprobs(policy, Encoder(tok), contexts)
    values = StepLikelihoodScorer(policy, Encoder(tok))(contexts)
    assert values[0] == pytest.approx(math.exp(sum(per_step[0]) / 2)) and 0 < values[0] < 1 and values[1] == 1.0


def test_step_prior_is_the_mean_token_logprob_of_the_last_step():
    from oreo.search.value import StepPrior, step_logprobs

    policy, tok = load_policy("tiny", tiny=TINY, seed=1)
    contexts = [Context("1 +2\n", ("Plan +2\n",)), Context("1 +2\n", ("Plan +2\n", "1+2=3 #### 3"))]
    per_step = step_logprobs(policy, Encoder(tok), contexts)
    priors = StepPrior(policy, Encoder(tok))(contexts)
    assert priors == pytest.approx([per_step[0][-1] / len("Plan +2\n"), per_step[1][-1] / len("1+2=3 #### 3")])
