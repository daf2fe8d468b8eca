"""Chapter 10: the label-smoothed loss. Parity with F.cross_entropy (float32 and bfloat16
autocast), padding invariance, token-weighted gradient accumulation, all-padding rows and
batches, epsilon = 0, the closed-form minimum, the smoothed targets, low precision, stability,
pad_id != 0, inputs unchanged and clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from scratchformer.losses import label_smoothed_loss, minimum_loss, smoothed_targets

PAD = 0


def padded_batch(lengths, V=14, pad_id=PAD, seed=0, scale=3.0):
    """Logits (B, T, V) and right-padded targets (B, T) with real ids != pad_id."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    real = torch.randint(0, V - 1, (B, T), generator=g)
    real = real + (real >= pad_id).long()                       # never pad_id
    target = torch.where(torch.arange(T) < torch.tensor(lengths)[:, None], real,
                         torch.full_like(real, pad_id))
    logits = scale * torch.randn(B, T, V, generator=g)
    return logits, target


def torch_loss(logits, target, epsilon, pad_id=PAD):
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=pad_id,
                           label_smoothing=epsilon)


def reference_v_minus_2(logits, target, epsilon, pad_id=PAD):
    """Ours, written independently: an explicit loop over the real tokens, in float64."""
    V = logits.size(-1)
    total, count = 0.0, 0
    log_p = F.log_softmax(logits.double(), dim=-1)
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            y = int(target[b, t])
            if y == pad_id:
                continue
            others = [k for k in range(V) if k not in (y, pad_id)]
            total += -(1 - epsilon) * log_p[b, t, y] - epsilon / (V - 2) * log_p[b, t, others].sum()
            count += 1
    return torch.tensor(float(total) / max(count, 1), dtype=torch.float32)


# ---- parity with PyTorch's convention ----------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("pad_id", [0, 5])
def test_pad_gets_mass_equals_f_cross_entropy_in_float32(epsilon, pad_id):
    logits, target = padded_batch([6, 2, 4, 1], V=11, pad_id=pad_id, seed=pad_id)
    ours = label_smoothed_loss(logits, target, epsilon, pad_id, pad_gets_mass=True)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    torch.testing.assert_close(ours, torch_loss(logits, target, epsilon, pad_id))


def test_pad_gets_mass_equals_f_cross_entropy_under_bfloat16_autocast():
    torch.manual_seed(0)
    _, target = padded_batch([5, 3, 1], V=13)
    generator = torch.nn.Linear(16, 13)
    h = torch.randn(3, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = generator(h)
        ours = label_smoothed_loss(logits, target, 0.1, PAD, pad_gets_mass=True)
        reference = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD,
                                    label_smoothing=0.1)
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference)
    # and the gradients reaching the model agree too
    ours.backward(retain_graph=True)               # the logits' graph is shared
    mine = generator.weight.grad.clone()
    generator.zero_grad()
    reference.backward()
    torch.testing.assert_close(mine, generator.weight.grad)


def test_v_minus_2_convention_against_an_explicit_loop():
    for seed, pad_id in [(0, 0), (1, 3), (2, 12)]:
        logits, target = padded_batch([5, 1, 3], V=13, pad_id=pad_id, seed=seed)
        torch.testing.assert_close(label_smoothed_loss(logits, target, 0.2, pad_id),
                                   reference_v_minus_2(logits, target, 0.2, pad_id))


def test_the_conventions_differ_and_pad_gets_mass_puts_mass_on_pad():
    logits, target = padded_batch([4, 2], V=7)
    ours = label_smoothed_loss(logits, target, 0.2)
    pytorch = label_smoothed_loss(logits, target, 0.2, pad_gets_mass=True)
    assert abs(ours - pytorch) > 1e-3
    # ours gives <pad> no mass: a larger pad logit only takes probability away from the
    # classes the target wants, so our loss grows; PyTorch's target wants some of it
    higher_pad = logits.clone()
    higher_pad[..., PAD] += 3.0
    assert label_smoothed_loss(higher_pad, target, 0.2) > ours
    lower_pad = logits.clone()
    lower_pad[..., PAD] -= 30.0                      # p(<pad>) -> 0: PyTorch's loss grows
    assert label_smoothed_loss(lower_pad, target, 0.2) < ours
    assert label_smoothed_loss(lower_pad, target, 0.2, pad_gets_mass=True) > pytorch


