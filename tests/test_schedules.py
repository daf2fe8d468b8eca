"""Chapter 11: the Noam rate and warmup + cosine decay as closed forms and as LambdaLR schedulers
driving a real optimizer, their validation, and the gradients that motivate warmup."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from scratchformer.model import Transformer, TransformerConfig
from scratchformer.schedules import (
    noam_rate,
    noam_schedule,
    warmup_cosine_ratio,
    warmup_cosine_schedule,
)

# ---- the closed forms -------------------------------------------------------------------------


def test_noam_rate_equals_the_formula_of_the_paper():
    # during the warmup: d^-0.5 · step · warmup^-1.5; after it: d^-0.5 · step^-0.5
    assert math.isclose(noam_rate(10, 512, 4000), 512**-0.5 * 10 * 4000**-1.5, rel_tol=1e-12)
    assert math.isclose(noam_rate(9000, 512, 4000), 512**-0.5 * 9000**-0.5, rel_tol=1e-12)
    assert math.isclose(noam_rate(7, 64, 100, factor=2.5), 2.5 / 8 * 7 / 1000, rel_tol=1e-12)
    assert math.isclose(noam_rate(400, 64, 100, factor=2.5), 2.5 / 8 / 20, rel_tol=1e-12)
    # the base model's peak, 1 / sqrt(512 · 4000)
    assert math.isclose(noam_rate(4000, 512, 4000), 6.987712429686843e-4, rel_tol=1e-12)


@pytest.mark.parametrize("d_model, warmup, factor", [(512, 4000, 1.0), (64, 37, 3.0),
                                                     (256, 1, 0.5), (10, 250, 2.0)])
def test_noam_peaks_at_the_end_of_the_warmup(d_model, warmup, factor):
    rates = [noam_rate(k, d_model, warmup, factor) for k in range(1, 3 * warmup + 10)]
    peak = int(np.argmax(rates)) + 1
    assert peak == warmup
    assert math.isclose(rates[peak - 1], factor * (d_model * warmup) ** -0.5, rel_tol=1e-12)
    rising, falling = rates[:warmup], rates[warmup - 1:]
    assert all(a < b for a, b in zip(rising, rising[1:]))             # linear warmup
    assert all(a > b for a, b in zip(falling, falling[1:]))           # inverse square root
    if warmup > 1:
        assert math.isclose(rates[1] - rates[0], rates[warmup - 1] - rates[warmup - 2])


def test_step_zero_counts_as_step_one_and_the_result_is_a_float():
    for args in [(512, 4000), (1, 1), (64, 10, 3.0)]:
        zero = noam_rate(0, *args)
        assert zero == noam_rate(1, *args) and math.isfinite(zero) and zero > 0
        assert type(zero) is float
    assert warmup_cosine_ratio(0, 10, 50) == warmup_cosine_ratio(1, 10, 50) == 0.1
    out = noam_rate(np.int64(5), np.int64(64), np.int64(10))           # NumPy ints accepted
    assert type(out) is float and math.isclose(out, noam_rate(5, 64, 10))
    assert type(warmup_cosine_ratio(np.int64(30), 10, 50, 0.2)) is float


def test_warmup_cosine_ratio_at_its_landmarks():
    W, T, m = 10, 50, 0.2
    assert warmup_cosine_ratio(1, W, T, m) == 1 / W                   # from ~0, not from m
    assert [warmup_cosine_ratio(k, W, T, m) for k in (3, W)] == [3 / W, 1.0]
    assert math.isclose(warmup_cosine_ratio((W + T) // 2, W, T, m), m + (1 - m) / 2)
    assert math.isclose(warmup_cosine_ratio(T, W, T, m), m)
    assert all(warmup_cosine_ratio(k, W, T, m) == m for k in (T + 1, 2 * T, 10**6))
    assert warmup_cosine_ratio(T, W, T) == 0.0                           # default min_ratio
    decay = [warmup_cosine_ratio(k, W, T, m) for k in range(W, T + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    # the cosine is symmetric about the middle of the decay: r(W + i) - m = (1 - m) - (r(T - i) - m)
    for i in range(T - W + 1):
        assert math.isclose(warmup_cosine_ratio(W + i, W, T, m) - m,
                            (1 - m) - (warmup_cosine_ratio(T - i, W, T, m) - m), abs_tol=1e-12)


def test_warmup_one_means_no_warmup_and_warmup_equal_to_total_means_no_decay():
    assert warmup_cosine_ratio(1, 1, 20, 0.1) == 1.0
    assert [warmup_cosine_ratio(k, 8, 8, 0.3) for k in (1, 8, 9, 100)] == [1 / 8, 1.0, 0.3, 0.3]
    assert warmup_cosine_ratio(5, 5, 5, 1.0) == warmup_cosine_ratio(6, 5, 5, 1.0) == 1.0


# ---- the schedulers drive a real optimizer ------------------------------------------------------

def lrs_under(scheduler_factory, base_lrs, n_steps):
    """The learning rate of every parameter group at optimizer steps 1..n_steps, with a real Adam
    taking real steps and scheduler.step() after each: (n_steps, groups)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)) for _ in base_lrs]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)],
                                 betas=(0.9, 0.98), eps=1e-9)
    scheduler = scheduler_factory(optimizer)
    used = []
    for _ in range(n_steps):
        used.append([group["lr"] for group in optimizer.param_groups])   # the lr of this step
        loss = sum((p**2).sum() for p in params)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return np.array(used)


