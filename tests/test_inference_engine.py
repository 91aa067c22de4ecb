"""The generation engine: cache equals recompute, batches equal single runs, sampling, stops, streaming, threads."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from torch import nn

from ownllm.core.errors import UserError
from ownllm.inference.detokenize import Detokenizer
from ownllm.inference.engine import Engine, EngineBusy, EngineError, SamplingParams
from ownllm.inference.sampling import RowSampler, draw, filter_logits, penalize_repetitions, pick_tokens
from ownllm.model import ModelConfig, Transformer
from ownllm.run.checkpoints import save_checkpoint
from ownllm.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BYTES = Tokenizer([])  # byte-level: one token per UTF-8 byte, then the 16 special tokens
EOT = BYTES.eot_id
MEMORIZED = "Zoë says: héllo wörld ✓ 🙂 done"
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


def random_model(max_seq_len: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=BYTES.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len
    )
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture
def engine(model):
    with Engine(model, BYTES, max_slots=4) as engine:
        yield engine


@pytest.fixture(scope="module")
def memorized():
    """A tiny model trained until it writes MEMORIZED (multi-byte characters included) after <|endoftext|>."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=BYTES.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    ids = [EOT, *MEMORIZED.encode("utf-8"), EOT]
    inputs, targets = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    optimizer = torch.optim.Adam(m.parameters(), lr=3e-2)
    for _ in range(300):
        loss = m(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    return m.eval()


def recompute_greedy(model, prompt: list[int], max_tokens: int, stop: int = EOT) -> list[int]:
    """The reference: the whole context through the model for every new token, no cache."""
    ids, out = list(prompt), []
    with torch.no_grad():
        while len(out) < max_tokens and len(ids) < model.config.max_seq_len:
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == stop:
                break
    return out


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def all_ids(completion):
    return completion.ids + ([completion.stop_token] if completion.stop_token is not None else [])


# ---- exactness --------------------------------------------------------------------------------


def test_greedy_with_the_cache_equals_full_recomputation(model, engine):
    for prompt in prompts_of((1, 5, 17, 40)):
        completion = engine.generate(prompt, GREEDY)
        assert all_ids(completion) == recompute_greedy(model, prompt, GREEDY.max_tokens)
        assert completion.prompt_tokens == len(prompt)


def test_batched_equals_single_each_stopping_on_its_own(model, engine):
    prompts = prompts_of((3, 12, 7, 20))
    alone = [recompute_greedy(model, p, 30, stop=-1) for p in prompts]
    early_stop = alone[1][4]  # request 1 stops on a token it would generate 5th
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (30, 30, 9, 25)]
    params[1] = SamplingParams(temperature=0, max_tokens=30, stop_ids=frozenset({early_stop}))
    batch = engine.generate_batch(prompts, params)
    assert batch[1].finish_reason == "stop" and batch[1].stop_token == early_stop
    assert all_ids(batch[1]) == alone[1][: alone[1].index(early_stop) + 1]
    for i in (0, 2, 3):
        if EOT in alone[i][: params[i].max_tokens]:
            expected = alone[i][: alone[i].index(EOT) + 1]
        else:
            expected = alone[i][: params[i].max_tokens]
        assert all_ids(batch[i]) == expected
    assert [c.finish_reason for c in batch].count("length") >= 2


def test_more_prompts_than_slots_all_finish(model):
    prompts = prompts_of((2, 9, 4, 6, 11))
    with Engine(model, BYTES, max_slots=2, max_queue=0) as engine:  # generate_batch is not limited by the queue
        batch = engine.generate_batch(prompts, SamplingParams(temperature=0, max_tokens=12))
    assert [all_ids(c) for c in batch] == [recompute_greedy(model, p, 12) for p in prompts]


# ---- sampling ---------------------------------------------------------------------------------


def test_same_seed_same_text_alone_or_in_a_batch(engine):
    prompt = prompts_of((6,))[0]
    params = SamplingParams(temperature=1.0, top_k=50, max_tokens=30, seed=42)
    first, second = engine.generate(prompt, params), engine.generate(prompt, params)
    other_seed = engine.generate(prompt, SamplingParams(temperature=1.0, top_k=50, max_tokens=30, seed=43))
    assert first.ids == second.ids and first.text == second.text
    assert other_seed.ids != first.ids
    others = [SamplingParams(temperature=0.7, max_tokens=20, seed=s) for s in (1, 2)] + [GREEDY]
    batch = engine.generate_batch([prompt, *prompts_of((3, 9, 14))], [params, *others])
    assert batch[0].ids == first.ids


