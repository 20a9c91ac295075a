"""Tests for the Hugging Face sampler (oreo/rollout/sampler.py) with a tiny random model."""

import copy

import pytest
import torch
from torch import nn

from oreo.encode import Encoder
from oreo.models import load_policy
from oreo.rollout.sampler import HFSampler

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
PROMPTS = ["1 +2", "33 *2 -4", "7 *5 +"]  # distinct last characters: distinct greedy texts


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_policy("tiny", tiny=TINY, seed=3)
    return model.eval(), tok


def sampler(model, tok, **kw):
    return HFSampler(model, tok, Encoder(tok), **kw)


def biased(model, bias: dict[int, float]):
    """A copy of ``model`` whose output layer adds ``bias[token]`` to that token's logit."""
    m = copy.deepcopy(model)
    old = m.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for t, b in bias.items():
            head.bias[t] = b
    m.lm_head = head
    return m


def no_specials(tok, eos: float = -100.0):
    return {tok.pad_token_id: -100.0, tok.bos_token_id: -100.0, tok.eos_token_id: eos}


def test_n_completions_per_prompt_in_order(tiny):
    model, tok = tiny
    s = sampler(model, tok, batch_size=4, max_new_tokens=6)  # 3 prompts × 3 = 9 rows: chunks straddle prompts
    out = s.generate(PROMPTS, n=3, temperature=0.0)
    assert len(out) == len(PROMPTS) and all(len(c) == 3 for c in out)
    alone = [s.generate([p], n=1, temperature=0.0)[0][0] for p in PROMPTS]
    assert len({c.text for c in alone}) == 3  # the prompts give distinct greedy texts
    for completions, expected in zip(out, alone):
        assert [c.text for c in completions] == [expected.text] * 3  # left padding changes nothing


def test_seeded_sampling(tiny):
    model, tok = tiny
    s = sampler(model, tok, batch_size=8, max_new_tokens=8)
    def texts(out):
        return [[c.text for c in cs] for cs in out]
    a = texts(s.generate(PROMPTS, n=2, temperature=1.0, seed=5))
    b = texts(s.generate(PROMPTS, n=2, temperature=1.0, seed=5))
    c = texts(s.generate(PROMPTS, n=2, temperature=1.0, seed=6))
    assert a == b
    assert a != c
    assert len({t for row in a for t in row}) == 6  # the n samples of a prompt differ too


