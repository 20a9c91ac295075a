"""What every entry point builds from a config: the device, models, samplers (and how to free them)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from oreo.config import ConfigError
from oreo.distributed import local_rank
from oreo.encode import Encoder
from oreo.models import ValueHead, ValueModel, load_policy, resolve_model_path, tiny_tokenizer
from oreo.rollout.sampler import HFSampler
from oreo.rollout.vllm_sampler import vllm_available

if TYPE_CHECKING:
    from oreo.run_config import RunConfig


def pick_device(name: str) -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU; otherwise the device named."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          ("cpu" if name == "auto" else name))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    return device


def load_model(cfg: RunConfig, path_or_name: str | Path, device: torch.device):
    """``(model, tokenizer)`` of the policy at ``path_or_name`` with the model section's settings."""
    m = cfg.model
    model, tokenizer = load_policy(str(path_or_name), dtype=m.dtype, tiny=dataclasses.asdict(m.tiny),
                                   trust_remote_code=m.trust_remote_code,
                                   attn_implementation=m.attn_implementation, seed=cfg.seed)
    return model.to(device), tokenizer


def check_value_backbone(cfg: RunConfig) -> None:
    """Before any stage runs: ``model.value``'s tokenizer is the policy's (``new_value_model`` needs it)."""
    from transformers import AutoTokenizer

    def tokenizer(name: str, tiny):
        if name == "tiny":
            return tiny_tokenizer(tiny.vocabulary)
        return AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=cfg.model.trust_remote_code)

    v, m = cfg.model.value, cfg.model
    if v.name_or_path is not None and \
            tokenizer(v.name_or_path, v.tiny).get_vocab() != tokenizer(m.name_or_path, m.tiny).get_vocab():
        raise ConfigError("model.value.name_or_path", f"{v.name_or_path}: its tokenizer is not the policy's "
                                                       f"({m.name_or_path}); the value model reads the policy's tokens")


def new_value_model(cfg: RunConfig, policy, *, shared: bool = False) -> ValueModel | ValueHead:
    """A fresh value model for a run, its head as ``model.value`` says (output, init): on a copy of ``policy``,
    or on the backbone ``model.value`` names, whose tokenizer must be the policy's; ``shared``: the head alone,
    to read ``policy``'s own hidden states."""
    v, m = cfg.model.value, cfg.model
    head = {"output": v.output, "head_init": v.head_init}
    if shared:
        return ValueHead.for_policy(policy, **head)
    if v.name_or_path is None:
        return ValueModel.from_policy(policy, **head)
    check_value_backbone(cfg)
    backbone, _ = load_policy(v.name_or_path, dtype=m.dtype, tiny=dataclasses.asdict(v.tiny),
                              trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation,
                              seed=cfg.seed + 1)
    return ValueModel(backbone.get_decoder(), **head).to(next(policy.parameters()).device)


def build_sampler(cfg: RunConfig, policy_dir: str | Path, section, device: torch.device):
    """A sampler for the policy in ``policy_dir``, of the backend ``sampler.backend`` chooses, with
    ``section``'s batch size and token limit."""
    backend = cfg.sampler.backend
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        from transformers import AutoTokenizer

        from oreo.rollout.vllm_sampler import VLLMSampler

        path = resolve_model_path(str(policy_dir))
        tokenizer = AutoTokenizer.from_pretrained(path)
        return VLLMSampler(path, tokenizer, Encoder.unbounded(tokenizer),
                           batch_size=section.batch_size, max_new_tokens=section.max_new_tokens,
                           dtype=cfg.model.dtype, seed=cfg.seed,
                           gpu_memory_utilization=cfg.sampler.gpu_memory_utilization)
    model, tokenizer = load_model(cfg, policy_dir, device)
    return HFSampler(model, tokenizer, Encoder.unbounded(tokenizer), batch_size=section.batch_size,
                     max_new_tokens=section.max_new_tokens, share_prefix=cfg.sampler.share_prefix)


def close_sampler(sampler) -> None:
    """Free what a sampler holds (a vLLM engine's GPU memory) before the next stage trains."""
    if hasattr(sampler, "close"):
        sampler.close()


def quiet_library_progress_bars() -> None:
    """Our own bars cover the long loops; the libraries' per-shard and per-file bars are noise."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
