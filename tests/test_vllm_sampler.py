"""The vLLM backend's adapter (oreo/rollout/vllm_sampler.py) against a stand-in ``vllm`` module.

vLLM itself needs CUDA, which CI lacks: these tests check what oreo sends to vLLM's documented API
(``LLM``, ``SamplingParams``, ``generate``) and how it reads the outputs back, not vLLM's sampling.
"""
import sys
import types
from types import SimpleNamespace

import pytest

from oreo.encode import Encoder
from oreo.models import char_tokenizer
from oreo.types import Context


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["init"] = kw

        def generate(self, requests, params, use_tqdm=True):
            calls.setdefault("generate", []).append((requests, params))
            eos = 1
            outs = []
            for req, p in zip(requests, params):
                # three kinds of ending, one per sample index: EOS, stop string, token limit
                kinds = [
                    SimpleNamespace(text="12", token_ids=[5, 6, eos], finish_reason="stop", stop_reason=None),
                    SimpleNamespace(text="1+2=3\n", token_ids=[5] * 6, finish_reason="stop", stop_reason="\n"),
                    SimpleNamespace(text="x" * p.max_tokens, token_ids=[7] * p.max_tokens, finish_reason="length",
                                    stop_reason=None),
                ]
                outs.append(SimpleNamespace(outputs=[kinds[k % 3] for k in range(p.n)]))
            return outs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    return calls


def test_requests_carry_oreo_ids_seeds_stops_and_prefix_caching(fake_vllm):
    from oreo.rollout.vllm_sampler import VLLMSampler

    tok = char_tokenizer()
    enc = Encoder(tok)
    s = VLLMSampler("ckpt/policy", tok, enc, batch_size=6, max_new_tokens=9, dtype="bfloat16")
    assert fake_vllm["init"]["enable_prefix_caching"] is True and fake_vllm["init"]["model"] == "ckpt/policy"
    prompts = ["1 +2\n", Context("3 *4\n", ("3*4=12\n",)), "5 -1\n"]
    out = s.generate(prompts, n=3, temperature=0.7, seed=2, stop=["\n"])
    calls = fake_vllm["generate"]
    assert len(calls) == 2  # 6 sequences per call: two prompts of 3 samples, then one
    requests = [r for reqs, _ in calls for r in reqs]
    params = [p for _, ps in calls for p in ps]
    assert [r["prompt_token_ids"] for r in requests] == [
        enc.prompt_ids("1 +2\n"), enc.context_ids("3 *4\n", ["3*4=12\n"]), enc.prompt_ids("5 -1\n")]
    assert [p.seed for p in params] == [2 * 1_000_003 + i for i in range(3)]  # one seed per prompt
    assert all(p.stop == ["\n"] and p.include_stop_str_in_output and p.temperature == 0.7 and p.max_tokens == 9
               and p.n == 3 and p.top_k == -1 and p.top_p == 1.0 for p in params)
    for row in out:
        eos_done, stopped, cut = row
        assert eos_done.finished and eos_done.stop is None and eos_done.n_tokens == 3
        assert stopped.stop == "\n" and not stopped.finished and stopped.text == "1+2=3\n"
        assert cut.truncated and cut.n_tokens == 9


def test_greedy_and_limit_override(fake_vllm):
    from oreo.rollout.vllm_sampler import VLLMSampler

    tok = char_tokenizer()
    s = VLLMSampler("p", tok, Encoder(tok), max_new_tokens=9)
    s.generate(["1 +2\n"], n=1, temperature=0.0, max_new_tokens=4)
    (_, (p,)), = fake_vllm["generate"]
    assert p.temperature == 0.0 and p.max_tokens == 4 and p.stop is None


def test_missing_vllm_says_how_to_install(monkeypatch):
    from oreo.rollout.vllm_sampler import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMSampler("p", char_tokenizer(), None)
