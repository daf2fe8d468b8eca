"""The chapter 06 checkers bite: references pass on fresh inputs, stubs are 'not attempted', every
known-buggy implementation fails with its targeted hint (a hint only when every probe agrees), and
correct implementations written differently pass."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checker_testing import fails_with
from scratchformer import checks
from scratchformer.checks import encoder as encoder_checks
from scratchformer.encoder import EncoderLayer, FeedForward, layer_norm, residual


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


class StubFeedForward(FeedForward):
    def forward(self, x):
        raise NotImplementedError("Exercise 6.2: replace this line with your code")


class StubEncoderLayer(EncoderLayer):
    def forward(self, x, mask=None):
        raise NotImplementedError("Exercise 6.3: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):  # fresh random inputs and configurations every call
        checks.layer_norm(layer_norm)
        checks.feed_forward(FeedForward)
        checks.encoder_layer(EncoderLayer)
    assert capsys.readouterr().out.count("✅") == 9


@pytest.mark.parametrize("checker, implementation", [
    (checks.layer_norm, stub), (checks.feed_forward, StubFeedForward),
    (checks.encoder_layer, StubEncoderLayer)], ids=["layer_norm", "feed_forward", "encoder_layer"])
def test_stub_is_not_attempted(checker, implementation):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(implementation)


def test_exercise_numbers():
    assert checks.REGISTRY["layer_norm"] == ("6.1", "scratchformer.encoder")
    assert checks.REGISTRY["feed_forward"] == ("6.2", "scratchformer.encoder")
    assert checks.REGISTRY["encoder_layer"] == ("6.3", "scratchformer.encoder")


def test_layer_configurations_have_all_fields_different():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        B, S, H, D, d_ff = encoder_checks._layer_config(g)
        assert len({B, S, H, D, d_ff}) == 5 and D % H == 0


# ---- Exercise 6.1: layer_norm ------------------------------------------------------------------

def _ln(x, weight, bias, eps=1e-5, *, dim=-1, unbiased=False, eps_inside=True, power=0.5,
        affine="both", use_eps=True):
    """A configurable, deliberately buggy layer norm."""
    eps_used = eps if use_eps else 1e-5
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, unbiased=unbiased, keepdim=True)
    if eps_inside:
        normalised = (x - mean) / (var + eps_used) ** power
    else:
        normalised = (x - mean) / (var.sqrt() + eps_used)
    return {"both": normalised * weight + bias, "none": normalised, "no weight": normalised + bias,
            "no bias": normalised * weight, "swapped": normalised * bias + weight}[affine]


def ln_fixed_axis(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=2, keepdim=True)                      # only right for 3-D inputs
    var = x.var(dim=2, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_unpacks_three_axes(x, weight, bias, eps=1e-5):
    B, T, D = x.shape                                       # only 3-D inputs
    flat = x.reshape(B * T, D)
    mean = flat.mean(1, keepdim=True)
    var = flat.var(1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(B, T, D) * weight + bias


def ln_no_keepdim(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1)                                   # (B, T): does not broadcast
    var = x.var(dim=-1, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_naive_variance(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = (x ** 2).mean(dim=-1, keepdim=True) - mean ** 2   # E[x²] - E[x]²: cancels at mean 1000
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_off_in_low_precision(x, weight, bias, eps=1e-5):
    out = layer_norm(x, weight, bias, eps)
    return out if out.dtype == torch.float32 else out * 1.1   # right in float32 only


def ln_in_place(x, weight, bias, eps=1e-5):
    x -= x.mean(dim=-1, keepdim=True)                       # modifies the caller's tensor
    var = (x ** 2).mean(dim=-1, keepdim=True)
    return x / torch.sqrt(var + eps) * weight + bias


def ln_float32_output(x, weight, bias, eps=1e-5):
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps)  # no cast back


def ln_detached(x, weight, bias, eps=1e-5):
    return layer_norm(x.detach(), weight.detach(), bias.detach(), eps)


def ln_numpy(x, weight, bias, eps=1e-5):
    a = x.detach().numpy()
    a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + eps)
    return torch.from_numpy(a) * weight + bias


def ln_crashes(x, weight, bias, eps=1e-5):
    return {"x": x}["features"]                             # a KeyError in the learner's code


LAYER_NORM_BUGS = {
    # statistics over the wrong axis
    "over the batch axis": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=0), "over the batch axis"),
    "over the sequence axis": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=-2), "over the sequence axis"),
    "over sequence and features": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=(-2, -1)), "last two axes"),
    # the formula
    "unbiased variance": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, unbiased=True), "unbiased variance"),
    "eps outside the square root": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, eps_inside=False),
                                    "eps outside the square root"),
    "no eps": (lambda x, w, b, eps=1e-5: _ln(x, w, b, 0.0), "eps is missing"),
    "variance instead of std": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, power=1.0),
                                "instead of the standard deviation"),
    "no weight and bias": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="none"),
                           "learnable weight and bias are not applied"),
    "no weight": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="no weight"), "weight (gamma) is not applied"),
    "no bias": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="no bias"), "bias (beta) is not applied"),
    "weight and bias swapped": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="swapped"), "swapped"),
    "eps argument ignored": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, use_eps=False), "eps argument is ignored"),
    # ranks
    "fixed axis dim=2": (ln_fixed_axis, "fixed number of axes"),
    "B, T, D = x.shape": (ln_unpacks_three_axes, "fixed number of axes"),
    "keepdim forgotten": (ln_no_keepdim, "keepdim=True"),
    # numerical stability
    "E[x²] - E[x]²": (ln_naive_variance, "E[x²] − E[x]²"),
    # dtype
    "float32 output for float16 input": (ln_float32_output, "it must be torch.float16"),
    "10% off in float16 only": (ln_off_in_low_precision, "differs from float32 arithmetic"),
    # inputs and autograd
    "x -= mean": (ln_in_place, "changed its input `x` in place"),
    "detached": (ln_detached, "does not depend on the inputs through autograd"),
    "NumPy round trip": (ln_numpy, "no gradient reaches `x`"),
    # any exception
    "KeyError": (ln_crashes, 'raised KeyError (line'),
}


@pytest.mark.parametrize("bug", LAYER_NORM_BUGS)
def test_buggy_layer_norm_fails_with_targeted_hint(bug):
    implementation, hint = LAYER_NORM_BUGS[bug]
    fails_with(checks.layer_norm, implementation, hint)


def test_layer_norm_nan_on_constant_vector_is_reported():
    def std_without_eps(x, weight, bias, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True) * weight + bias

    fails_with(checks.layer_norm, std_without_eps, "eps is missing")


def test_layer_norm_two_bugs_get_no_single_hint():
    """Unbiased variance *and* no bias: no single known bug explains every probe, so no
    'Likely bug' is named; the message says which probe differs and by how much."""
    message = fails_with(checks.layer_norm, lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, unbiased=True,
                                                                           affine="no bias"),
                         "differs from the reference")
    assert "Likely bug" not in message


def test_layer_norm_bug_only_on_4d_inputs_is_not_blamed_on_the_formula():
    """Right for 1-D to 3-D inputs, normalised over axis 2 for 4-D inputs: the one probe that
    differs names the fixed axis, because that bug predicts every probe."""
    def dim_two_for_4d(x, weight, bias, eps=1e-5):
        return _ln(x, weight, bias, eps, dim=2 if x.dim() == 4 else -1)

    fails_with(checks.layer_norm, dim_two_for_4d, "x of shape (2,")


def test_other_correct_layer_norms_pass(capsys):
    """Equivalent formulations: rsqrt, var_mean, F.layer_norm itself, float64 inside, einsum."""
    def rsqrt(x, w, b, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * w + b

    def var_mean(x, w, b, eps=1e-5):
        var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
        return (x - mean) / (var + eps).sqrt() * w + b

    def in_float64(x, w, b, eps=1e-5):
        return layer_norm(x.double(), w.double(), b.double(), eps).to(x.dtype)

    def with_einsum(x, w, b, eps=1e-5):
        D = x.shape[-1]
        mean = torch.einsum("...d->...", x)[..., None] / D
        centred = x - mean
        var = torch.einsum("...d,...d->...", centred, centred)[..., None] / D
        return torch.einsum("...d,d->...d", centred / torch.sqrt(var + eps), w) + b

    for implementation in (rsqrt, var_mean, in_float64, with_einsum,
                           lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps)):
        checks.layer_norm(implementation)
    assert capsys.readouterr().out.count("✅") == 5


# ---- Exercise 6.2: FeedForward.forward ---------------------------------------------------------

def _identity(h):
    return h


def _gelu_tanh(h):
    return F.gelu(h, approximate="tanh")


def ffn(*, relu=F.relu, gelu=F.gelu, drop=("hidden",), bias=True, training_flag=True, rescale=True):
    """A FeedForward subclass whose forward is configurable, deliberately buggy: ``relu`` and
    ``gelu`` are the functions it uses for activation="relu"/"gelu"."""
    class Buggy(FeedForward):
        def forward(self, x):
            act = {"relu": relu, "gelu": gelu}[self.activation]
            p, train = self.dropout.p, self.training if training_flag else True

            def d(t):
                if rescale:
                    return F.dropout(t, p, train)
                return t * (torch.rand_like(t) >= p) if train else t

            x = d(x) if "input" in drop else x
            h = F.linear(x, self.linear1.weight, self.linear1.bias if bias else None)
            h = d(h) if "pre" in drop else h
            h = act(h)
            h = d(h) if "hidden" in drop else h
            out = F.linear(h, self.linear2.weight, self.linear2.bias if bias else None)
            return d(out) if "output" in drop else out
    return Buggy


class FfnUnpacksThreeAxes(FeedForward):
    def forward(self, x):
        B, T, D = x.shape
        return super().forward(x.reshape(B * T, D)).reshape(B, T, D)


class FfnFloat32(FeedForward):
    def forward(self, x):
        out = super().forward(x)
        return out * torch.ones(self.d_model)               # a float32 constant promotes


class FfnClipsInput(FeedForward):
    def forward(self, x):
        x.clamp_(-1, 1)                                     # edits the caller's tensor
        return super().forward(x)


class FfnNoGrad(FeedForward):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


class FfnTransposed(FeedForward):
    def forward(self, x):
        return self.linear2(F.relu(x @ self.linear1.weight + self.linear1.bias))   # W not transposed


FEED_FORWARD_BUGS = {
    # activation
    "always relu": (ffn(gelu=F.relu), "activation='gelu' is ignored"),
    "always gelu": (ffn(relu=F.gelu), "activation='relu' is ignored"),
    "gelu tanh approximation": (ffn(gelu=_gelu_tanh), "tanh approximation"),
    "no activation": (ffn(relu=_identity, gelu=_identity), "no activation between the two linear layers"),
    "no biases": (ffn(bias=False), "biases b_1 and b_2 are missing"),
    # dropout
    "dropout in eval mode": (ffn(training_flag=False), "dropout applied in eval mode"),
    "dropout on the output": (ffn(drop=("output",)), "applied to the output of linear2"),
    "dropout on the input": (ffn(drop=("input",)), "applied to the input x"),
    "dropout before the activation": (ffn(drop=("pre",)), "before the activation"),
    "dropout twice": (ffn(drop=("hidden", "output")), "applied twice"),
    "no dropout": (ffn(drop=()), "two forward passes with dropout p > 0 are identical"),
    "dropout not rescaled": (ffn(rescale=False), "does not rescale the kept values"),
    # ranks
    "B, T, D = x.shape": (FfnUnpacksThreeAxes, "fixed number of axes"),
    # dtype, inputs, autograd, exceptions
    "float32 output": (FfnFloat32, "it must be torch.float16"),
    "input clipped in place": (FfnClipsInput, "changed its input `x` in place"),
    "torch.no_grad inside": (FfnNoGrad, "does not depend on the inputs through autograd"),
    "weight not transposed": (FfnTransposed, "raised RuntimeError (line"),
}


@pytest.mark.parametrize("bug", FEED_FORWARD_BUGS)
def test_buggy_feed_forward_fails_with_targeted_hint(bug):
    implementation, hint = FEED_FORWARD_BUGS[bug]
    fails_with(checks.feed_forward, implementation, hint)


def test_activation_after_linear2_is_named():
    class AfterLinear2(FeedForward):
        def forward(self, x):
            act = F.gelu if self.activation == "gelu" else F.relu
            return act(self.linear2(self.dropout(self.linear1(x))))

    fails_with(checks.feed_forward, AfterLinear2, "applied after linear2")


def test_feed_forward_that_changes_init_is_told_to_keep_it():
    class OwnInit(FeedForward):
        def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
            super().__init__(d_model, d_ff, dropout, activation)
            self.linear1 = nn.Linear(d_model, d_ff, bias=False)

    fails_with(checks.feed_forward, OwnInit, "keep the __init__ as given")


def test_other_correct_feed_forwards_pass(capsys):
    class WithEinsum(FeedForward):
        def forward(self, x):
            h = torch.einsum("...d,fd->...f", x, self.linear1.weight) + self.linear1.bias
            h = F.dropout(F.gelu(h) if self.activation == "gelu" else h.clamp(min=0),
                          self.dropout.p, self.training)
            return torch.einsum("...f,df->...d", h, self.linear2.weight) + self.linear2.bias

    class InFloat64(FeedForward):
        def forward(self, x):
            act = {"relu": torch.relu, "gelu": F.gelu}[self.activation]
            w1, b1 = self.linear1.weight.double(), self.linear1.bias.double()
            h = self.dropout(act(x.double() @ w1.T + b1)).to(x.dtype)
            return self.linear2(h)

    class ReluBeforeDropout(FeedForward):          # dropout then ReLU equals ReLU then dropout
        def forward(self, x):
            h = self.linear1(x)
            if self.activation == "gelu":
                return self.linear2(self.dropout(F.gelu(h)))
            return self.linear2(F.relu(self.dropout(h)))

    for implementation in (WithEinsum, InFloat64, ReluBeforeDropout):
        checks.feed_forward(implementation)
    assert capsys.readouterr().out.count("✅") == 3


# ---- Exercise 6.3: EncoderLayer.forward --------------------------------------------------------

def layer(**switches):
    """An EncoderLayer subclass whose forward is the checker's switchable reference, so every
    classic bug is one keyword away."""
    class Buggy(EncoderLayer):
        def forward(self, x, mask=None):
            return encoder_checks._layer(self, x, mask, **switches)
    return Buggy


class Independent(EncoderLayer):
    """Post-LN and pre-LN written out by hand, each with its own bug, chosen by a subclass."""
    post_bug = pre_bug = None

    def forward(self, x, mask=None):
        d1, d2 = self.dropout1, self.dropout2
        m = None if self.pre_bug == "mask ignored" and self.norm_first else mask

        def attend(h):
            return self.self_attn(h, h, h, mask=m)[0]

        if self.norm_first:
            x = x + d1(attend(self.norm1(x)))
            return x + d2(self.feed_forward(self.norm2(x)))
        if self.post_bug == "flag swapped":
            x = x + d1(attend(self.norm1(x)))
            return x + d2(self.feed_forward(self.norm2(x)))
        x = self.norm1(x + d1(attend(x)))
        return self.norm2(x + d2(self.feed_forward(x)))


class PreInPlace(EncoderLayer):
    def forward(self, x, mask=None):
        if not self.norm_first:
            return super().forward(x, mask)
        h = self.norm1(x)
        x += self.dropout1(self.self_attn(h, h, h, mask=mask)[0])   # edits the caller's x
        return x + self.dropout2(self.feed_forward(self.norm2(x)))


class DropoutInEval(EncoderLayer):
    def forward(self, x, mask=None):
        p = self.dropout1.p

        def sub(h):
            return F.dropout(self.self_attn(h, h, h, mask=mask)[0], p)   # training=True always
        if self.norm_first:
            x = x + sub(self.norm1(x))
            return x + F.dropout(self.feed_forward(self.norm2(x)), p)
        x = self.norm1(x + sub(x))
        return self.norm2(x + F.dropout(self.feed_forward(x), p))


class KeyPaddingOnly(EncoderLayer):
    def forward(self, x, mask=None):
        if mask is not None:
            mask = mask[:, :, None, :] if mask.dim() == 3 else mask.unsqueeze(1)   # assumes (B, 1, S)
        return super().forward(x, mask)


class Float32Output(EncoderLayer):
    def forward(self, x, mask=None):
        return super().forward(x, mask).float()


class Detached(EncoderLayer):
    def forward(self, x, mask=None):
        return super().forward(x, mask).detach()


class FlagSwapped(EncoderLayer):
    def forward(self, x, mask=None):
        return encoder_checks._layer(self, x, mask, norm_first=not self.norm_first)


ENCODER_LAYER_BUGS = {
    # the two placements
    "norm_first read backwards": (FlagSwapped, "norm_first read the wrong way round"),
    "always post-LN": (layer(norm_first=False), "norm_first=True is ignored"),
    "always pre-LN": (layer(norm_first=True), "norm_first=False is ignored"),
    "pre-LN residual from the normalised x": (layer(pre_normalised=True), "residual is taken from the normalised x"),
    "pre-LN norm after the add": (layer(pre_norm_after=True), "pre-LN also normalises after the add"),
    "post-LN norm on the sublayer output": (layer(post_norm_on_sublayer=True),
                                            "norm is applied to the sublayer's output"),
    "norm1 and norm2 swapped": (layer(norms="21"), "norm1 and norm2 swapped"),
    "one norm for both": (layer(norms="11"), "same LayerNorm (norm1) is used for both"),
    "no residual": (layer(residual=False), "residual add is missing"),
    "post-LN without its second norm": (layer(post_final_norm=False), "second norm is missing"),
    "feed-forward first": (layer(order="ffn first"), "sublayers are in the wrong order"),
    "feed-forward reads the layer input": (layer(ffn_reads_input=True), "reads the layer's input"),
    # masks
    "mask ignored": (layer(use_mask=False), "mask is not passed to the self-attention"),
    "only (B, 1, S) masks": (KeyPaddingOnly, "raised ValueError (line"),
    # dropout
    "dropout in eval mode": (DropoutInEval, "dropout applied in eval mode"),
    "no residual dropout": (layer(drop="none"), "dropout1 and dropout2 are never applied"),
    "dropout on the sum": (layer(drop="sum"), "also drops the residual path"),
    "dropout on the sublayer input": (layer(drop="input"), "applied to the sublayer's input"),
    # dtype, inputs, autograd
    "float32 output": (Float32Output, "it must be torch.float16"),
    "x += ... in pre-LN": (PreInPlace, "changed its input `x` in place"),
    "detached output": (Detached, "does not depend on the inputs through autograd"),
}



@pytest.mark.parametrize("bug", ENCODER_LAYER_BUGS)
def test_buggy_encoder_layer_fails_with_targeted_hint(bug):
    implementation, hint = ENCODER_LAYER_BUGS[bug]
    fails_with(checks.encoder_layer, implementation, hint)


def test_encoder_layer_swapped_placements_are_named_as_such():
    """Swapped, not 'always one of them': the message says which setting computes which."""
    message = fails_with(checks.encoder_layer, FlagSwapped, "norm_first=False computes pre-LN")
    assert "norm_first=True computes post-LN" in message


def test_encoder_layer_two_unrelated_bugs_get_no_single_hint():
    """Post-LN with the flag's formula swapped, pre-LN without the mask: no known bug explains
    every probe, so none is named."""
    class TwoBugs(Independent):
        post_bug, pre_bug = "flag swapped", "mask ignored"

    message = fails_with(checks.encoder_layer, TwoBugs, "differs from the reference")
    assert "Likely bug" not in message


def test_encoder_layer_exception_names_the_learner_line():
    class Crashes(EncoderLayer):
        def forward(self, x, mask=None):
            return self.self_attn(x, x, x, mask=mask)[0] @ x   # (B, S, D) @ (B, S, D)

    message = fails_with(checks.encoder_layer, Crashes, "raised RuntimeError (line")
    assert "@ x" in message


def test_other_correct_encoder_layers_pass(capsys):
    class WithResidualHelper(EncoderLayer):
        def forward(self, x, mask=None):
            def attend(h):
                return self.self_attn(h, h, h, mask=mask)[0]
            x = residual(x, attend, self.norm1, self.norm_first, self.dropout1)
            return residual(x, self.feed_forward, self.norm2, self.norm_first, self.dropout2)

    class FunctionalDropout(EncoderLayer):
        def forward(self, x, mask=None):
            p, train = self.dropout1.p, self.training
            h = self.norm1(x) if self.norm_first else x
            a = F.dropout(self.self_attn(h, h, h, mask)[0], p, train)
            x = x + a if self.norm_first else self.norm1(torch.add(x, a))
            h = self.norm2(x) if self.norm_first else x
            f = F.dropout(self.feed_forward(h), p, train)
            return x + f if self.norm_first else self.norm2(x + f)

    class OneDropoutModule(EncoderLayer):           # dropout1 twice: the same p, so equivalent
        def forward(self, x, mask=None):
            return encoder_checks._layer(_Alias(self), x, mask)

    for implementation in (WithResidualHelper, FunctionalDropout, OneDropoutModule):
        checks.encoder_layer(implementation)
    assert capsys.readouterr().out.count("✅") == 3


class _Alias:
    """A view of a layer whose dropout2 is its dropout1."""

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, name):
        return getattr(self._layer, "dropout1" if name == "dropout2" else name)


def test_variant_counts():
    """The numbers reported for this chapter: buggy variants each checker rejects in this file."""
    extra = {"layer_norm": 3, "feed_forward": 2, "encoder_layer": 2}
    counts = {"layer_norm": len(LAYER_NORM_BUGS) + extra["layer_norm"],
              "feed_forward": len(FEED_FORWARD_BUGS) + extra["feed_forward"],
              "encoder_layer": len(ENCODER_LAYER_BUGS) + extra["encoder_layer"]}
    assert counts == {"layer_norm": 25, "feed_forward": 19, "encoder_layer": 23}