def test_no_seed_gives_varied_text_and_leaves_the_global_random_state_alone(engine):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    texts = {tuple(engine.generate([1, 2], SamplingParams(temperature=1.0, max_tokens=20)).ids) for _ in range(3)}
    assert len(texts) > 1
    assert torch.equal(torch.rand(3), expected)


def test_top_k_keeps_the_k_largest_logits():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, -2.0])
    kept = filter_logits(logits, temperature=1.0, top_k=2).isfinite()
    assert kept.tolist() == [False, True, False, True, False]
    scaled = filter_logits(logits, temperature=2.0)
    torch.testing.assert_close(scaled, logits / 2)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.25, 0.15])
    logits = probs.log()
    assert filter_logits(logits, 1.0, top_p=0.5).isfinite().tolist() == [False, True, False, False]
    assert filter_logits(logits, 1.0, top_p=0.6).isfinite().tolist() == [False, True, True, False]
    assert filter_logits(logits, 1.0, top_p=0.9).isfinite().tolist() == [False, True, True, True]
    assert filter_logits(logits, 1.0, top_p=0.01).isfinite().tolist() == [False, True, False, False]
    kept = filter_logits(logits, 1.0, top_p=0.6)
    torch.testing.assert_close(torch.softmax(kept, -1)[[1, 2]], torch.tensor([0.5, 0.25]) / 0.75)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    seen = torch.tensor([True, True, False, False])
    assert penalize_repetitions(logits, seen, 2.0).tolist() == [1.0, -4.0, 2.0, -2.0]
    sampler = RowSampler(0.0, 0, 1.0, 3.0, torch.Generator(), 4, torch.device("cpu"), prompt=[0])
    assert pick_tokens(torch.tensor([[3.0, 2.0, 0.0, 0.0]]), [sampler]) == [1]  # 3 / 3 < 2: the seen token loses
    sampler.observe(1)
    assert pick_tokens(torch.tensor([[3.0, 2.0, 1.5, 0.0]]), [sampler]) == [2]


def rule(temperature=1.0, top_k=0, top_p=1.0, seed=0):
    return RowSampler(temperature, top_k, top_p, 1.0, torch.Generator().manual_seed(seed), 6, torch.device("cpu"), [0])


def test_samples_come_only_from_the_kept_tokens():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    sampler = rule(temperature=10.0, top_k=2)
    assert {pick_tokens(logits, [sampler])[0] for _ in range(200)} == {0, 1}  # flattened by temperature, not widened


def test_draws_follow_the_probabilities_and_never_pick_an_excluded_token():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]])
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    picks = torch.stack([draw(probs, generators) for _ in range(5000)])  # (draws, rows)
    for row in range(2):
        frequencies = torch.bincount(picks[:, row], minlength=6) / len(picks)
        torch.testing.assert_close(frequencies, probs[row], atol=0.03, rtol=0)  # 4 standard deviations
        assert frequencies[probs[row] == 0].sum() == 0


def test_rows_with_different_rules_filter_together_as_alone():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]] * 3)
    batched = filter_logits(logits, [1.0, 0.5, 2.0], [2, 0, 4], [1.0, 0.9, 0.5])
    for row, (t, k, p) in enumerate([(1.0, 2, 1.0), (0.5, 0, 0.9), (2.0, 4, 0.5)]):
        assert torch.equal(batched[row], filter_logits(logits[row], t, k, p))
    rules = [rule(top_k=3, seed=1), rule(temperature=0.0), rule(top_p=0.5, seed=2)]
    together = [pick_tokens(logits, rules) for _ in range(30)]
    rules = [rule(top_k=3, seed=1), rule(temperature=0.0), rule(top_p=0.5, seed=2)]
    alone = [[pick_tokens(logits[i : i + 1], [r])[0] for i, r in enumerate(rules)] for _ in range(30)]
    assert together == alone and {t[1] for t in together} == {5} and len({t[0] for t in together}) > 1


def test_repetition_penalty_in_the_engine_avoids_repeats(engine):
    plain = engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=30, stop_ids=frozenset({EOT})))
    penalized = engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=30, repetition_penalty=100.0))
    assert penalized.ids != plain.ids
    assert len(set(penalized.ids)) > len(set(plain.ids)) or len(set(penalized.ids)) == len(penalized.ids)


