"""The vLLM sampler backend (optional: ``pip install -e .[vllm]``, CUDA only): the ``HFSampler``
interface on a vLLM engine, with prefix caching on, so the samples of one prompt, and the beams of a
search that share a prefix, reuse its KV cache.

Prompts are sent as token ids made by oreo's own ``Encoder`` (``Context`` included), so vLLM continues
exactly the ids training sees. Stop strings stay in the text (``include_stop_str_in_output``), as with
the Hugging Face backend. Each prompt gets its own seed, ``seed * 1_000_003 + index``, so a prompt's
samples do not depend on what else is in the batch.
"""
from __future__ import annotations

import gc

from oreo.rollout.sampler import context_ids
from oreo.types import Completion


def vllm_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


class VLLMSampler:
    """vLLM generation from the Hugging Face folder ``model_path`` (a checkpoint oreo wrote)."""

    def __init__(self, model_path: str, tokenizer, encoder, *, batch_size: int = 1024, max_new_tokens: int = 64,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5, seed: int = 0, **engine_kwargs):
        try:
            import vllm
        except ImportError:
            raise ImportError("sampler.backend=vllm needs vLLM: pip install -e '.[vllm]' (CUDA machines), "
                              "or use sampler.backend=hf") from None
        self.tokenizer, self.encoder = tokenizer, encoder
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                            enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                            **engine_kwargs)

    def generate(self, prompts: list, *, n: int = 1, temperature: float = 1.0, seed: int = 0, progress=None,
                 stop: list[str] | None = None, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """As ``HFSampler.generate``: ``n`` completions per prompt or ``Context``, in order."""
        limit = int(max_new_tokens or self.max_new_tokens)
        eos = self.tokenizer.eos_token_id
        results: list[list[Completion]] = []
        step = max(1, self.batch_size // max(1, n))  # prompts per engine call: about batch_size sequences
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            requests = [{"prompt_token_ids": context_ids(self.encoder, p)} for p in chunk]
            params = [self._vllm.SamplingParams(
                n=n, temperature=max(0.0, float(temperature)), top_p=1.0, top_k=-1, max_tokens=limit,
                stop=list(stop or []) or None, include_stop_str_in_output=True, skip_special_tokens=True,
                seed=seed * 1_000_003 + start + i) for i in range(len(chunk))]
            for output in self.llm.generate(requests, params, use_tqdm=False):
                results.append([completion_from_vllm(o, eos) for o in output.outputs])
                if progress is not None:
                    progress.update(n)
        return results

    def close(self) -> None:
        """Free the engine's GPU memory before training in the same process."""
        import torch

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def completion_from_vllm(output, eos_token_id: int) -> Completion:
    """A vLLM ``CompletionOutput`` as a ``Completion``: finish reason ``stop`` with ``stop_reason`` None is
    EOS; a string ``stop_reason`` is the stop string; ``length`` is truncation."""
    ids = list(output.token_ids)
    if output.finish_reason == "stop" and isinstance(output.stop_reason, str):
        return Completion(output.text, False, len(ids), output.stop_reason)
    if output.finish_reason == "stop":
        n_tokens = len(ids) + int(not ids or ids[-1] != eos_token_id)  # the EOS counts as generated
        return Completion(output.text, True, n_tokens)
    return Completion(output.text, False, len(ids))
