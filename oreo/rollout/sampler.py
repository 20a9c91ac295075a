"""Samplers: turn prompts, or partial trajectories, into completions. One interface, two backends:
Hugging Face ``generate`` (here) and vLLM (``oreo.rollout.vllm_sampler``, an optional extra).

Rows that continue the same context (a prompt's n samples, the children of a search-tree node) encode it
once: its KV cache is computed for one row and copied to the others (``share_prefix``; vLLM's prefix caching
does the same), with the same samples as encoding every row.

A completion records how it ended: with EOS (``finished``), at one of the caller's stop strings
(``stop``, the string kept at the end of its text, so splitting stays lossless), or cut by the token
limit (``truncated``). A truncated completion is never a final answer with a terminal reward.
"""
from __future__ import annotations

import inspect

import torch

from oreo.models import position_ids
from oreo.types import Completion, Context


def context_ids(encoder, item) -> list[int]:
    """Token ids of a prompt or a ``Context``."""
    if isinstance(item, Context):
        return encoder.context_ids(item.prompt, item.steps, item.observations)
    return encoder.prompt_ids(item)


def cut_at_stop(tokenizer, tokens: list[int], stop: list[str]) -> tuple[str, int, str | None]:
    """``(text, n_tokens, stop string)`` of generated ``tokens`` (no EOS among them) ended at the earliest
    stop string, or ``(text, len(tokens), None)`` if none occurs. The text ends with the stop string even
    when that ends inside a token; ``n_tokens`` counts the tokens up to the one that completed it."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    hits = [(text.find(s) + len(s), s) for s in stop if s and s in text]
    if not hits:
        return text, len(tokens), None
    end, string = min(hits)
    lo, hi = 1, len(tokens)  # the shortest prefix whose text reaches ``end``
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= end:
            hi = mid
        else:
            lo = mid + 1
    return text[:end], lo, string


class HFSampler:
    """Batched, left-padded, seeded sampling with ``model.generate``.

    ``temperature == 0`` means greedy decoding. Sampling uses the full distribution (no top-k/top-p, and
    none of the decoding defaults a hub model may ship), because the offline data should come from the
    policy itself. Seeding uses a forked RNG, so the caller's random stream is untouched.
    """

    def __init__(self, model, tokenizer, encoder, *, batch_size: int = 64, max_new_tokens: int = 64,
                 share_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = encoder  # turns a prompt (text or chat) into ids exactly as training does
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.share_prefix = share_prefix
        # transformers 5 names the cache argument ``cache``, earlier versions ``past_key_values``
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.prefill_tokens = 0   # context tokens encoded (a shared context counts once)

    def _shared_prefix_cache(self, prompt_ids: list[list[int]], input_ids, attention_mask):
        """The KV cache of every row's context but its last token, computed once per distinct context and
        copied to the rows that continue it (a prompt's n samples, a node's children), or None when no
        context repeats. ``generate`` then encodes only each row's last context token."""
        firsts = {}
        for i, p in enumerate(prompt_ids):
            firsts.setdefault(tuple(p), i)
        if len(firsts) == len(prompt_ids) or input_ids.shape[1] < 2:
            return None
        rows = sorted(firsts.values())
        slot = {row: k for k, row in enumerate(rows)}
        index = torch.tensor([slot[firsts[tuple(p)]] for p in prompt_ids], device=input_ids.device)
        ids, mask = input_ids[rows, :-1], attention_mask[rows, :-1]
        name = self._cache_arg
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True)
        cache = out[name] if name in out else out.past_key_values
        cache.reorder_cache(index)   # one copy per row, in the batch's order
        self.prefill_tokens += int(mask.sum()) + len(prompt_ids)   # the shared contexts, then each row's last token
        return {name: cache}

    @torch.no_grad()
    def _generate_batch(self, prompt_ids: list[list[int]], temperature: float, seed: int, stop: list[str],
                        max_new_tokens: int) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        length = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompt_ids])
        attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompt_ids])
        device = next(self.model.parameters()).device
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
            else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        # ``generate`` fills every setting left unset from the model's own generation config, and hub
        # models ship decoding defaults (repetition penalty, top-k/top-p, min length, ...) that would
        # bend the samples away from the policy: generate under a bare config instead.
        from transformers import GenerationConfig

        bare = GenerationConfig(pad_token_id=pad, eos_token_id=eos,
                                bos_token_id=getattr(self.model.generation_config, "bos_token_id", None))
        if stop:  # transformers stops each row at a stop string (also one that ends inside a token)
            sampling.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        saved, self.model.generation_config = self.model.generation_config, bare
        # Seed a forked RNG: the samples depend on ``seed`` only, and the caller's RNG stream (e.g. a
        # training loop's) is left as it was.
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        try:
            cache = self._shared_prefix_cache(prompt_ids, input_ids, attention_mask) if self.share_prefix else None
            if cache is None:
                self.prefill_tokens += int(attention_mask.sum())
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, **(cache or {}),
                    max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **sampling)
        finally:
            self.model.generation_config = saved
        completions = []
        for row in out[:, length:].tolist():
            # A row that stopped early is padded; the pad may be the EOS token itself, but a stop string
            # is found before it, so such a row is never taken for an EOS-finished one.
            tokens = row[: row.index(eos)] if eos in row else row
            text, n_tokens, hit = cut_at_stop(self.tokenizer, tokens, stop) if stop else \
                (self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), None)
            finished = hit is None and eos in row
            completions.append(Completion(text, finished, n_tokens + int(finished), hit))
        return completions

    def generate(self, prompts: list, *, n: int = 1, temperature: float = 1.0, seed: int = 0, progress=None,
                 stop: list[str] | None = None, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """``n`` completions for each prompt (or ``Context``), in order; deterministic given ``seed``.
        ``stop``: strings that end a completion; ``max_new_tokens`` overrides the sampler's limit."""
        was_training = self.model.training
        self.model.eval()
        stop = list(stop or [])
        limit = int(max_new_tokens or self.max_new_tokens)
        ids = [context_ids(self.encoder, p) for p in prompts]
        flat = [(i, ids[i]) for i in range(len(prompts)) for _ in range(n)]
        results: list[list[Completion]] = [[] for _ in prompts]
        try:
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start:start + self.batch_size]
                outs = self._generate_batch([p for _, p in chunk], temperature, seed * 1_000_003 + start, stop,
                                            limit)
                for (i, _), c in zip(chunk, outs):
                    results[i].append(c)
                if progress is not None:
                    progress.update(len(chunk))
        finally:
            self.model.train(was_training)
        return results
