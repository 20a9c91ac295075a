"""LoRA adapters and gradient checkpointing: what is trained, what is saved, what is unchanged."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from oreo.batch import collate
from oreo.encode import Encoder
from oreo.lora import LoRAConfig, add_lora, save_model
from oreo.models import ValueModel, enable_gradient_checkpointing, load_policy
from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from oreo.trainers.common import TrainConfig
from oreo.trainers.oreo import OREOConfig, OREOObjective
from oreo.trainers.reference import reference_logprobs

pytest.importorskip("peft")
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def records():
    task = ArithmeticTask(ArithmeticConfig(seed=1, n_train=32, n_test=1, n_heldout=1, teacher_error_rate=0.4))
    return task.sft_records(rng_seed=0)


def test_saved_lora_model_is_the_merged_model(tmp_path):
    model, _ = load_policy("tiny", tiny=TINY, seed=0)
    base = copy.deepcopy(model)
    lora = add_lora(model, LoRAConfig(policy=True, r=4))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero: make the adapters change the outputs
    ids = torch.randint(3, 90, (2, 9))
    with torch.no_grad():
        expected = lora(ids).logits
    save_model(lora, tmp_path)
    assert (tmp_path / "lora_adapter" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert (expected - base(ids).logits).abs().max() > 1e-2  # the adapters did change the model


def test_oreo_with_lora_trains_adapters_and_the_whole_value_head(tmp_path, records):
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    reference = copy.deepcopy(policy)
    value = ValueModel.from_policy(policy)
    cfg = LoRAConfig(policy=True, value=True, r=4)
    policy = add_lora(policy, cfg)
    value.backbone = add_lora(value.backbone, cfg)
    before = {n: p.detach().clone() for n, p in [*policy.named_parameters(), *value.named_parameters()]}
    trainer = OREOObjective(policy, tok, OREOConfig(beta=0.1, kl_type="exact", max_len=64),
                          TrainConfig(epochs=2, batch_size=8, micro_batch_size=8, lr=1e-2, value_lr=1e-2,
                                      warmup_ratio=0.0), reference=reference, value=value)
    trainer.fit(records, out_dir=tmp_path / "oreo")
    after = dict([*policy.named_parameters(), *value.named_parameters()])
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n or n.startswith("head.") for n in changed), sorted(changed)[:5]
    assert {"head.weight", "head.bias"} <= changed  # the value head is trained in full
    assert any(n.startswith("backbone.") and "lora_" in n for n in changed)
    assert any("lora_" in n for n in changed if not n.startswith(("head.", "backbone.")))

    saved_head = load_file(str(tmp_path / "oreo" / "value" / "value_head.safetensors"))
    assert torch.equal(saved_head["weight"], value.head.weight.detach())
    assert torch.equal(saved_head["bias"], value.head.bias.detach())
    reloaded = ValueModel.from_pretrained(tmp_path / "oreo" / "value")
    ids = torch.randint(3, 90, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), value.eval()(ids, mask), rtol=1e-4, atol=1e-5)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "oreo" / "policy")
        torch.testing.assert_close(merged(ids).logits, policy.eval()(ids).logits, rtol=1e-4, atol=1e-4)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "oreo" / "value"), torch.nn.Module)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(records):
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    data = Encoder(tok).encode_all(records[:8])
    ref = reference_logprobs(policy, data, tok.pad_token_id)
    batch = collate(data, tok.pad_token_id, "right", ref_logprobs=ref)
    results = []
    for checkpointing in (False, True):
        p = copy.deepcopy(policy)
        value = ValueModel.from_policy(p)
        torch.nn.init.normal_(value.head.weight, std=0.1, generator=torch.Generator().manual_seed(0))
        if checkpointing:
            enable_gradient_checkpointing(p)
            enable_gradient_checkpointing(value.backbone)
        trainer = OREOObjective(p, tok, OREOConfig(beta=0.1, kl_type="k3"), TrainConfig(),
                              reference=copy.deepcopy(policy), value=value)
        trainer.engines = {"policy": type("E", (), {"module": p})(), "value": type("E", (), {"module": value})()}
        p.train()
        value.train()
        calls = []
        for mlp in (p.model.layers[0].mlp, value.backbone.layers[0].mlp):
            # count calls of forward itself: hooks do not fire when the backward recomputes a layer
            mlp.forward = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(mlp.forward)
        out = trainer.losses(batch)
        params = list(p.parameters()) + list(value.parameters())
        grads = torch.autograd.grad(out["policy_loss"] + out["value_loss"] + out["kl"], params, allow_unused=True)
        assert len(calls) == (4 if checkpointing else 2)  # checkpointed layers run again in the backward
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    for k in ("policy_loss", "value_loss", "kl"):
        torch.testing.assert_close(out_a[k], out_b[k])
    n = 0
    for a, b in zip(grads_a, grads_b):
        if a is not None:
            n += 1
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert n > 10


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_preference_objectives_with_lora_train_adapters_only_and_save_the_merged_policy(tmp_path, name):
    from oreo.trainers.dpo import DPOConfig, DPOObjective
    from oreo.trainers.kto import KTOConfig, KTOObjective
    from oreo.trajectory import Trajectory

    # four teacher solutions per problem, graded as they are: its slips are the incorrect, undesirable ones
    task = ArithmeticTask(ArithmeticConfig(seed=1, n_train=16, n_test=1, n_heldout=1, teacher_error_rate=0.4))
    rows = [Trajectory.from_dict(r) for r in task.sft_records(rng_seed=0, n_per_problem=4)]
    assert {r.correct for r in rows} == {True, False}
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    reference = copy.deepcopy(policy)
    policy = add_lora(policy, LoRAConfig(policy=True, r=4))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    train = TrainConfig(epochs=2, batch_size=4, micro_batch_size=4, lr=1e-2, warmup_ratio=0.0)
    objective = (DPOObjective(policy, tok, DPOConfig(max_len=64), train, reference=reference) if name == "dpo" else
                 KTOObjective(policy, tok, KTOConfig(max_len=64), train, reference=reference))
    objective.fit(rows, out_dir=tmp_path / name)
    changed = {n for n, p in policy.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    ids = torch.randint(3, 90, (2, 9))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        torch.testing.assert_close(merged(ids).logits, policy.eval()(ids).logits, rtol=1e-4, atol=1e-4)