@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_epsilon_zero_is_plain_cross_entropy(pad_gets_mass):
    logits, target = padded_batch([7, 3, 5, 2], V=9, seed=3)
    plain = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD)
    torch.testing.assert_close(label_smoothed_loss(logits, target, 0.0, PAD, pad_gets_mass), plain)


# ---- padding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_padded_batch_equals_batch_with_pad_positions_deleted(pad_gets_mass):
    logits, target = padded_batch([6, 2, 4, 1], seed=1)
    real = target != PAD
    packed = label_smoothed_loss(logits[real][None], target[real][None], 0.1, PAD, pad_gets_mass)
    torch.testing.assert_close(label_smoothed_loss(logits, target, 0.1, PAD, pad_gets_mass), packed)
    # whatever the model writes at the padded positions does not matter
    noisy = torch.where(real[..., None], logits, 1e4 * torch.randn_like(logits))
    torch.testing.assert_close(label_smoothed_loss(noisy, target, 0.1, PAD, pad_gets_mass), packed)
    # nor how much padding the batch carries
    wider = label_smoothed_loss(F.pad(logits, (0, 0, 0, 5)), F.pad(target, (0, 5), value=PAD),
                                0.1, PAD, pad_gets_mass)
    torch.testing.assert_close(wider, packed)


@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_an_all_padding_row_gives_no_nan_and_changes_nothing(pad_gets_mass):
    logits, target = padded_batch([5, 3, 4], seed=2)
    target[1] = PAD                                               # an empty sentence
    logits.requires_grad_(True)
    loss = label_smoothed_loss(logits, target, 0.1, PAD, pad_gets_mass)
    assert torch.isfinite(loss)
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(loss, label_smoothed_loss(logits[keep], target[keep], 0.1, PAD,
                                                         pad_gets_mass))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()


@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_an_all_padding_batch_returns_zero_and_is_differentiable(pad_gets_mass):
    logits = torch.randn(2, 3, 8, requires_grad=True)
    loss = label_smoothed_loss(logits, torch.full((2, 3), PAD), 0.1, PAD, pad_gets_mass)
    assert loss.item() == 0.0 and loss.dtype == torch.float32 and loss.requires_grad
    loss.backward()
    assert (logits.grad == 0).all()
    # F.cross_entropy, for comparison, gives 0 / 0
    assert torch.isnan(torch_loss(logits.detach(), torch.full((2, 3), PAD), 0.1))


def test_pad_id_other_than_zero_is_honoured():
    """Relabelling the vocabulary so that <pad> moves from id 0 to id 4 (and 4 to 0) must not
    change the loss: every use of pad_id moves with it."""
    logits, target = padded_batch([5, 2, 3], V=10, seed=4)
    target[0, 0] = 4
    swap = torch.arange(10)
    swap[0], swap[4] = 4, 0
    moved_logits, moved_target = logits[..., swap], swap[target]
    assert (moved_target == 0).any() and (moved_target == 4).any()
    for pad_gets_mass in (False, True):
        torch.testing.assert_close(
            label_smoothed_loss(moved_logits, moved_target, 0.15, 4, pad_gets_mass),
            label_smoothed_loss(logits, target, 0.15, 0, pad_gets_mass))
    # and pad_id=0 on the moved batch is a different loss (0 is a real token there)
    assert abs(label_smoothed_loss(moved_logits, moved_target, 0.15, 0)
               - label_smoothed_loss(logits, target, 0.15, 0)) > 1e-3


# ---- normalising by tokens: gradient accumulation ----------------------------------------------