def test_noam_schedule_runs_step_k_at_noam_rate_k_whatever_the_base_lr():
    N, d_model, warmup, factor = 700, 96, 150, 1.7
    used = lrs_under(lambda o: noam_schedule(o, d_model, warmup, factor), [0.3, 2e-5], N)
    closed = np.array([noam_rate(k, d_model, warmup, factor) for k in range(1, N + 1)])
    np.testing.assert_allclose(used, np.stack([closed, closed], axis=1), rtol=1e-12, atol=0)
    assert int(np.argmax(used[:, 0])) + 1 == warmup


@pytest.mark.parametrize("warmup, total, min_ratio", [(25, 300, 0.0), (1, 120, 0.25),
                                                      (40, 40, 0.5), (7, 90, 1.0)])
def test_warmup_cosine_schedule_runs_step_k_at_base_lr_times_ratio_k(warmup, total, min_ratio):
    N, base = total + 30, [0.01, 0.7]
    used = lrs_under(lambda o: warmup_cosine_schedule(o, warmup, total, min_ratio), base, N)
    ratios = np.array([warmup_cosine_ratio(k, warmup, total, min_ratio) for k in range(1, N + 1)])
    np.testing.assert_allclose(used, ratios[:, None] * np.array(base)[None, :], rtol=1e-12)
    np.testing.assert_allclose(used[-1], min_ratio * np.array(base), rtol=1e-12)


def test_the_schedule_comparison_bites():
    """The Annotated Transformer's convention (lambda step: rate(step) with step 0 as 1) runs
    optimizer step k at the rate of step k - 1: the comparison above must catch it."""
    N, d_model, warmup = 300, 64, 100
    shifted = lrs_under(lambda o: LambdaLR(o, lambda e: noam_rate(e, d_model, warmup)), [1.0], N)
    closed = np.array([noam_rate(k, d_model, warmup) for k in range(1, N + 1)])
    assert shifted[0, 0] == closed[0] and shifted[1, 0] == closed[0] != closed[1]
    assert not np.allclose(shifted[:, 0], closed, rtol=1e-12, atol=0)
    assert int(np.argmax(shifted[:, 0])) + 1 == warmup + 1                  # the peak is late


