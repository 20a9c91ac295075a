"""LoRA adapters (peft) on the policy, the value model's backbone, or both.

The value head is never an adapter: it stays a plain, fully trainable float32 ``nn.Linear`` outside
the peft model, and is saved with the value model (spec §3: the reference lost it). Checkpoints hold
the *merged* weights (W + ΔW) in the usual Hugging Face layout, so every later stage and every user
loads them like any model; the adapter alone is saved next to them in ``lora_adapter/``.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from oreo.config import LoRAConfig

ADAPTER_DIR = "lora_adapter"


def add_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """``model`` with trainable LoRA adapters and every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    target = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                            target_modules=target))


def is_lora(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merged_state_dict(model: nn.Module) -> dict:
    """The base model's state dict with every adapted weight replaced by W + ΔW (nothing is modified:
    merging in place and unmerging would not give back the same floats)."""
    from peft.tuners.lora.layer import LoraLayer

    base = model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            merged[f"{name}.weight"] = (layer.weight + delta.to(layer.weight.dtype)).detach()
            if getattr(layer, "bias", None) is not None:
                merged[f"{name}.bias"] = layer.bias.detach()
    for key, value in base.state_dict().items():
        if "lora_" not in key and ".base_layer." not in key:
            merged[key] = value
    return merged


def save_model(model: nn.Module, path: str | Path) -> None:
    """``model.save_pretrained(path)``; for a LoRA model, the merged weights there and the adapter in
    ``path/lora_adapter/``."""
    path = Path(path)
    if not is_lora(model):
        model.save_pretrained(path)
        return
    model.get_base_model().save_pretrained(path, state_dict=merged_state_dict(model))
    model.save_pretrained(path / ADAPTER_DIR)
