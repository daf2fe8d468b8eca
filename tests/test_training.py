"""scratchformer.training: the one shift, the training step (fp32, bf16, fp16, accumulation),
greedy decoding, evaluation and the training loop."""

import copy
import json
import math

import pytest
import torch

from scratchformer import data
from scratchformer.model import Transformer, TransformerConfig
from scratchformer.training import (
    RECIPES,
    cross_attention_weights,
    evaluate,
    exact_matches,
    fit,
    greedy_decode,
    label_count,
    make_optimizer,
    model_from_recipe,
    teacher_forcing,
    train_step,
    translate,
)

RECIPE_KEYS = {"d_model", "heads", "layers", "d_ff", "dropout", "lr", "warmup", "label_smoothing",
               "positional", "steps", "batch_size", "n_train", "eval_every", "log_every",
               "norm_first", "max_len"}


def tiny_model(seed=0, V_src=14, V_tgt=14, dropout=0.0, **options) -> Transformer:
    torch.manual_seed(seed)
    config = dict(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64,
                  dropout=dropout, norm_first=True)
    config.update(options)
    return Transformer(TransformerConfig(V_src, V_tgt, **config))


def copy_batch(n=16, seed=0, min_len=3, max_len=8):
    task = data.make_task("copy", n, n_valid=10, n_test=10, seed=seed, min_len=min_len,
                          max_len=max_len)
    items = data.PairDataset(task.train, task.src_vocab, task.tgt_vocab)
    return task, data.collate([items[i] for i in range(len(items))])


# ---- teacher forcing ---------------------------------------------------------------------------

@pytest.mark.parametrize("B, T", [(1, 2), (3, 7), (8, 20)])
def test_teacher_forcing_is_the_one_shift(B, T):
    tgt = torch.randint(0, 50, (B, T))
    before = tgt.clone()
    tgt_in, labels = teacher_forcing(tgt)
    assert tgt_in.shape == labels.shape == (B, T - 1)
    for t in range(T - 2):
        assert torch.equal(labels[:, t], tgt_in[:, t + 1])       # the label is the next input
    assert torch.equal(tgt_in[:, 0], tgt[:, 0]) and torch.equal(labels[:, -1], tgt[:, -1])
    assert torch.equal(tgt, before)


def test_teacher_forcing_rejects_what_it_cannot_shift():
    for bad in (torch.zeros(3, 1, dtype=torch.long), torch.zeros(5, dtype=torch.long),
                torch.zeros(2, 4)):
        with pytest.raises(ValueError):
            teacher_forcing(bad)


# ---- the training step -------------------------------------------------------------------------

def _train(precision, steps=25, scaler=None):
    _, (src, tgt) = copy_batch()
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [train_step(model, [(src, tgt)], optimizer, precision=precision,
                         scaler=scaler)["loss"] for _ in range(steps)]
    return losses


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_loss_is_finite_and_decreases(precision):
    losses = _train(precision)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_train_step_fp16_with_a_grad_scaler_runs():
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.scaled_dot_product_attention(*(torch.randn(1, 1, 2, 4),) * 3)
        scaler = torch.amp.GradScaler("cpu")
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"this torch has no fp16 autocast or GradScaler on the CPU: {error}")
    losses = _train("fp16", steps=15, scaler=scaler)
    assert all(math.isfinite(x) for x in losses[-5:])
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="GradScaler"):
        _train("fp16", steps=1)


def test_train_step_returns_the_record_and_uses_the_rate_before_the_schedule():
    _, (src, tgt) = copy_batch()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 / (k + 1))
    rates = [train_step(model, [(src, tgt)], optimizer, scheduler)["lr"] for _ in range(3)]
    assert rates == pytest.approx([0.1, 0.05, 0.1 / 3])
    out = train_step(model, [(src, tgt)], optimizer, scheduler, clip_norm=None)
    assert set(out) == {"loss", "tokens", "grad_norm", "lr"}
    assert out["tokens"] == label_count(tgt) == int((tgt[:, 1:] != 0).sum())
    assert all(p.grad is None for p in model.parameters())       # cleared for the next step