def test_bad_settings_and_prompts_are_user_errors(engine):
    bad_settings = [
        ("max_tokens", 0),
        ("temperature", -1),
        ("top_p", 0),
        ("top_k", -3),
        ("repetition_penalty", 0),
        ("temperature", float("nan")),
        ("stop", ("",)),
        ("seed", 2**70),
        ("seed", -1),
    ]
    for name, value in bad_settings:
        with pytest.raises(UserError, match=name):
            engine.stream([1], SamplingParams(**{name: value}))
    with pytest.raises(UserError, match="64 tokens but the context holds 64"):
        engine.generate([1] * 64)
    with pytest.raises(UserError, match="empty"):
        engine.generate([])
    with pytest.raises(UserError, match="token ids"):
        engine.generate([BYTES.vocab_size])


# ---- stops and text ---------------------------------------------------------------------------


def test_max_tokens_and_a_full_context_finish_with_length(engine):
    params = SamplingParams(temperature=1.0, max_tokens=7, seed=0, stop_ids=frozenset())
    unstoppable = Engine(engine.model, BYTES, stop_ids=frozenset())
    with unstoppable:
        assert len(unstoppable.generate([5], params).ids) == 7
        assert unstoppable.generate([5], params).finish_reason == "length"
        full = unstoppable.generate([5] * 61, SamplingParams(temperature=1.0, max_tokens=50, seed=0))
    assert full.finish_reason == "length" and len(full.ids) == 3  # 61 + 3 = the 64-token context


def test_streaming_never_splits_a_character(memorized):
    with Engine(memorized, BYTES) as engine:
        events = list(engine.stream([EOT], GREEDY))
    assert "".join(e.text for e in events) == MEMORIZED
    assert all("\ufffd" not in e.text for e in events)
    assert [e.text for e in events if e.text][:3] == ["Z", "o", "ë"]
    assert sum(1 for e in events if e.text == "") >= len("ë✓🙂ö") + 3  # the leading bytes of each character
    assert events[-1].finish_reason == "stop" and events[-1].stop_token == EOT
    assert sum(len(e.token_ids) for e in events) == len(MEMORIZED.encode()) + 1


def test_random_bytes_stream_as_their_full_decode(engine):
    completion_events = list(engine.stream([7], SamplingParams(temperature=2.0, max_tokens=40, seed=5)))
    ids = [t for e in completion_events for t in e.token_ids if t < 256]
    assert "".join(e.text for e in completion_events) == BYTES.decode(ids)


def test_stop_string_is_cut_and_held_text_is_released_when_it_does_not_match(memorized):
    with Engine(memorized, BYTES) as engine:
        stopped = engine.generate([EOT], SamplingParams(temperature=0, max_tokens=60, stop=("wör", "xyz")))
        assert (stopped.text, stopped.finish_reason, stopped.stop_token) == ("Zoë says: héllo ", "stop", None)
        events = list(engine.stream([EOT], SamplingParams(temperature=0, max_tokens=60, stop=("wörk",))))
    texts = [e.text for e in events]
    assert "".join(texts) == MEMORIZED
    w = texts.index("wörl")  # "w", both bytes of "ö" and "r" were held: they might have begun "wörk"
    assert texts[w - 4 : w] == ["", "", "", ""] and events[-1].finish_reason == "stop"


def test_detokenizer_holds_only_what_could_begin_a_stop_string():
    detokenizer = Detokenizer(BYTES, stop=("END", "xx"))
    pieces = [detokenizer.add(b) for b in b"abEN!x y"]
    assert pieces == ["a", "b", "", "", "EN!", "", "x ", "y"]
    assert detokenizer.flush() == ""
    detokenizer = Detokenizer(BYTES, stop=("END",))
    assert [detokenizer.add(b) for b in b"aEN"] == ["a", "", ""] and detokenizer.flush() == "EN"
    assert detokenizer.add(EOT) == ""  # special tokens are never text


def test_special_tokens_are_not_text(memorized):
    with Engine(memorized, BYTES, stop_ids=frozenset()) as engine:
        completion = engine.generate([EOT], SamplingParams(temperature=0, max_tokens=len(MEMORIZED.encode()) + 1))
    assert completion.text == MEMORIZED and completion.ids[-1] == EOT and completion.finish_reason == "length"


# ---- threads, cancelling, errors --------------------------------------------------------------


