"""The chapter 10 checkers bite: the references pass on fresh inputs, stubs are 'not attempted',
every known-buggy implementation fails with its targeted hint (a hint only when every probe
agrees), and correct implementations written differently pass."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checker_testing import fails_with
from scratchformer import checks
from scratchformer.losses import label_smoothed_loss, minimum_loss, smoothed_targets


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted ------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(4):  # fresh random inputs and configurations every call
        checks.label_smoothed_loss(label_smoothed_loss)
        checks.minimum_loss(minimum_loss)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("checker", [checks.label_smoothed_loss, checks.minimum_loss],
                         ids=["label_smoothed_loss", "minimum_loss"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_exercise_numbers():
    assert checks.REGISTRY["label_smoothed_loss"] == ("10.1", "scratchformer.losses")
    assert checks.REGISTRY["minimum_loss"] == ("10.2", "scratchformer.losses")


# ---- Exercise 10.1: label_smoothed_loss -----------------------------------------------------------

def _loss(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False, *, false_mass="v-2",
          true_mass="v", norm="tokens", pad=None, gold_weight=None, use_epsilon=True):
    """A configurable, deliberately buggy label-smoothed loss, written as a learner would."""
    pad = pad_id if pad is None else pad
    eps = epsilon if use_epsilon else 0.0
    V = logits.size(-1)
    log_p = F.log_softmax(logits.float(), dim=-1)
    gold = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    is_gold = F.one_hot(target, V).bool()
    is_pad = torch.zeros_like(is_gold)
    is_pad[..., pad] = True
    kind = true_mass if pad_gets_mass else false_mass
    if kind == "v":
        smooth = log_p.sum(-1) / V
    elif kind == "v-1 pad":                              # every class but gold
        smooth = log_p.masked_fill(is_gold, 0).sum(-1) / (V - 1)
    elif kind == "v-1 gold":                             # every class but pad
        smooth = log_p.masked_fill(is_pad, 0).sum(-1) / (V - 1)
    else:
        denominator = {"v-2": V - 2, "v over v-2": V, "v-1 over v-2": V - 1}[kind]
        smooth = log_p.masked_fill(is_gold | is_pad, 0).sum(-1) / denominator
    weight = 1 - eps if gold_weight is None else gold_weight
    token = -weight * gold - eps * smooth
    keep = target != pad
    kept = token.masked_fill(~keep, 0)
    B, T = target.shape
    if norm == "tokens":
        return kept.sum() / keep.sum().clamp(min=1)
    if norm == "all":
        return kept.sum() / (B * T)
    if norm == "with pad":
        return token.mean()
    if norm == "pad summed":
        return token.sum() / keep.sum().clamp(min=1)
    if norm == "sentences":
        return (kept.sum(1) / keep.sum(1)).mean()
    if norm == "batch":
        return kept.sum() / B
    if norm == "sum":
        return kept.sum()
    if norm == "no clamp":
        return kept.sum() / keep.sum()
    raise ValueError(norm)


def buggy(**switches):
    def loss(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
        return _loss(logits, target, epsilon, pad_id, pad_gets_mass, **switches)
    return loss


def loss_exp_overflow(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    e = logits.float().exp()                                     # inf at logits of 1000
    log_p = (e / e.sum(-1, keepdim=True)).log()
    return _from_log_p(log_p, target, epsilon, pad_id, pad_gets_mass)


def loss_log_of_softmax(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    log_p = logits.float().softmax(-1).log()                     # log(0) = -inf when confident
    return _from_log_p(log_p, target, epsilon, pad_id, pad_gets_mass)


def _from_log_p(log_p, target, epsilon, pad_id, pad_gets_mass):
    q = smoothed_targets(target, log_p.size(-1), epsilon, pad_id, pad_gets_mass)
    token = -(q * log_p).nan_to_num(nan=0.0).sum(-1)             # 0 * -inf = nan -> 0
    keep = target != pad_id
    return token.masked_fill(~keep, 0).sum() / keep.sum().clamp(min=1)


def loss_empty_not_differentiable(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    if (target == pad_id).all():
        return torch.zeros(())                                    # cut off from the logits
    return label_smoothed_loss(logits, target, epsilon, pad_id, pad_gets_mass)


def loss_target_in_place(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    keep = target != pad_id
    target[~keep] = (pad_id + 1) % logits.size(-1)               # changes the caller's tensor
    loss = label_smoothed_loss(logits, torch.where(keep, target, pad_id), epsilon, pad_id,
                               pad_gets_mass)
    return loss


def loss_logits_in_place(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    logits -= logits.max(-1, keepdim=True).values                 # changes the caller's tensor
    return label_smoothed_loss(logits, target, epsilon, pad_id, pad_gets_mass)


def loss_item(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    return label_smoothed_loss(logits, target, epsilon, pad_id, pad_gets_mass).item()


def loss_detached(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    return label_smoothed_loss(logits.detach(), target, epsilon, pad_id, pad_gets_mass)


def loss_half_detached(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """The smoothing term is computed from detached logits: the right value, half a gradient."""
    plain = label_smoothed_loss(logits, target, 0.0, pad_id, pad_gets_mass)
    smoothed = label_smoothed_loss(logits.detach(), target, epsilon, pad_id, pad_gets_mass)
    zero_eps = label_smoothed_loss(logits.detach(), target, 0.0, pad_id, pad_gets_mass)
    return plain + (smoothed - zero_eps)


def loss_input_precision(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """Everything in the logits' dtype: float16 in, float16 out."""
    log_p = F.log_softmax(logits, dim=-1)
    q = smoothed_targets(target, logits.size(-1), epsilon, pad_id, pad_gets_mass).to(logits.dtype)
    keep = target != pad_id
    return (-(q * log_p).sum(-1)).sum() / keep.sum().clamp(min=1)