def test_accumulation_equals_one_batch():
    """Micro-batches of unequal token counts, each padded to its own length, give the update of
    the whole batch: each micro-batch's loss is weighted by its share of the labels."""
    task, (src, tgt) = copy_batch(n=12, min_len=2, max_len=10)
    items = data.PairDataset(task.train, task.src_vocab, task.tgt_vocab)
    parts = [data.collate([items[i] for i in idx]) for idx in ([0, 1, 2, 3, 4, 5, 6], [7], [8, 9, 10, 11])]
    updates, results = [], []
    for micro_batches in ([(src, tgt)], parts):
        model = tiny_model(seed=1, dropout=0.0)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        results.append(train_step(model, micro_batches, optimizer, clip_norm=None, epsilon=0.1))
        updates.append(torch.cat([(p.detach() - b).flatten()
                                  for p, b in zip(model.parameters(), before)]))
    torch.testing.assert_close(updates[0], updates[1], atol=1e-6, rtol=1e-4)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    assert results[0]["grad_norm"] == pytest.approx(results[1]["grad_norm"], rel=1e-4)
    assert results[0]["tokens"] == results[1]["tokens"]


# ---- decoding, evaluation ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def overfit_copy():
    """One batch of copy overfitted: the sanity test of any training setup."""
    task, (src, tgt) = copy_batch(n=16)
    model = tiny_model(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        train_step(model, [(src, tgt)], optimizer, epsilon=0.0)
    return task, src, tgt, model


def test_overfit_one_batch_of_copy_to_100_percent(overfit_copy):
    task, src, tgt, model = overfit_copy
    out = greedy_decode(model, src, max_len=tgt.shape[1])
    _, labels = teacher_forcing(tgt)
    assert exact_matches(out, labels).all()
    assert evaluate(model, task.train, task.src_vocab, task.tgt_vocab)["exact_match"] == 1.0
    assert translate(model, [s for s, _ in task.train[:4]], task.src_vocab,
                     task.tgt_vocab) == [s for s, _ in task.train[:4]]


def test_greedy_decode_without_encode_decode_gives_the_same(overfit_copy):
    task, src, tgt, model = overfit_copy

    class OnlyForward(torch.nn.Module):          # a model with forward(src, tgt_in) only
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, src, tgt_in):
            return self.inner(src, tgt_in)

    model.train()
    assert torch.equal(greedy_decode(OnlyForward(model), src, 12), greedy_decode(model, src, 12))
    assert model.training                                     # the mode is restored


def test_a_decoder_fed_the_answer_learns_nothing_usable():
    """Without the shift (labels = input), a causal model copies its input: a near-perfect
    teacher-forced loss, and at t = 0, where it reads <s>, it cannot know the answer."""
    task, (src, tgt) = copy_batch(n=16)
    model = tiny_model(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    leak = tgt[:, 1:]                                         # input == labels
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(src, leak).flatten(0, 1), leak.flatten(),
                                                 ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(src, leak).argmax(-1) == leak)[leak != 0].float().mean()
    out = greedy_decode(model, src, tgt.shape[1])
    first = (out[:, 0] == tgt[:, 1]).float().mean()
    assert loss < 0.05 and accuracy == 1.0                    # suspiciously perfect
    assert first < 1.0 and not exact_matches(out, tgt[:, 1:]).all()


def test_exact_matches_reads_up_to_the_first_eos():
    labels = torch.tensor([[5, 6, 2, 0], [5, 6, 2, 0], [5, 6, 2, 0], [5, 2, 0, 0]])
    predicted = torch.tensor([[5, 6, 2, 9], [5, 0, 6, 2], [5, 6, 7, 2], [5, 2, 0, 0]])
    assert exact_matches(predicted, labels).tolist() == [True, False, False, True]
    assert exact_matches(predicted[:, :2], labels).tolist() == [False, False, False, True]


def test_cross_attention_weights(overfit_copy):
    task, src, tgt, model = overfit_copy
    tgt_in, _ = teacher_forcing(tgt)
    model.train()
    w = cross_attention_weights(model, src, tgt_in)
    c = model.config
    assert w.shape == (c.n_decoder_layers, src.shape[0], c.n_heads, tgt_in.shape[1], src.shape[1])
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    pad = (src == 0)[None, :, None, None, :].expand_as(w)
    assert (w[pad] == 0).all()                                # no weight on padded keys
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- the loop ----------------------------------------------------------------------------------

