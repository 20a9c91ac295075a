"""Samplers: turn prompts into completions. One interface; Hugging Face ``generate`` is the backend here.

A completion records whether it *finished* (ended with EOS or a stop string) or was cut by the token
limit: a cut completion is never treated as a final answer with a terminal reward by itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Completion:
    text: str
    finished: bool
    n_tokens: int


class HFSampler:
    """Batched, left-padded, seeded sampling with ``model.generate``.

    ``temperature == 0`` means greedy decoding. Sampling uses the full distribution (no top-k/top-p, and
    none of the decoding defaults a hub model may ship), because the offline data should come from the
    policy itself. Seeding uses a forked RNG, so the caller's random stream is untouched.
    """

    def __init__(self, model, tokenizer, encoder, *, batch_size: int = 64, max_new_tokens: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = encoder  # turns a prompt (text or chat) into ids exactly as training does
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def _generate_batch(self, prompt_ids: list[list[int]], temperature: float, seed: int) -> list[Completion]:
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
        saved, self.model.generation_config = self.model.generation_config, bare
        # Seed a forked RNG: the samples depend on ``seed`` only, and the caller's RNG stream (e.g. a
        # training loop's) is left as it was.
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    max_new_tokens=self.max_new_tokens, pad_token_id=pad, eos_token_id=eos, **sampling)
        finally:
            self.model.generation_config = saved
        completions = []
        for row in out[:, length:].tolist():
            finished = eos in row
            tokens = row[: row.index(eos)] if finished else row
            completions.append(Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), finished,
                                          len(tokens) + int(finished)))
        return completions

    def generate(self, prompts: list, *, n: int = 1, temperature: float = 1.0, seed: int = 0,
                 progress=None) -> list[list[Completion]]:
        """``n`` completions for each prompt, in prompt order; deterministic given ``seed``."""
        was_training = self.model.training
        self.model.eval()
        ids = [self.encoder.prompt_ids(p) for p in prompts]
        flat = [(i, ids[i]) for i in range(len(prompts)) for _ in range(n)]
        results: list[list[Completion]] = [[] for _ in prompts]
        try:
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start:start + self.batch_size]
                outs = self._generate_batch([p for _, p in chunk], temperature, seed * 1_000_003 + start)
                for (i, _), c in zip(chunk, outs):
                    results[i].append(c)
                if progress is not None:
                    progress.update(len(chunk))
        finally:
            self.model.train(was_training)
        return results