def loss_low_precision_log_softmax(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """The log-softmax in the logits' dtype, the rest in float32."""
    log_p = F.log_softmax(logits, dim=-1).float()
    return _from_log_p(log_p, target, epsilon, pad_id, pad_gets_mass)


def loss_per_token(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    q = smoothed_targets(target, logits.size(-1), epsilon, pad_id, pad_gets_mass)
    return -(q * F.log_softmax(logits.float(), -1)).sum(-1)      # (B, T), not reduced


def loss_crashes(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    return logits.float().log_softmax(-1) @ target               # a dtype/shape error


LOSS_BUGS = {
    # where the smoothing mass goes
    "mass on pad": (buggy(false_mass="v-1 pad"), "also goes to <pad>"),
    "mass on gold": (buggy(false_mass="v-1 gold"), "gold token also gets a share"),
    "eps / V over V - 2": (buggy(false_mass="v over v-2"), "eps / V on each of the V - 2"),
    "eps / (V-1) over V - 2": (buggy(false_mass="v-1 over v-2"),
                               "eps / (V - 1) on each of the V - 2"),
    "always PyTorch's": (buggy(false_mass="v"), "both settings compute PyTorch's"),
    "always ours": (buggy(true_mass="v-2"), "pad_gets_mass=True also spreads"),
    "flag swapped": (buggy(false_mass="v", true_mass="v-2"), "read the wrong way round"),
    "True: eps / (V-1)": (buggy(true_mass="v-1 pad"),
                          "with pad_gets_mass=True the mass is eps / (V - 1)"),
    "no smoothing": (buggy(use_epsilon=False), "epsilon is ignored"),
    "gold weight 1": (buggy(gold_weight=1.0), "keeps the weight 1"),
    # normalisation
    "mean over B*T": (buggy(norm="all"), "divided by B * T"),
    "pad positions as targets": (buggy(norm="with pad"), "treated as targets"),
    "pad losses summed": (buggy(norm="pad summed"), "losses at the padded positions are added"),
    "per-sentence means": (buggy(norm="sentences"), "mean of per-sentence means"),
    "divided by B": (buggy(norm="batch"), "number of sentences B"),
    "sum only": (buggy(norm="sum"), "summed but not divided"),
    "pad_id hard-coded": (buggy(pad=0), "hard-coded as 0"),
    # numerical stability
    "exp overflows": (loss_exp_overflow, "numerical stability: exp(logits) overflows"),
    "log of softmax": (loss_log_of_softmax, "log(softmax(x)) rounds"),
    # all-padding batch
    "0 / 0": (buggy(norm="no clamp"), "0 / 0"),
    "all padding not differentiable": (loss_empty_not_differentiable, "not connected to the logits"),
    # inputs, autograd
    "target in place": (loss_target_in_place, "changed its input `target` in place"),
    "logits in place": (loss_logits_in_place, "changed its input `logits` in place"),
    ".item()": (loss_item, "Python number"),
    "detached": (loss_detached, "does not depend on the logits through autograd"),
    "half detached": (loss_half_detached, "part of the loss is detached"),
    # precision
    "float16 result": (loss_input_precision, "must be torch.float32"),
    "log-softmax in float16": (loss_low_precision_log_softmax, "compute in float32"),
    # return type, crash
    "per-token losses": (loss_per_token, "one loss per position"),
    "crash": (loss_crashes, "your code raised RuntimeError"),
}


@pytest.mark.parametrize("implementation, hint", LOSS_BUGS.values(), ids=LOSS_BUGS.keys())
def test_label_smoothed_loss_bugs_get_their_hint(implementation, hint):
    for _ in range(3):  # every fresh draw names the same bug
        fails_with(checks.label_smoothed_loss, implementation, hint)


def test_label_smoothed_loss_rejects_thirty_bugs():
    assert len(LOSS_BUGS) == 30


def test_a_crash_names_the_learner_line():
    message = fails_with(checks.label_smoothed_loss, loss_crashes, "your code raised")
    assert "line" in message


def test_two_bugs_at_once_get_no_named_hint():
    """Mass on pad AND a mean over B*T: no single known bug explains every probe, so no
    'Likely bug' (a hint must never rest on one coincidental number)."""
    message = fails_with(checks.label_smoothed_loss, buggy(false_mass="v-1 pad", norm="all"),
                         "expected")
    assert "Likely bug" not in message


# correct implementations written differently pass

def loss_kl_div(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """The Annotated Transformer's KL divergence, plus the entropy of q it leaves out."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    q = smoothed_targets(target, logits.size(-1), epsilon, pad_id, pad_gets_mass)
    kl = F.kl_div(log_p, q, reduction="none").sum(-1)            # sum q (log q - log p)
    entropy = -torch.special.xlogy(q, q).sum(-1)
    keep = target != pad_id
    return (kl + entropy).masked_fill(~keep, 0).sum() / max(int(keep.sum()), 1)


def loss_one_hot(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    V = logits.size(-1)
    one_hot = F.one_hot(target, V).float()
    if pad_gets_mass:
        q = (1 - epsilon) * one_hot + epsilon / V
    else:
        q = (1 - epsilon) * one_hot + epsilon / (V - 2) * (1 - one_hot)
        q[..., pad_id] = 0.0
    per_token = torch.einsum("btv,btv->bt", q, -F.log_softmax(logits.float(), -1))
    keep = (target != pad_id).float()
    return (per_token * keep).sum() / keep.sum().clamp(min=1.0)


def loss_float64(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    out = label_smoothed_loss(logits.double(), target, epsilon, pad_id, pad_gets_mass)
    return out.to(torch.promote_types(logits.dtype, torch.float32))


def loss_with_f_cross_entropy(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """F.cross_entropy per token (reduction='none'), for PyTorch's convention; the rest by
    hand; the logits flattened to (N, V)."""
    B, T, V = logits.shape
    flat, labels = logits.float().reshape(B * T, V), target.reshape(B * T)
    keep = labels != pad_id
    n = keep.sum().clamp(min=1)
    if pad_gets_mass:
        token = F.cross_entropy(flat, labels, reduction="none", label_smoothing=epsilon)
        return token.masked_fill(~keep, 0).sum() / n
    log_p = flat.log_softmax(-1)
    nll = F.nll_loss(log_p, labels, reduction="none")
    others = log_p.sum(-1) + nll - log_p[:, pad_id]               # neither gold nor pad
    token = (1 - epsilon) * nll - epsilon * others / (V - 2)
    return torch.where(keep, token, torch.zeros_like(token)).sum() / n


def loss_loop(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False):
    """One sentence at a time, sums and counts accumulated."""
    total, count = logits.float().new_zeros(()), 0
    for b in range(target.size(0)):
        keep = target[b] != pad_id
        if keep.any():
            n = int(keep.sum())
            mean_b = label_smoothed_loss(logits[b][keep][None], target[b][keep][None], epsilon,
                                         pad_id, pad_gets_mass)
            total, count = total + n * mean_b, count + n
    return total / max(count, 1) if count else logits.float().sum() * 0.0


@pytest.mark.parametrize("implementation", [loss_kl_div, loss_one_hot, loss_float64,
                                            loss_with_f_cross_entropy, loss_loop],
                         ids=["kl_div + entropy", "one-hot einsum", "float64 inside",
                              "F.cross_entropy / nll_loss", "loop over sentences"])
def test_label_smoothed_loss_accepts_correct_alternatives(implementation, capsys):
    for _ in range(3):
        checks.label_smoothed_loss(implementation)
    assert capsys.readouterr().out.count("✅") == 3


# ---- Exercise 10.2: minimum_loss ------------------------------------------------------------------

def _h(masses):
    return -sum(n * q * math.log(q) for q, n in masses if q > 0)


def minimum(V, eps, pytorch=False, *, bug=""):
    """A configurable, deliberately buggy minimum."""
    if pytorch != (bug == "swap"):
        gold = 1 - eps if bug == "true gold" else 1 - eps + eps / V
        masses = [(gold, 1), (eps / V, V - 1)]
    elif bug == "pad mass":
        masses = [(1 - eps, 1), (eps / (V - 1), V - 1)]
    else:
        masses = [(1 - eps, 1), (eps / (V - 2), V - 2)]
    if bug == "always ours":
        masses = [(1 - eps, 1), (eps / (V - 2), V - 2)]
    if bug == "always pytorch":
        masses = [(1 - eps + eps / V, 1), (eps / V, V - 1)]
    if bug == "no gold":
        masses = masses[1:]
    if bug == "gold only":
        masses = masses[:1]
    if bug == "count once":
        masses = [(q, 1) for q, _ in masses]
    value = _h(masses)
    return {"bits": value / math.log(2), "sign": -value, "zero": 0.0}.get(bug, value)


def min_bug(bug):
    return lambda V, eps, pad_gets_mass=False: minimum(V, eps, pad_gets_mass, bug=bug)


def min_log_of_zero(V, eps, pad_gets_mass=False):
    others = eps / V if pad_gets_mass else eps / (V - 2)
    gold = 1 - eps + (eps / V if pad_gets_mass else 0)
    count = V - 1 if pad_gets_mass else V - 2
    return -gold * math.log(gold) - count * others * math.log(others)   # log(0) at eps = 0, 1


def min_nan_at_zero(V, eps, pad_gets_mass=False):
    q = smoothed_targets(torch.tensor([1]), V, eps, 0, pad_gets_mass)[0].double()
    return float(-(q * q.log()).sum())                                  # 0 * -inf = nan


MIN_BUGS = {
    "zero": (min_bug("zero"), "the minimum is not 0"),
    "pad mass": (min_bug("pad mass"), "<pad> gets no mass"),
    "always PyTorch's": (min_bug("always pytorch"), "both settings use PyTorch's"),
    "always ours": (min_bug("always ours"), "True also uses eps / (V - 2)"),
    "flag swapped": (min_bug("swap"), "pad_gets_mass"),
    "True: gold 1 - eps": (min_bug("true gold"), "1 - eps + eps / V (it gets its share"),
    "no gold term": (min_bug("no gold"), "gold token's term is missing"),
    "gold term only": (min_bug("gold only"), "only the gold token's term"),
    "smoothing classes counted once": (min_bug("count once"), "counted once"),
    "bits": (min_bug("bits"), "in bits"),
    "sign": (min_bug("sign"), "the sign is wrong"),
    "log(0) raises": (min_log_of_zero, "0 log 0 must count as 0"),
    "0 * log 0 = nan": (min_nan_at_zero, "0 log 0 must count as 0"),
}


@pytest.mark.parametrize("implementation, hint", MIN_BUGS.values(), ids=MIN_BUGS.keys())
def test_minimum_loss_bugs_get_their_hint(implementation, hint):
    for _ in range(3):
        fails_with(checks.minimum_loss, implementation, hint)


def test_minimum_loss_rejects_thirteen_bugs():
    assert len(MIN_BUGS) == 13


def min_xlogy(V, eps, pad_gets_mass=False):
    q = smoothed_targets(torch.tensor([[1]]), V, eps, 0, pad_gets_mass).double()
    return -torch.special.xlogy(q, q).sum()                      # a 0-d tensor is a number too


def min_closed_form(V, eps, pad_gets_mass=False):
    V = int(V)
    if eps == 0:
        return 0
    if pad_gets_mass:
        a, b = 1 - eps + eps / V, eps / V
        return -a * math.log(a) - (V - 1) * b * math.log(b)
    gold = -(1 - eps) * math.log(1 - eps) if eps < 1 else 0.0
    return np.float64(gold - eps * math.log(eps / (V - 2)))     # a NumPy float


@pytest.mark.parametrize("implementation", [min_xlogy, min_closed_form],
                         ids=["xlogy on smoothed_targets", "closed form, NumPy float"])
def test_minimum_loss_accepts_correct_alternatives(implementation, capsys):
    for _ in range(3):
        checks.minimum_loss(implementation)
    assert capsys.readouterr().out.count("✅") == 3