def test_sampling_leaves_global_rng_alone(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sampler(model, tok, max_new_tokens=4).generate(PROMPTS, n=2, temperature=1.0, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_greedy_equals_manual_argmax(tiny):
    model, tok = tiny
    k = 6
    s = sampler(model, tok, max_new_tokens=k)
    got = s.generate(["12 +3\n"], n=2, temperature=0.0, seed=1)[0]
    again = s.generate(["12 +3\n"], n=1, temperature=0.0, seed=2)[0]
    ids = tok("12 +3\n")["input_ids"]
    with torch.no_grad():
        for _ in range(k):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    manual = ids[-k:]
    assert tok.eos_token_id not in manual  # the random model does not stop here
    assert got[0].text == got[1].text == again[0].text == tok.decode(manual)
    assert got[0].n_tokens == k and not got[0].finished


def test_finished_flag_eos_vs_token_limit(tiny):
    model, tok = tiny
    always_eos = biased(model, {tok.eos_token_id: 100.0})
    out = sampler(always_eos, tok, max_new_tokens=5).generate(PROMPTS, n=2, temperature=1.0)
    for c in (c for cs in out for c in cs):
        assert c.finished and c.text == "" and c.n_tokens == 1

    never_eos = biased(model, no_specials(tok))
    out = sampler(never_eos, tok, max_new_tokens=5).generate(PROMPTS, n=2, temperature=1.0)
    for c in (c for cs in out for c in cs):
        assert not c.finished and c.n_tokens == 5 and len(c.text) == 5


def test_finished_mixed_in_one_batch(tiny):
    """Some rows stop early (and are padded after EOS by generate), others hit the limit."""
    model, tok = tiny
    m = biased(model, no_specials(tok, eos=2.0))
    limit = 12
    out = sampler(m, tok, batch_size=16, max_new_tokens=limit).generate(PROMPTS, n=5, temperature=1.0, seed=0)
    flat = [c for cs in out for c in cs]
    assert any(c.finished for c in flat) and not all(c.finished for c in flat)
    for c in flat:
        if c.finished:  # the EOS counts as a generated token, the text excludes it
            assert c.n_tokens == len(c.text) + 1 <= limit
        else:
            assert c.n_tokens == len(c.text) == limit
    assert any(c.finished and c.n_tokens < limit for c in flat)


def test_generate_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        sampler(model, tok, max_new_tokens=2).generate(PROMPTS[:1], temperature=0.0)
        assert model.training
    finally:
        model.eval()


def test_model_generation_defaults_do_not_leak(tiny):
    """Hub models ship generation defaults (repetition penalty, top-k, ...): the sampler must sample
    from the policy's own distribution whatever they say."""
    model, tok = tiny
    vendor = copy.deepcopy(model)
    vendor.generation_config.update(do_sample=True, repetition_penalty=5.0, top_k=1, min_new_tokens=3,
                                    no_repeat_ngram_size=1, temperature=0.3)
    for temperature in (0.0, 1.0):
        plain = sampler(model, tok, max_new_tokens=6).generate(PROMPTS, n=2, temperature=temperature, seed=4)
        other = sampler(vendor, tok, max_new_tokens=6).generate(PROMPTS, n=2, temperature=temperature, seed=4)
        assert [[c.text for c in cs] for cs in plain] == [[c.text for c in cs] for cs in other]
    assert vendor.generation_config.repetition_penalty == 5.0  # the model's own config is left alone


def test_stop_strings_end_completions_and_stay_in_the_text(tiny):
    """A completion ends at the first stop string, which stays at the end of its text; its tokens count."""
    model, tok = tiny
    newline = tok.convert_tokens_to_ids("\n")
    m = biased(model, {**no_specials(tok), newline: 3.0})  # newlines are frequent, EOS never comes
    out = sampler(m, tok, max_new_tokens=30).generate(PROMPTS, n=4, temperature=1.0, seed=2, stop=["\n"])
    flat = [c for row in out for c in row]
    stopped = [c for c in flat if c.stop == "\n"]
    assert stopped and all(c.text.endswith("\n") and c.text.count("\n") == 1 for c in stopped)
    assert all(c.n_tokens == len(c.text) and not c.finished and not c.truncated for c in stopped)
    for c in flat:
        if c.stop is None:  # no newline within the limit: cut, never an answer
            assert c.truncated and "\n" not in c.text and c.n_tokens == 30


def test_stop_string_inside_a_token_cuts_the_text_there():
    """A stop string that ends inside a multi-character token: the text ends with it, the token counts."""
    from oreo.rollout.sampler import cut_at_stop

    class Words:  # token i decodes to WORDS[i]
        WORDS = ["ab", "c.\n\nd", "ef"]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.WORDS[i] for i in ids)

    assert cut_at_stop(Words(), [0, 1, 2], [".\n"]) == ("abc.\n", 2, ".\n")
    assert cut_at_stop(Words(), [0, 1, 2], ["zz"]) == ("abc.\n\ndef", 3, None)
    assert cut_at_stop(Words(), [0, 1, 2], ["f", "b"]) == ("ab", 1, "b")  # the earliest wins


def test_a_context_is_continued_as_training_encodes_it(tiny):
    """Continuing (prompt, steps) equals continuing the prompt whose text already holds the steps."""
    from oreo.types import Context

    model, tok = tiny
    s = sampler(model, tok, max_new_tokens=6)
    a = s.generate([Context("1 +2\n", ("1+2=3\n",))], n=2, temperature=1.0, seed=4)
    b = s.generate(["1 +2\n1+2=3\n"], n=2, temperature=1.0, seed=4)  # char tokens: the same ids
    assert [c.text for c in a[0]] == [c.text for c in b[0]]
    # an agent's context: each turn ended by the end-of-turn token, the observation on its own line
    assert Encoder(tok).context_ids("1 +2\n", ["go"], ["obs"]) == (
        tok("1 +2\ngo")["input_ids"] + [tok.eos_token_id] + tok("\nobs\n", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_shared_context_is_encoded_once_with_the_same_samples(tiny, temperature):
    """share_prefix: the rows of a batch that continue the same context reuse one KV cache of it, and the samples
    (with stop strings, over chunks that straddle prompts, with Contexts of steps) equal encoding every row."""
    from oreo.types import Context

    model, tok = tiny
    prompts = [*PROMPTS, Context("5 +5\n", ("5+5=10\n",))]
    kw = dict(n=3, temperature=temperature, seed=7, stop=["\n"])
    shared, plain = (sampler(model, tok, batch_size=5, max_new_tokens=10, share_prefix=flag) for flag in (True, False))
    a, b = shared.generate(prompts, **kw), plain.generate(prompts, **kw)
    assert [[(c.text, c.finished, c.n_tokens) for c in cs] for cs in a] == \
        [[(c.text, c.finished, c.n_tokens) for c in cs] for cs in b]
    assert shared.prefill_tokens < plain.prefill_tokens
    unique = sampler(model, tok, batch_size=5, max_new_tokens=4)
    unique.generate(PROMPTS, n=1, temperature=0.0)   # no context repeats: nothing to share
    assert unique.prefill_tokens == sum(len(Encoder(tok).prompt_ids(p)) for p in PROMPTS)