def _loop_setup(dropout=0.1):
    task = data.make_task("copy", 200, n_valid=20, n_test=20, seed=0)
    stream = data.BatchStream(data.PairDataset(task.train, task.src_vocab, task.tgt_vocab), 32)
    model = tiny_model(seed=3, dropout=dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return task, stream, model, optimizer


def test_fit_records_and_stops_early():
    task, stream, model, optimizer = _loop_setup()
    calls = []
    history = fit(model, optimizer, None, lambda s: [stream.batch(s)], steps=10, log_every=3,
                  progress=False, on_log=calls.append, stop=lambda: len(calls) >= 2)
    assert [r["step"] for r in history] == [3, 6] and history.last_step == 6
    assert calls == list(history)
    keys = {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}
    assert all(keys <= set(r) for r in history)


def test_fit_evaluates_on_schedule_and_at_the_last_step():
    task, stream, model, optimizer = _loop_setup()
    evaluate_fn = lambda m: evaluate(m, task.valid, task.src_vocab, task.tgt_vocab)  # noqa: E731
    history = fit(model, optimizer, None, lambda s: [stream.batch(s)], steps=7, start_step=1,
                  log_every=2, eval_every=3, evaluate_fn=evaluate_fn, progress=False)
    assert [r["step"] for r in history] == [2, 3, 4, 6, 7]
    assert [("exact_match" in r) for r in history] == [False, True, False, True, True]


def test_evaluation_does_not_change_the_training_run():
    """With dropout, training draws random numbers; an evaluation that draws some too (and
    leaves eval mode on) must change neither the global random state nor the parameters."""
    results = []
    for evaluate_too in (False, True):
        task, stream, model, optimizer = _loop_setup(dropout=0.3)

        def noisy_evaluation(m):
            torch.rand(100)                       # draws from the global generator
            m.eval()                              # and does not restore train mode
            return {"exact_match": 0.5}

        modes = []

        def batch_at(step, model=model, stream=stream, modes=modes):
            modes.append(model.training)
            return [stream.batch(step)]

        torch.manual_seed(0)
        fit(model, optimizer, None, batch_at, steps=6, log_every=2, progress=False,
            eval_every=2 if evaluate_too else 0,
            evaluate_fn=noisy_evaluation if evaluate_too else None)
        assert all(modes)
        results.append((torch.get_rng_state(), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_fit_rejects_bad_arguments():
    task, stream, model, optimizer = _loop_setup()
    batch_at = lambda s: [stream.batch(s)]  # noqa: E731
    for bad in (dict(steps=0), dict(steps=5, start_step=6), dict(steps=5, log_every=0),
                dict(steps=5, eval_every=2), dict(steps=5, precision="fp8")):
        with pytest.raises(ValueError):
            fit(model, optimizer, None, batch_at, progress=False, **bad)


# ---- recipes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task", data.TASKS)
def test_recipes_build_a_model_and_a_schedule_peaking_at_lr(task):
    recipe = RECIPES[task]
    assert set(recipe) == RECIPE_KEYS
    vocab_src, vocab_tgt = (len(data.CharVocab(chars)) for chars in data.ALPHABETS[task])
    with torch.device("meta"):
        model = model_from_recipe(recipe, vocab_src, vocab_tgt)
    assert model.config.n_encoder_layers == model.config.n_decoder_layers == recipe["layers"]
    model = model_from_recipe(dict(recipe, d_model=8, heads=2, d_ff=8, layers=1), vocab_src,
                              vocab_tgt)
    optimizer, scheduler = make_optimizer(model, dict(recipe, d_model=8))
    rates = []
    for _ in range(recipe["warmup"] + 5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(recipe["lr"]) and rates.index(max(rates)) == recipe["warmup"] - 1


def test_history_is_a_plain_list_of_dicts(overfit_copy):
    task, src, tgt, model = overfit_copy
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    history = fit(model, optimizer, None, lambda s: [(src, tgt)], steps=2, log_every=1,
                  progress=False)
    assert isinstance(history, list) and len(history) == 2 and history.last_step == 2
    assert json.loads(json.dumps(history)) == list(history)
