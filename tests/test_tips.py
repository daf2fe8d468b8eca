"""scratchformer.tips: scheduled sampling, the pointer-generator and its template task, guided
attention, and the loss_fn hook of the training loop they train through."""

import math

import pytest
import torch

from scratchformer import data, tips
from scratchformer.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from scratchformer.model import Transformer, TransformerConfig
from scratchformer.training import fit, micro_batch_loss, train_step


def tiny(vocab=12, **options):
    config = dict(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ff=32,
                  dropout=0.0, norm_first=True)
    return TransformerConfig(vocab, vocab, **{**config, **options})


def copy_batch(seed=0, B=6):
    task = data.make_task("copy", n_train=40, n_valid=0, n_test=0, seed=seed)
    pairs = data.PairDataset(task.train, task.src_vocab, task.tgt_vocab)
    return data.collate([pairs[i] for i in range(B)], PAD_ID), task


# ---- scheduled sampling -----------------------------------------------------------------------

def test_inverse_sigmoid_decay():
    k = 50.0
    assert tips.inverse_sigmoid_decay(0, k) == pytest.approx(k / (k + 1))
    assert tips.inverse_sigmoid_decay(k * math.log(k), k) == pytest.approx(0.5)
    assert tips.inverse_sigmoid_decay(1e9, k) == pytest.approx(0.0)     # no overflow
    steps = torch.arange(0, 2000, 100.0)
    values = tips.inverse_sigmoid_decay(steps, k)
    expected = k / (k + torch.exp(steps / k))
    assert torch.allclose(values, expected.float(), atol=1e-6)
    assert bool((values[1:] <= values[:-1]).all())                       # falls
    with pytest.raises(ValueError, match="k"):
        tips.inverse_sigmoid_decay(3, 0.5)
    with pytest.raises(ValueError, match="step"):
        tips.inverse_sigmoid_decay(-1, 10)


def test_scheduled_sampling_with_probability_1_is_teacher_forcing_exactly():
    (src, tgt), task = copy_batch()
    V = len(task.src_vocab)
    torch.manual_seed(0)
    model = Transformer(tiny(V, dropout=0.2))         # dropout: the random stream must match
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses, grads = [], []
    for loss_fn in (micro_batch_loss, tips.ScheduledSampling(1.0)):
        model.load_state_dict(state)
        model.zero_grad()
        torch.manual_seed(7)
        loss = loss_fn(model, src, tgt, epsilon=0.1, precision="fp32")
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(grads[0], grads[1])


def test_mix_predictions():
    (src, tgt), task = copy_batch()
    torch.manual_seed(0)
    model = Transformer(tiny(len(task.src_vocab)))
    tgt_in = tgt[:, :-1]
    assert torch.equal(tips.mix_predictions(model, src, tgt_in, 1.0), tgt_in)
    own = tips.mix_predictions(model, src, tgt_in, 0.0)
    assert torch.equal(own[:, 0], tgt_in[:, 0])                           # <s> stays
    assert torch.equal(own[tgt_in == PAD_ID], tgt_in[tgt_in == PAD_ID])  # padding stays
    guess = model(src, tgt_in).argmax(-1)
    real = (tgt_in != PAD_ID)[:, 1:]
    assert torch.equal(own[:, 1:][real], guess[:, :-1][real])            # shifted guesses
    assert not bool((own == PAD_ID)[tgt_in != PAD_ID].any())             # never padding
    g = torch.Generator().manual_seed(3)
    half = tips.mix_predictions(model, src, tgt_in, 0.5, generator=g)
    assert bool(((half == tgt_in) | (half == own)).all())
    with pytest.raises(ValueError, match="gold_prob"):
        tips.mix_predictions(model, src, tgt_in, 1.5)


def test_scheduled_sampling_trains_through_fit():
    (src, tgt), task = copy_batch()
    torch.manual_seed(0)
    model = Transformer(tiny(len(task.src_vocab)))
    sampler = tips.ScheduledSampling()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []

    def batch_at(step):
        sampler.gold_prob = tips.inverse_sigmoid_decay(step, 3.0)
        seen.append(sampler.gold_prob)
        return [(src, tgt)]

    history = fit(model, optimizer, None, batch_at, steps=30, log_every=10, progress=False,
                  loss_fn=sampler)
    assert seen[0] > seen[-1] and history[-1]["loss"] < history[0]["loss"]