@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_four_micro_batches_weighted_by_tokens_equal_one_batch(pad_gets_mass):
    torch.manual_seed(0)
    lengths = [7, 2, 5, 1]                                        # different lengths
    V, D = 14, 8
    model = torch.nn.Linear(D, V)
    h = torch.randn(len(lengths), max(lengths), D)
    _, target = padded_batch(lengths, V=V, seed=5)

    def step(micro_batches, weights):
        model.zero_grad()
        total = 0.0
        for (h_i, target_i), w in zip(micro_batches, weights):
            loss = w * label_smoothed_loss(model(h_i), target_i, 0.1, PAD, pad_gets_mass)
            loss.backward()
            total = total + loss.detach()
        return total, model.weight.grad.clone(), model.bias.grad.clone()

    whole = step([(h, target)], [1.0])
    micro = [(h[b:b + 1, :n], target[b:b + 1, :n]) for b, n in enumerate(lengths)]
    N = sum(lengths)
    weighted = step(micro, [n / N for n in lengths])
    for a, b in zip(whole, weighted):
        torch.testing.assert_close(a, b)
    # the same with the micro-batches kept padded to the full length
    padded_micro = [(h[b:b + 1], target[b:b + 1]) for b in range(len(lengths))]
    for a, b in zip(whole, step(padded_micro, [n / N for n in lengths])):
        torch.testing.assert_close(a, b)
    # the mean of the per-micro-batch means is a different loss and gradient
    mean_of_means = step(micro, [1 / len(lengths)] * len(lengths))
    assert abs(mean_of_means[0] - whole[0]) > 1e-2
    assert (mean_of_means[1] - whole[1]).norm() > 0.05 * whole[1].norm()


# ---- the minimum -------------------------------------------------------------------------------

def closed_form(V, eps, pad_gets_mass):
    if pad_gets_mass:
        gold, other = 1 - eps + eps / V, eps / V
        return -gold * math.log(gold) - (V - 1) * other * math.log(other) if eps else 0.0
    if eps == 0:
        return 0.0
    return -(1 - eps) * math.log(1 - eps) - eps * math.log(eps / (V - 2))


@pytest.mark.parametrize("V, eps", [(14, 0.1), (5, 0.3), (1000, 0.1), (3, 0.05)])
@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_minimum_loss_is_the_entropy_of_the_target(V, eps, pad_gets_mass):
    assert math.isclose(minimum_loss(V, eps, pad_gets_mass), closed_form(V, eps, pad_gets_mass),
                        rel_tol=1e-12)


@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_the_loss_reaches_its_closed_form_minimum_at_p_equals_q(pad_gets_mass):
    V, eps, gold = 14, 0.1, 5
    target = torch.tensor([[gold, 7]])
    q = smoothed_targets(target, V, eps, PAD, pad_gets_mass)
    at_q = label_smoothed_loss(q.clamp(min=1e-30).log(), target, eps, PAD, pad_gets_mass)
    floor = minimum_loss(V, eps, pad_gets_mass)
    assert floor > 0.5
    assert abs(at_q.item() - floor) < 1e-5
    # and nowhere lower: random logits and optimised logits stay above it
    z = torch.zeros(1, 2, V, requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=0.2)
    for _ in range(400):
        loss = label_smoothed_loss(z, target, eps, PAD, pad_gets_mass)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert -1e-5 < loss.item() - floor < 2e-3
    for seed in range(5):
        random_logits = 5 * torch.randn(1, 2, V, generator=torch.Generator().manual_seed(seed))
        assert label_smoothed_loss(random_logits, target, eps, PAD, pad_gets_mass) > floor


def test_minimum_loss_edge_cases():
    assert minimum_loss(9, 0.0) == 0.0 and minimum_loss(9, 0.0, True) == 0.0
    assert math.isclose(minimum_loss(6, 1.0), math.log(4))            # uniform over V - 2
    assert math.isclose(minimum_loss(6, 1.0, True), math.log(6))      # uniform over V
    assert math.isclose(minimum_loss(2, 0.2, True), closed_form(2, 0.2, True))
    assert isinstance(minimum_loss(14, 0.1), float)


# ---- the smoothed targets ----------------------------------------------------------------------

