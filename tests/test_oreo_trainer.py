"""Tests for the OREO trainer (oreo/trainers/oreo.py): padding invariance of the losses, the cached
reference log-probs, and a short end-to-end fit with its checkpoint."""

import copy
import dataclasses
import math
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from oreo.batch import collate
from oreo.encode import Encoder
from oreo.metrics import MetricsLogger, read_metrics
from oreo.models import ValueHead, ValueModel, hidden_states, load_policy
from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from oreo.trainers.common import TrainConfig, unwrap
from oreo.trainers.oreo import OREOConfig, OREOObjective
from oreo.trainers.reference import reference_logprobs, reference_name

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", tiny=TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny):
    """A GPT-2 (learned absolute positions: unlike Llama's rotary embeddings, a position offset
    changes its outputs), without dropout, on the same character tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config), tok


@pytest.fixture(scope="module")
def records():
    task = ArithmeticTask(ArithmeticConfig(seed=2, n_train=16, n_test=1, n_heldout=1, teacher_error_rate=0.5))
    recs = task.sft_records(rng_seed=0)
    # a cut trajectory: no EOS action
    recs[3] = dataclasses.replace(recs[3], meta={"finished": False}, steps=recs[3].steps[:-1])
    assert {r.reward for r in recs} == {0.0, 1.0}
    return recs


def perturb_(module, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def make_trainer(tiny, cfg, train=None):
    policy, tok = tiny
    policy = copy.deepcopy(policy)
    trainer = OREOObjective(policy, tok, cfg, train or TrainConfig())
    perturb_(policy, 0.05, seed=1)  # policy ≠ reference: non-zero log-ratios and KL
    head = trainer.value if isinstance(trainer.value, ValueHead) else trainer.value.head
    perturb_(head, 0.5, seed=2)  # the head starts at zero: make the values non-trivial
    trainer.engines = {"policy": SimpleNamespace(module=policy), "value": SimpleNamespace(module=trainer.value)}
    return trainer


# ----------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("arch,granularity,policy_loss,shared", [
    ("llama", "token", "oreo", False),
    ("gpt2", "token", "oreo", False),
    ("gpt2", "step", "oreo", False),
    ("llama", "step", "single_step", False),
    ("gpt2", "token", "response", True),
])
def test_left_and_right_padding_give_the_same_losses(request, records, arch, granularity, policy_loss, shared):
    cfg = OREOConfig(beta=0.5, granularity=granularity, policy_loss=policy_loss, shared_backbone=shared,
                     reward_mul=2.0, reward_add=-0.5, importance_sampling=(granularity == "step"))
    trainer = make_trainer(request.getfixturevalue("tiny" if arch == "llama" else "tiny_gpt2"), cfg)
    tok = trainer.tokenizer
    data = Encoder(tok, granularity=granularity).encode_all(records[:6])
    lengths = {len(e.input_ids) for e in data}
    assert len(lengths) >= 3  # padding really differs between rows
    ref = reference_logprobs(trainer.reference, data, tok.pad_token_id, batch_size=4)

    results, grads = {}, {}
    for side in ("left", "right"):
        batch = collate(data, tok.pad_token_id, side, ref_logprobs=ref)
        out = {}
        for kl_type in ("exact", "k3"):
            trainer.cfg.kl_type = kl_type
            out.update({f"{kl_type}/{k}": v for k, v in trainer.losses(batch).items()})
        results[side] = out
        params = list(trainer.policy.parameters()) + list(trainer.value.parameters())
        total = out["exact/policy_loss"] + out["exact/kl"] + out["exact/value_loss"] + out["k3/kl"]
        grads[side] = torch.autograd.grad(total, params, allow_unused=True)

    left, right = results["left"], results["right"]
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in ("exact/value_loss", "exact/policy_loss", "exact/kl", "k3/kl", "exact/value_mean"):
        assert math.isfinite(left[key].item()) and left[key].item() != 0.0, key
    assert left["exact/kl"].item() > 0 and left["k3/kl"].item() > 0
    n = 0
    for gl, gr in zip(grads["left"], grads["right"]):
        if gl is None:
            assert gr is None
            continue
        n += 1
        assert torch.isfinite(gl).all()
        torch.testing.assert_close(gl, gr, rtol=1e-4, atol=1e-5)  # float32 sums in a different order
    assert n > 0


def test_losses_match_a_naive_recomputation(tiny, records):
    """The trainer wires the right tensors into the losses: recompute the value loss by hand."""
    cfg = OREOConfig(beta=0.5, kl_type="k3")
    trainer = make_trainer(tiny, cfg)
    tok = trainer.tokenizer
    data = Encoder(tok).encode_all(records[:3])
    ref = reference_logprobs(trainer.reference, data, tok.pad_token_id)
    out = trainer.losses(collate(data, tok.pad_token_id, "right", ref_logprobs=ref))
    expected = []
    with torch.no_grad():
        for e, r in zip(data, ref):
            ids = torch.tensor([e.input_ids])
            logp = torch.log_softmax(trainer.policy(ids).logits[0, :-1].float(), -1)
            logp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
            m = torch.tensor(e.action_mask, dtype=torch.float32)
            s = torch.tensor(e.state_mask, dtype=torch.bool)
            C = ((logp - r) * m).flip(0).cumsum(0).flip(0)
            V = trainer.value(ids, torch.ones_like(ids))[0, :-1]
            expected.append(((V + 0.5 * C - e.reward)[s] ** 2).mean())
    torch.testing.assert_close(out["value_loss"], torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- reference cache


class Exploding:
    def __getattr__(self, name):
        raise AssertionError(f"the reference model was used ({name}) although the cache should hit")


def test_reference_logprobs_cached(tmp_path, tiny, records):
    model, tok = tiny
    data = Encoder(tok).encode_all(records[:5])
    first = reference_logprobs(model, data, tok.pad_token_id, batch_size=2, cache_dir=tmp_path, ref_name="sft")
    assert [t.shape[0] for t in first] == [len(e.input_ids) - 1 for e in data]
    assert all(t.dtype == torch.float32 and (t <= 0).all() for t in first)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1

    # the cached values are the true reference log-probs of each (unpadded) sequence
    with torch.no_grad():
        for e, t in zip(data, first):
            ids = torch.tensor([e.input_ids])
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            torch.testing.assert_close(t, logp, rtol=1e-5, atol=1e-5)

    second = reference_logprobs(Exploding(), data, tok.pad_token_id, cache_dir=tmp_path, ref_name="sft")
    assert len(second) == len(first)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # another reference, or other data, is another cache entry
    with pytest.raises(AssertionError, match="reference model was used"):
        reference_logprobs(Exploding(), data, tok.pad_token_id, cache_dir=tmp_path, ref_name="other")
    with pytest.raises(AssertionError, match="reference model was used"):
        reference_logprobs(Exploding(), data[:4], tok.pad_token_id, cache_dir=tmp_path, ref_name="sft")
    assert list(tmp_path.glob("*.safetensors")) == files
    assert not list(tmp_path.glob("*.tmp"))


def test_a_retrained_reference_at_the_same_path_gets_new_log_probs(tmp_path, tiny, records):
    model, tok = tiny
    data = Encoder(tok).encode_all(records[:3])
    ckpt = tmp_path / "sft"
    model.save_pretrained(ckpt)
    first = reference_name(ckpt, "float32")
    reference_logprobs(model, data, tok.pad_token_id, cache_dir=tmp_path / "cache", ref_name=first)
    time.sleep(0.01)
    retrained = copy.deepcopy(model)
    perturb_(retrained, 0.1, seed=3)
    retrained.save_pretrained(ckpt)  # SFT trained again, written to the same folder
    second = reference_name(ckpt, "float32")
    assert second != first and second.startswith(str(ckpt))
    fresh = reference_logprobs(retrained, data, tok.pad_token_id, cache_dir=tmp_path / "cache", ref_name=second)
    stale = reference_logprobs(Exploding(), data, tok.pad_token_id, cache_dir=tmp_path / "cache", ref_name=first)
    assert any(not torch.allclose(a, b) for a, b in zip(fresh, stale))


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(tmp_path, tiny, records):
    model, tok = tiny
    data = Encoder(tok).encode_all(records[:3])
    first = reference_logprobs(model, data, tok.pad_token_id, cache_dir=tmp_path, ref_name="sft")
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:40])  # cut by a full disk, say
    with pytest.warns(UserWarning, match="cannot be read.*recomputing"):
        again = reference_logprobs(model, data, tok.pad_token_id, cache_dir=tmp_path, ref_name="sft")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert reference_logprobs(Exploding(), data, tok.pad_token_id, cache_dir=tmp_path, ref_name="sft")  # rewritten


# ----------------------------------------------------------------------------- fit and checkpoint


def fit(tiny, records, tmp_path, **cfg_kw):
    policy, tok = tiny
    policy = copy.deepcopy(policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    train = TrainConfig(batch_size=8, micro_batch_size=4, epochs=1, lr=1e-2, value_lr=1e-2, warmup_ratio=0.0,
                        log_every=1, seed=0)
    trainer = OREOObjective(policy, tok, OREOConfig(beta=0.1, **cfg_kw), train, cache_dir=tmp_path / "cache",
                            ref_name="tiny")
    logger = MetricsLogger(tmp_path / "run")
    info = trainer.fit(records, logger=logger, out_dir=tmp_path / "ckpt")
    logger.close()
    return trainer, info, before


def check_metrics(path, steps):
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
        for k in ("value_loss", "policy_loss", "kl", "k3_kl", "policy_grad_norm", "value_grad_norm"):
            assert k in row, k
    return rows


def test_fit_writes_a_loadable_checkpoint(tmp_path, tiny, records):
    from transformers import AutoModelForCausalLM

    trainer, info, before = fit(tiny, records, tmp_path)
    assert info["steps"] == 2 and info["encode"]["kept"] == 16
    check_metrics(tmp_path / "run" / "metrics.jsonl", 2)

    policy = unwrap(trainer.engines["policy"].module)
    value = unwrap(trainer.engines["value"].module)
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())  # trained
    assert value.head.weight.abs().sum() > 0  # the zero head moved
    for k, v in trainer.reference.state_dict().items():  # the reference stayed frozen
        assert torch.equal(v, before[k]), k

    ckpt = tmp_path / "ckpt"
    assert (ckpt / "policy" / "config.json").exists() and (ckpt / "value" / "config.json").exists()
    assert (ckpt / "value" / "value_head.safetensors").exists()
    assert not (tmp_path / "ckpt.tmp").exists()

    ids = torch.tensor([Encoder(trainer.tokenizer).encode(records[0]).input_ids] * 2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding too
    with torch.no_grad():
        loaded_value = ValueModel.from_pretrained(ckpt / "value").eval()
        torch.testing.assert_close(loaded_value(ids, mask), value.eval()(ids, mask), rtol=0, atol=1e-6)
        loaded_policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy").eval()
        torch.testing.assert_close(loaded_policy(ids).logits, policy.eval()(ids).logits, rtol=0, atol=1e-5)

    # the reference log-probs were cached once
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_fit_with_a_shared_backbone(tmp_path, tiny, records):
    trainer, info, before = fit(tiny, records, tmp_path, shared_backbone=True, granularity="step")
    assert info["steps"] == 2
    check_metrics(tmp_path / "run" / "metrics.jsonl", 2)
    head = unwrap(trainer.engines["value"].module)
    assert isinstance(head, ValueHead) and head.head.weight.abs().sum() > 0
    stored = load_file(str(tmp_path / "ckpt" / "value" / "value_head.safetensors"))
    assert torch.equal(stored["weight"], head.head.weight.detach())
    policy = unwrap(trainer.engines["policy"].module)
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    # the checkpointed head, on the checkpointed policy's hidden states, reproduces the values
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "policy").eval()
    restored = ValueHead(loaded.config.hidden_size)
    restored.head.load_state_dict(stored)
    ids = torch.tensor([Encoder(trainer.tokenizer).encode(records[1]).input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(restored.values_from_hidden(hidden_states(loaded, ids, mask)),
                                   head.values_from_hidden(hidden_states(policy.eval(), ids, mask)),
                                   rtol=0, atol=1e-6)