def test_accuracy_by_position():
    _, task = copy_batch()
    torch.manual_seed(0)
    model = Transformer(tiny(len(task.src_vocab)))
    out = tips.accuracy_by_position(model, task.train[:20], task.src_vocab, task.tgt_vocab)
    T = max(len(t) for _, t in task.train[:20]) + 1
    assert len(out["greedy"]) == len(out["teacher_forced"]) == len(out["n"]) == T
    assert out["n"][0] == 20 and all(0 <= a <= 1 for a in out["greedy"])
    assert 0 <= out["exact_match"] <= 1


# ---- the template task and the pointer-generator ----------------------------------------------

def test_template_task_name_and_number_sets_are_disjoint():
    task = tips.make_template_task(500, n_valid=50, n_test=100, seed=0)
    assert not set(task.train_names) & set(task.test_names)
    assert not set(task.train_numbers) & set(task.test_numbers)
    train_words = {w for pair in task.train + task.valid for side in pair for w in side.split()}
    test_slots = {w for pair in task.test for w in pair[0].split()
                  if w in set(task.test_names) | set(task.test_numbers)}
    assert test_slots and not test_slots & train_words
    assert all(any(w in task.test_names for w in s.split()) for s, _ in task.test)
    again = tips.make_template_task(500, n_valid=50, n_test=100, seed=0)
    assert again.train == task.train and again.test == task.test            # deterministic


def test_word_vocab_extends_unknown_source_words():
    vocab = tips.WordVocab(["call bob at 12", "call bob", "call bob"], min_count=2)
    assert vocab.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and "bob" in vocab.ids
    src, tgt, oov = vocab.extend("call zoe at 99 zoe", "zoe 99 xx bob")
    V = len(vocab)
    assert oov == ["zoe", "at", "99"]
    assert src == [vocab.ids["call"], V, V + 1, V + 2, V, EOS_ID]
    assert tgt == [BOS_ID, V, V + 2, UNK_ID, vocab.ids["bob"], EOS_ID]
    assert vocab.words(tgt, oov) == "zoe 99 <unk> bob"


def test_final_distribution_sums_to_one_and_copies_an_unseen_word():
    g = torch.Generator().manual_seed(0)
    V, B, T, S = 10, 3, 4, 5
    src = torch.tensor([[5, 11, 11, 2, 0], [12, 4, 2, 0, 0], [6, 7, 8, 9, 2]])   # 11, 12 unseen
    logits = torch.randn(B, T, V, generator=g)
    scores = torch.randn(B, T, S, generator=g)
    p_gen = torch.rand(B, T, 1, generator=g)
    p = tips.final_distribution(logits, scores, p_gen, src)
    assert p.shape == (B, T, 13)
    assert torch.allclose(p.sum(-1), torch.ones(B, T), atol=1e-6)
    # p_gen = 0 and all attention on the unseen word: all the mass on its extended id
    focus = torch.full((B, T, S), -1e4)
    focus[0, :, 1] = 1e4
    p = tips.final_distribution(logits, focus, torch.zeros(B, T, 1), src)
    assert torch.allclose(p[0, :, 11], torch.ones(T))
    # padded positions get no copy mass, whatever their scores
    scores[:, :, -1] = 50.0
    p = tips.final_distribution(logits, scores, torch.zeros(B, T, 1), src)
    assert torch.allclose(p[:2, :, 0], torch.zeros(2, T))


def test_pointer_generator_copies_an_unseen_name():
    """Trained for a few hundred steps on templates, the pointer-generator writes test names it
    never saw; the plain Transformer can only write <unk> there."""
    torch.manual_seed(0)
    task = tips.make_template_task(800, n_valid=0, n_test=40, seed=0, n_names=100)
    vocab = tips.WordVocab([f"{s} {t}" for s, t in task.train], min_count=3)
    train, test = tips.encode_pairs(task.train, vocab), tips.encode_pairs(task.test, vocab)
    config = tiny(len(vocab), d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1,
                  n_decoder_layers=1)
    model = tips.PointerGenerator(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(model, optimizer, None,
        lambda step: [tips.template_batch(train, step, 32, len(vocab))],
        steps=250, epsilon=0.0, log_every=50, progress=False, loss_fn=tips.pointer_loss)
    exact, outputs = tips.template_exact_match(model, test, vocab)
    assert exact >= 0.5, outputs[:5]
    names = set(task.test_names)
    assert any(w in names for text in outputs for w in text.split())
    src0, tgt0, _ = test[0]
    log_p, p_gen, attention = model.parts(src0[None], tgt0[None, :-1])
    assert attention.shape == (1, len(tgt0) - 1, len(src0))
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(1, log_p.shape[1]), atol=1e-5)
    assert p_gen.shape == (1, log_p.shape[1], 1) and bool(((0 <= p_gen) & (p_gen <= 1)).all())