class Gated(nn.Module):
    """A real model whose forward waits for a gate (to hold requests in place), or fails when told to."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.inner, self.config = model, model.config
        self.gate = threading.Event()
        self.entered = threading.Event()  # set once a forward pass waits at the gate
        self.fail = False
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(120), "test gate never opened"
        self.calls += 1
        if self.fail:
            raise RuntimeError("simulated device failure")
        return self.inner(*args, **kwargs)


def wait_until(condition, seconds=60.0):
    """Poll until the condition holds; the limit only bounds a hung test (a busy machine is slow, not wrong)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_closing_the_stream_cancels_and_frees_the_slot(model):
    with Engine(random_model(max_seq_len=4096), BYTES, max_slots=1, stop_ids=frozenset()) as engine:
        stream = engine.stream([1], SamplingParams(temperature=1.0, max_tokens=4000))
        next(stream)
        assert engine.stats()["active"] == 1
        stream.close()
        wait_until(lambda: engine.stats()["active"] == 0)
        assert engine.generate([2], SamplingParams(max_tokens=3)).prompt_tokens == 1  # the slot serves again


def test_engine_busy_when_the_queue_is_full(model):
    gated = Gated(model)
    with Engine(gated, BYTES, max_slots=1, max_queue=1) as engine:
        running = engine.stream([1], GREEDY)
        wait_until(lambda: engine.stats()["active"] == 1)
        waiting = engine.stream([2], GREEDY)
        assert engine.stats() == {"active": 1, "waiting": 1, "slots": 1}
        with pytest.raises(EngineBusy):
            engine.stream([3], GREEDY)
        waiting.close()  # leaving the queue makes room at once
        assert engine.stats()["waiting"] == 0
        third = engine.stream([3], GREEDY)
        gated.gate.set()
        assert list(running)[-1].finish_reason in ("stop", "length")
        assert list(third)[-1].finish_reason in ("stop", "length")


def test_a_burst_for_free_slots_is_never_busy(model):
    """Requests waiting only for the scheduler to admit them into free slots do not count as queued."""
    gated = Gated(model)  # nothing finishes (and frees a slot) until the gate opens
    with Engine(gated, BYTES, max_slots=4, max_queue=0) as engine:
        streams = [engine.stream([i + 1], SamplingParams(temperature=0, max_tokens=3)) for i in range(4)]
        with pytest.raises(EngineBusy):
            engine.stream([9], GREEDY)
        gated.gate.set()
        assert all(list(s)[-1].finish_reason for s in streams)


def test_a_vanishing_temperature_is_greedy(engine):
    prompt = [5, 6, 7]
    greedy = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=12))
    tiny = engine.generate(prompt, SamplingParams(temperature=1e-40, max_tokens=12, seed=3))
    assert tiny.ids == greedy.ids


def test_scheduler_errors_reach_the_consumer_and_the_engine_goes_on(model):
    gated = Gated(model)
    gated.gate.set()
    with Engine(gated, BYTES) as engine:
        gated.fail = True
        with pytest.raises(EngineError, match="simulated device failure"):
            engine.generate([1, 2], GREEDY)
        gated.fail = False
        assert all_ids(engine.generate([1, 2], GREEDY)) == recompute_greedy(model, [1, 2], GREEDY.max_tokens)


def test_a_dead_scheduler_fails_every_caller_instead_of_hanging(model, monkeypatch):
    import ownllm.inference.engine as engine_module

    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate the cache")

    monkeypatch.setattr(engine_module, "KVCache", no_memory)
    with Engine(model, BYTES) as engine:
        with pytest.raises(EngineError, match="cannot allocate"):
            engine.generate_batch([[1], [2]], GREEDY)
        with pytest.raises(EngineError, match="stopped"):
            engine.stream([1])


def test_keyboard_interrupt_in_the_consumer_cancels(model):
    """A Ctrl-C that reaches the consumer while it waits for a token cancels its request.

    The KeyboardInterrupt is raised by the consumer's queue itself once the request is in the
    model: a real signal would test the kernel's choice of thread (the pty test of `ownllm chat`
    does that), and under load a signal's arrival cannot be timed against the wait.
    """
    gated = Gated(model)
    with Engine(gated, BYTES, stop_ids=frozenset()) as engine:
        stream = engine.stream([1], GREEDY)
        events = stream._request.events

        class CtrlCWhileWaiting:
            def get(self):
                assert gated.entered.wait(120), "the request never reached the model"
                raise KeyboardInterrupt

            def put(self, item):
                events.put(item)

        stream._request.events = CtrlCWhileWaiting()
        with pytest.raises(KeyboardInterrupt):
            next(stream)  # the gate is closed: no token yet
        gated.gate.set()
        wait_until(lambda: engine.stats()["active"] == 0)
        assert gated.calls <= 2  # the prompt, perhaps one decode step; not the 40 tokens asked for
        assert stream._request.cancelled


