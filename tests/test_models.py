"""Model loading options, and the value model's heads."""
import importlib.util
import math

import pytest
import torch

from oreo.models import ValueModel, load_policy, read_values, resolve_attention, value_head
from oreo.run_config import compose
from oreo.runtime import new_value_model
from oreo.search.value import load_value_model


def test_attention_auto_picks_flash_attention_only_where_it_runs():
    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    assert resolve_attention("auto") == ("flash_attention_2" if has_flash else "sdpa")
    assert resolve_attention("eager") == "eager"


def test_value_outputs_and_head_inits(tmp_path):
    """CPL's value: tanh of the head, a random round-1 head; saved and loaded with its output function."""
    policy, _ = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    assert ValueModel.from_policy(policy)(ids, mask).abs().max().item() == 0.0
    torch.manual_seed(0)
    tanh = ValueModel.from_policy(policy, output="tanh", head_init="random")
    std = tanh.head.weight.std().item()
    assert 0.01 < std < 0.03 and tanh.head.bias.item() == 0.0   # initializer_range 0.02
    v = tanh(ids, mask)
    assert v.abs().max().item() > 0 and v.abs().max().item() < 1
    raw = tanh.head(tanh.backbone(input_ids=ids, attention_mask=mask).last_hidden_state).squeeze(-1)
    torch.testing.assert_close(v, torch.tanh(raw))
    with torch.no_grad():
        tanh.head.bias.fill_(50.0)    # far past the tanh's range: still inside (-1, 1]
    assert tanh(ids, mask).max().item() <= 1.0
    tanh.save_pretrained(tmp_path / "value")
    loaded = load_value_model(tmp_path / "value")
    assert loaded.output == "tanh"
    torch.testing.assert_close(loaded(ids, mask), tanh(ids, mask))
    with pytest.raises(ValueError, match="one of"):
        value_head(8, "ones")
    # through the tanh, d(v - y)²/dbias = 2 (v - y)(1 - v²)
    head = value_head(1)
    with torch.no_grad():
        head.weight.fill_(0.5)
    v = read_values(head, torch.tensor([[[2.0]]]), "tanh")
    ((v - 0.0) ** 2).sum().backward()
    t = math.tanh(1.0)
    assert v.item() == pytest.approx(t)
    assert head.bias.grad.item() == pytest.approx(2 * t * (1 - t * t))
    assert head.weight.grad.item() == pytest.approx(2 * t * (1 - t * t) * 2.0)


def test_a_cpl_runs_fresh_value_is_the_papers_head():
    """new_value_model reads model.value: the cpl experiments' fresh value is tanh over a random head."""
    policy, _ = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)
    value = new_value_model(compose(["+experiment=cpl_smoke"]), policy)
    assert value.output == "tanh" and value.head.weight.abs().sum().item() > 0
    default = new_value_model(compose([]), policy)
    assert default.output == "linear" and default.head.weight.abs().sum().item() == 0
    shared = new_value_model(compose(["+experiment=cpl_smoke"]), policy, shared=True)
    assert shared.output == "tanh" and shared.head.weight.abs().sum().item() > 0


def test_a_fresh_value_head_sits_beside_its_backbone():
    """No engine moves the head: on a GPU backbone (here the meta device stands in) it must already be there."""
    with torch.device("meta"):
        policy, _ = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    assert next(policy.parameters()).device.type == "meta"
    for head_init in ("zero", "random"):
        value = ValueModel.from_policy(policy, head_init=head_init)
        assert value.head.weight.device.type == "meta" and value.head.weight.dtype == torch.float32