def test_pointer_loss_is_a_mean_over_labels():
    torch.manual_seed(0)
    model = tips.PointerGenerator(tiny(10))
    src = torch.tensor([[5, 11, 2, 0], [4, 6, 7, 2]])
    tgt = torch.tensor([[1, 11, 5, 2, 0], [1, 4, 2, 0, 0]])
    log_p = model(src, tgt[:, :-1])
    labels = tgt[:, 1:]
    real = labels != 0
    expected = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)[real].mean()
    assert torch.allclose(tips.pointer_loss(model, src, tgt, epsilon=0.0), expected)


# ---- guided attention -------------------------------------------------------------------------

def test_guided_weights_zero_on_the_diagonal_and_padding():
    W = tips.guided_attention_weights([4, 2], [4, 3], S=4, T=5, g=0.2)
    assert W.shape == (2, 5, 4) and W.dtype == torch.float32
    assert torch.equal(W[0].diagonal(), torch.zeros(4))          # N = T: the diagonal is free
    assert bool((W[0, 4] == 0).all()) and bool((W[1, :, 2:] == 0).all())   # padding
    assert bool((W[1, 3:] == 0).all())
    assert W[0, 0, 3] == pytest.approx(1 - math.exp(-(3 / 4) ** 2 / (2 * 0.04)))


def test_guided_loss_zero_on_a_diagonal_alignment_positive_off_it_padding_ignored():
    B, H, T, S = 2, 3, 6, 6
    src_keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    label_keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    diagonal = torch.eye(T).expand(B, H, T, S).clone()
    assert tips.guided_attention_loss(diagonal, src_keep, label_keep).item() == 0.0
    anti = torch.zeros(B, H, T, S)
    anti[0] = torch.eye(T).flip(-1)
    anti[1, :, :4, :4] = torch.eye(4).flip(-1)
    assert tips.guided_attention_loss(anti, src_keep, label_keep).item() > 0.3
    # whatever padded queries or padded keys hold costs nothing
    noisy = diagonal.clone()
    noisy[1, :, 4:] = torch.rand(H, 2, S)               # padded queries
    noisy[1, :, :4, 4:] = 0.0
    assert tips.guided_attention_loss(noisy, src_keep, label_keep).item() == 0.0
    also = diagonal.clone()
    also[1, :, :4] = 0.5 * also[1, :, :4]
    also[1, :, :4, 4:] = 0.25                           # mass on padded keys
    assert tips.guided_attention_loss(also, src_keep, label_keep).item() == 0.0


def test_guided_attention_loss_fn_adds_the_penalty_and_trains():
    (src, tgt), task = copy_batch()
    torch.manual_seed(0)
    model = Transformer(tiny(len(task.src_vocab)))
    base = micro_batch_loss(model, src, tgt, epsilon=0.1)
    guided = tips.GuidedAttention(weight=2.0)
    total = guided(model, src, tgt, epsilon=0.1, precision="fp32")
    assert 0 < guided.last_penalty < 1
    assert total.item() == pytest.approx(base.item() + 2.0 * guided.last_penalty, rel=1e-5)
    total.backward()
    cross = model.decoder.layers[0].cross_attn.in_proj.weight.grad
    assert cross is not None and cross.abs().sum() > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    out = train_step(model, [(src, tgt)], optimizer, loss_fn=guided)
    assert out["loss"] == pytest.approx(total.item(), rel=1e-5)
    # the hooks are gone afterwards: a plain forward returns no weights
    assert not any(m._forward_hooks for m in model.modules() if hasattr(m, "_forward_hooks"))