@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_smoothed_targets_are_distributions_and_give_the_loss(pad_gets_mass):
    logits, target = padded_batch([4, 1, 3], V=9, pad_id=2, seed=6)
    q = smoothed_targets(target, 9, 0.2, 2, pad_gets_mass)
    real = target != 2
    torch.testing.assert_close(q[real].sum(-1), torch.ones(int(real.sum())))
    assert (q[~real] == 0).all()
    if pad_gets_mass:
        assert torch.allclose(q[real][:, 2], torch.tensor(0.2 / 9))
    else:
        assert (q[..., 2] == 0).all()
        gold = q[real].gather(-1, target[real][:, None])
        torch.testing.assert_close(gold, torch.full_like(gold, 0.8))
    # the loss is the cross-entropy against q, per real token
    per_token = -(q * F.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(label_smoothed_loss(logits, target, 0.2, 2, pad_gets_mass),
                               per_token.sum() / real.sum())


# ---- precision, stability, inputs --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_low_precision_logits_give_the_float32_loss(dtype, pad_gets_mass):
    logits, target = padded_batch([5, 2, 4], seed=7, scale=6.0)
    low = logits.to(dtype)
    loss = label_smoothed_loss(low, target, 0.1, PAD, pad_gets_mass)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, label_smoothed_loss(low.float(), target, 0.1, PAD,
                                                         pad_gets_mass), rtol=1e-6, atol=1e-6)
    float64 = label_smoothed_loss(logits.double(), target, 0.1, PAD, pad_gets_mass)
    assert float64.dtype == torch.float64


@pytest.mark.parametrize("pad_gets_mass", [False, True])
def test_stable_for_huge_and_very_confident_logits(pad_gets_mass):
    logits, target = padded_batch([5, 2, 4], seed=8)
    base = label_smoothed_loss(logits, target, 0.1, PAD, pad_gets_mass)
    shifted = label_smoothed_loss(logits + 1000, target, 0.1, PAD, pad_gets_mass)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-3)
    confident = label_smoothed_loss(100 * logits, target, 0.1, PAD, pad_gets_mass)
    assert torch.isfinite(confident)
    torch.testing.assert_close(confident.double(), label_smoothed_loss(
        100 * logits.double(), target, 0.1, PAD, pad_gets_mass), rtol=1e-5, atol=1e-4)


def test_inputs_are_left_unchanged_and_gradients_flow():
    logits, target = padded_batch([5, 2, 4], seed=9)
    logits.requires_grad_(True)
    before = logits.detach().clone(), target.clone()
    loss = label_smoothed_loss(logits, target, 0.1, PAD)
    loss.backward()
    assert torch.equal(logits.detach(), before[0]) and torch.equal(target, before[1])
    # the gradient is (p - q) / N at real positions, 0 at the padding
    real = target != PAD
    q = smoothed_targets(target, logits.size(-1), 0.1, PAD)
    expected = (logits.detach().softmax(-1) - q) * real[..., None] / real.sum()
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: label_smoothed_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long)), "(B, T, V)"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)),
     "teacher forcing"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.zeros(2, 3)), "integer"),
    (lambda: label_smoothed_loss(torch.randint(0, 5, (2, 3, 5)), torch.zeros(2, 3, dtype=torch.long)),
     "floating-point"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.full((2, 3), 5)), "[0, 5)"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.full((2, 3), -100)), "ignore_index"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 1.5),
     "[0, 1]"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 0.1, 7),
     "pad_id=7"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.long)),
     "at least 3"),
    (lambda: label_smoothed_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long),
                                 pad_gets_mass="yes"), "True or False"),
    (lambda: minimum_loss(2, 0.1), "at least 3"),
    (lambda: minimum_loss(10, -0.1), "[0, 1]"),
    (lambda: smoothed_targets(torch.zeros(3, dtype=torch.long), 5, 0.1, pad_id=5), "pad_id=5"),
], ids=["rank", "shape", "float target", "int logits", "id >= V", "-100", "epsilon", "pad_id",
        "V=2", "flag", "minimum V", "minimum epsilon", "targets pad_id"])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=None) as error:
        call()
    assert message in str(error.value), str(error.value)
