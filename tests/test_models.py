"""Model loading options."""
import importlib.util

import torch

from oreo.models import resolve_attention


def test_attention_auto_picks_flash_attention_only_where_it_runs():
    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    assert resolve_attention("auto") == ("flash_attention_2" if has_flash else "sdpa")
    assert resolve_attention("eager") == "eager"