def test_scheduler_state_resumes_with_weights_only_loading():
    """Save after 60 steps, rebuild optimizer and scheduler, load both: the next learning rates
    are those of the uninterrupted run."""
    def build():
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4))
        optimizer = torch.optim.Adam([weight], lr=0.05)
        return weight, optimizer, warmup_cosine_schedule(optimizer, 20, 100, 0.1)

    def run(weight, optimizer, scheduler, n):
        lrs = []
        for _ in range(n):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
            scheduler.step()
        return lrs

    full = run(*build(), 100)
    weight, optimizer, scheduler = build()
    run(weight, optimizer, scheduler, 60)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "weight": weight.detach()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    weight, optimizer, scheduler = build()
    with torch.no_grad():
        weight.copy_(state["weight"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert run(weight, optimizer, scheduler, 40) == full[60:]
    noam = noam_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 64, 10)
    buffer = io.BytesIO()
    torch.save(noam.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["last_epoch"] == 0


# ---- bad arguments ------------------------------------------------------------------------------

def _sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("call, message", [
    (lambda: noam_rate(-1, 512, 4000), "step must be an int >= 0"),
    (lambda: noam_rate(1.5, 512, 4000), "step must be an int"),
    (lambda: noam_rate(1, 0, 4000), "d_model must be a positive int"),
    (lambda: noam_rate(1, 512, 0), "warmup must be a positive int"),
    (lambda: noam_rate(1, 512, -10), "warmup must be a positive int"),
    (lambda: noam_rate(1, 512, 4000, factor=0.0), "factor must be a finite number > 0"),
    (lambda: noam_rate(1, 512, 4000, factor=float("nan")), "factor must be a finite number > 0"),
    (lambda: noam_rate(True, 512, 4000), "step must be an int"),
    (lambda: warmup_cosine_ratio(1, 0, 10), "warmup must be a positive int"),
    (lambda: warmup_cosine_ratio(1, 5, 0), "total_steps must be a positive int"),
    (lambda: warmup_cosine_ratio(1, 20, 10), "warmup=20 is larger than total_steps=10"),
    (lambda: warmup_cosine_ratio(1, 5, 10, -0.1), "min_ratio must lie in \\[0, 1\\]"),
    (lambda: warmup_cosine_ratio(1, 5, 10, 1.5), "min_ratio must lie in \\[0, 1\\]"),
    (lambda: noam_schedule(_sgd(), 0, 10), "d_model must be a positive int"),
    (lambda: noam_schedule(_sgd(), 64, 0), "warmup must be a positive int"),
    (lambda: noam_schedule(_sgd(0.0), 64, 10), "must be a finite number > 0 \\(the schedule "
                                               "divides by it\\)"),
    (lambda: noam_schedule("adam", 64, 10), "optimizer must be a torch.optim.Optimizer"),
    (lambda: warmup_cosine_schedule(_sgd(), 0, 10), "warmup must be a positive int"),
    (lambda: warmup_cosine_schedule(_sgd(), 5, -3), "total_steps must be a positive int"),
    (lambda: warmup_cosine_schedule(_sgd(), 11, 10), "larger than total_steps"),
    (lambda: warmup_cosine_schedule(_sgd(), 5, 10, 2.0), "min_ratio must lie in"),
    (lambda: warmup_cosine_schedule(None, 5, 10), "optimizer must be a torch.optim.Optimizer"),
], ids=lambda value: None)
def test_bad_arguments_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_lr_zero_is_fine_for_the_cosine_schedule():
    """It multiplies the base lr (0 stays 0); only the Noam schedule divides by it."""
    optimizer = _sgd(0.0)
    warmup_cosine_schedule(optimizer, 5, 10)
    assert optimizer.param_groups[0]["lr"] == 0.0


# ---- why warmup: the gradients at initialisation -------------------------------------------------

def _layer_gradient_norms(norm_first: bool, seed: int) -> torch.Tensor:
    """Per encoder and decoder layer, the norm of its parameters' gradient for one batch of a
    small reverse-like task at initialisation."""
    torch.manual_seed(seed)
    V, B, S = 14, 16, 8
    model = Transformer(TransformerConfig(V, V, d_model=64, n_heads=4, n_encoder_layers=3,
                                          n_decoder_layers=3, d_ff=128, dropout=0.0,
                                          norm_first=norm_first))
    g = torch.Generator().manual_seed(1000 + seed)
    src = torch.randint(4, V, (B, S), generator=g)
    tgt = torch.cat([torch.ones(B, 1, dtype=torch.long), src.flip(1),
                     torch.full((B, 1), 2)], dim=1)                    # <s> reversed </s>
    logits = model(src, tgt[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()).backward()
    layers = [*model.encoder.layers, *model.decoder.layers]
    return torch.stack([torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
                        for layer in layers])


def test_post_ln_has_larger_gradients_near_the_output_at_initialisation():
    """Xiong et al. (2020): at initialisation post-LN's gradients near the output are larger
    than pre-LN's. Seeded, paired (the same initial weights for both placements), every seed."""
    for seed in range(4):
        post, pre = _layer_gradient_norms(False, seed), _layer_gradient_norms(True, seed)
        assert post[-1] > 1.1 * pre[-1], (seed, post, pre)        # the last decoder layer
        assert (post > pre).all(), (seed, post, pre)              # here: every layer