def test_close_finishes_pending_requests_as_cancelled(model):
    gated = Gated(model)
    engine = Engine(gated, BYTES, max_slots=1, stop_ids=frozenset())  # no stop token: only close() ends them
    first, second = engine.stream([1], GREEDY), engine.stream([2], GREEDY)
    wait_until(lambda: engine.stats()["active"] == 1)
    closer = threading.Thread(target=engine.close)
    closer.start()
    gated.gate.set()
    closer.join(60)
    assert list(second)[-1].finish_reason == "cancelled"
    assert list(first)[-1].finish_reason == "cancelled"  # mid-generation: 40 tokens asked, one or two made
    with pytest.raises(RuntimeError, match="closed"):
        engine.stream([1])


def test_concurrent_streams_from_four_threads(model, engine):
    prompts = prompts_of((4, 9, 15, 2))
    results: dict[int, list[int]] = {}

    def consume(i):
        ids = []
        for event in engine.stream(prompts[i], SamplingParams(temperature=0, max_tokens=25)):
            ids.extend(event.token_ids)
        results[i] = ids

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: recompute_greedy(model, p, 25) for i, p in enumerate(prompts)}


# ---- loading from a run -----------------------------------------------------------------------


def write_run(root, tokenizer: Tokenizer, stages=("pretrain",), tokenizer_hash=None):
    from ownllm.run.token_shards import tokenizer_hash as hash_of

    tokenizer.save(root / "tokenizer")
    for n, stage in enumerate(stages):
        model = random_model(seed=n)
        state = {
            "model_config": model.config.to_dict(),
            "tokenizer_hash": tokenizer_hash or hash_of(root / "tokenizer"),
        }
        save_checkpoint(root / "checkpoints" / stage, 10, model, None, state)
    return root


def test_load_prefers_the_chat_model_and_checks_the_tokenizer(tmp_path):
    run = write_run(tmp_path / "run", BYTES, stages=("pretrain", "sft"))
    with Engine.load(run, device="cpu") as engine:
        assert torch.equal(engine.model.embed.weight, random_model(seed=1).embed.weight)  # the sft one
        assert engine.generate([1], GREEDY).ids
    with Engine.load(run, stage="pretrain", device="cpu") as engine:
        assert torch.equal(engine.model.embed.weight, random_model(seed=0).embed.weight)

    stale = write_run(tmp_path / "stale", BYTES, tokenizer_hash="0" * 64)
    with pytest.raises(UserError, match="another tokenizer"):
        Engine.load(stale, device="cpu")
    (tmp_path / "empty").mkdir()
    BYTES.save(tmp_path / "empty" / "tokenizer")
    with pytest.raises(UserError, match="ownllm pretrain --run"):
        Engine.load(tmp_path / "empty")
    with pytest.raises(UserError, match="ownllm sft --run"):
        Engine.load(run.parent / "stale", stage="sft")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads a thread's signal mask from Linux /proc")
def test_the_scheduler_thread_leaves_ctrl_c_to_the_main_thread(engine):
    """A SIGINT the kernel handed to the scheduler thread would never wake a main thread asleep in
    input(): the scheduler blocks SIGINT and SIGTERM, so they always go to a thread that handles them."""
    engine.generate([1, 2], GREEDY)
    (thread,) = [t for t in threading.enumerate() if t.name == "ownllm-engine" and t.is_alive()][:1]
    status = open(f"/proc/self/task/{thread.native_id}/status").read()
    blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert blocked & (1 << (sig - 1)), f"{sig.name} is not blocked in the scheduler thread"


def test_the_model_runs_under_the_autocast_the_engine_is_given(model):
    """Training samples run in the training's precision: autocast is per thread, so the engine's own thread
    must enter it (the trainer's autocast around the sampling hook does not reach the scheduler)."""
    seen: list = []

    class Recording(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, *args, **kwargs):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.inner(*args, **kwargs)

    for autocast in (torch.bfloat16, None):
        seen.clear()
        with torch.autocast("cpu", dtype=torch.float16), Engine(Recording(model), BYTES, autocast=autocast) as engine:
            engine.generate([1], SamplingParams(temperature=0, max_tokens=3))  # the caller's autocast stays here
        assert seen and set(seen) == {autocast}
