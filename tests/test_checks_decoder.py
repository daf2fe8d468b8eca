"""The chapter 08 checkers bite: references and other correct forwards pass, stubs are 'not
attempted', and buggy decoder layers and stacks of every class fail with their targeted hint
(named only when one explanation fits every probe)."""

import pytest
import torch
import torch.nn.functional as F

from scratchformer import checks
from scratchformer.decoder import Decoder, DecoderLayer
from scratchformer.encoder import residual

# ---- references pass, stubs are not attempted --------------------------------------------------


def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(2):
        checks.decoder_layer(DecoderLayer)
        checks.decoder_stack(Decoder)
    assert capsys.readouterr().out.count("✅") == 4


def test_a_forward_function_is_accepted_too(capsys):
    """``checks.decoder_layer`` takes a class or an unbound forward(layer, x, memory, tgt_mask, memory_mask)."""
    checks.decoder_layer(DecoderLayer.forward)
    assert "✅" in capsys.readouterr().out


def test_checkers_are_registered():
    assert checks.REGISTRY["decoder_layer"] == ("8.1", "scratchformer.decoder")
    assert checks.REGISTRY["decoder_stack"] == ("8.2", "scratchformer.decoder")


class StubDecoderLayer(DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        raise NotImplementedError("Exercise 8.1: replace this line with your code")


class StubDecoder(Decoder):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        raise NotImplementedError("Exercise 8.2: replace this line with your code")


def stub_forward(layer, x, memory, tgt_mask=None, memory_mask=None):
    raise NotImplementedError("Exercise 8.1: replace this line with your code")


@pytest.mark.parametrize("call", [
    lambda: checks.decoder_layer(StubDecoderLayer),
    lambda: checks.decoder_layer(stub_forward),
    lambda: checks.decoder_stack(StubDecoder),
], ids=["layer_class", "layer_function", "stack"])
def test_stub_is_not_attempted(call):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        call()


def test_stub_in_the_constructor_is_not_attempted():
    class NotBuilt(DecoderLayer):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError
    with pytest.raises(checks.ExerciseNotAttempted):
        checks.decoder_layer(NotBuilt)


def test_stack_check_does_not_need_exercise_8_1():
    """A learner who solved 8.2 but not 8.1 (the layers' forward is still a stub) passes the stack check."""
    class StackOfStubs(Decoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for layer in self.layers:
                layer.forward = stub_forward.__get__(layer)
    checks.decoder_stack(StackOfStubs)


# ---- Exercise 8.1: DecoderLayer.forward --------------------------------------------------------

class _Buggy(DecoderLayer):
    """The chapter's forward with one switch per classic bug."""

    kv_from_decoder = q_from_memory = causal_on_cross = memory_mask_ignored = cross_first = False
    norm_swapped = always_post = always_pre = memory_normalised = tgt_mask_ignored = False
    returns_tuple = no_residual = normalised_residual = shared_norm = skip_ff = skip_cross = False
    skip_self = extra_causal = head_axis = to_float32 = no_dropout = dropout_always = False
    dropout_after_add = mutates_x = mutates_mask = detaches_memory = crash = masks_ignored = False

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        from scratchformer.causal import causal_mask
        self_mask, cross_mask = tgt_mask, memory_mask
        if self.causal_on_cross:
            self_mask, cross_mask = memory_mask, tgt_mask
        if self.memory_mask_ignored or self.masks_ignored:
            cross_mask = None
        if self.tgt_mask_ignored or self.masks_ignored:
            self_mask = None
        if self.extra_causal:
            causal = causal_mask(x.size(1), device=x.device)
            self_mask = causal if self_mask is None else self_mask & causal
        if self.head_axis:                  # "give the masks a head axis": right for 3-D masks only
            self_mask = None if self_mask is None else self_mask.unsqueeze(1)
            cross_mask = None if cross_mask is None else cross_mask.unsqueeze(1)
        if self.mutates_mask and tgt_mask is not None and tgt_mask.dim() == 3:
            tgt_mask.unsqueeze_(1)          # "give it a head axis", in place: same output
        if self.to_float32:
            x, memory = x.float(), memory.float()
            self.float()
        if self.detaches_memory:
            memory = memory.detach()
        if self.crash:
            return x @ memory
        x_in = x
        norm_first = self.norm_first
        if self.norm_swapped:
            norm_first = not norm_first
        if self.always_post:
            norm_first = False
        if self.always_pre:
            norm_first = True

        def self_attend(h):
            return self.self_attn(h, h, h, mask=self_mask)[0]

        def cross_attend(h):
            mem = self.norm2(memory) if self.memory_normalised else memory
            if self.kv_from_decoder:
                return self.cross_attn(h, h, h, mask=cross_mask)[0]
            if self.q_from_memory:
                return self.cross_attn(mem, h, h, mask=cross_mask)[0]
            return self.cross_attn(h, mem, mem, mask=cross_mask)[0]

        def connect(h, sublayer, norm, dropout):
            if self.mutates_x and h is x_in:        # the residual add done in place, on the input
                if norm_first:
                    h += dropout(sublayer(norm(h)))
                    return h
                h += dropout(sublayer(h))
                return norm(h)
            if self.shared_norm:
                norm = self.norm1
            if self.no_dropout:
                dropout = torch.nn.Identity()
            if self.dropout_always:
                p = dropout.p
                dropout = lambda t: F.dropout(t, p)   # noqa: E731 - training=True, always
            if self.no_residual:
                return dropout(sublayer(norm(h))) if norm_first else norm(dropout(sublayer(h)))
            if self.normalised_residual and norm_first:
                h = norm(h)
                return h + dropout(sublayer(h))
            if self.dropout_after_add:
                return norm(dropout(h + sublayer(h))) if not norm_first else dropout(h + sublayer(norm(h)))
            return residual(h, sublayer, norm, norm_first, dropout)

        steps = [(self_attend, self.norm1, self.dropout1, self.skip_self),
                 (cross_attend, self.norm2, self.dropout2, self.skip_cross)]
        if self.cross_first:
            steps.reverse()
        for sublayer, norm, dropout, skip in steps + [(self.feed_forward, self.norm3, self.dropout3, self.skip_ff)]:
            if not skip:
                x = connect(x, sublayer, norm, dropout)
        return (x, None) if self.returns_tuple else x


def buggy(**switches):
    return type("Buggy", (_Buggy,), switches)


def test_the_buggy_base_class_itself_passes():
    """The switches below are the only difference from a correct forward."""
    checks.decoder_layer(_Buggy)


LAYER_BUGS = [   # (class of the bug, switch, hint)
    ("structure", "kv_from_decoder", "keys and values from the decoder instead of the memory"),
    ("structure", "q_from_memory", "queries from the memory instead of the decoder"),
    ("masks", "causal_on_cross", "the masks are in the wrong attentions"),
    ("masks", "memory_mask_ignored", "the memory mask is ignored"),
    ("masks", "tgt_mask_ignored", "the target mask is ignored"),
    ("masks", "masks_ignored", "both masks are ignored"),
    ("masks", "extra_causal", "adds a causal mask of its own"),
    ("mask shapes", "head_axis", "raised"),
    ("structure", "cross_first", "cross-attention before self-attention"),
    ("norm placement", "norm_swapped", "placements are swapped"),
    ("norm placement", "always_post", "the pre-LN placement is missing"),
    ("norm placement", "always_pre", "the post-LN placement is missing"),
    ("structure", "memory_normalised", "the memory goes through the decoder's LayerNorm"),
    ("structure", "no_residual", "the residual connection is missing"),
    ("structure", "normalised_residual", "the residual path carries the normalised stream"),
    ("structure", "shared_norm", "one LayerNorm is used for every sublayer"),
    ("structure", "skip_ff", "the feed-forward sublayer is missing"),
    ("structure", "skip_cross", "the cross-attention sublayer is missing"),
    ("structure", "skip_self", "the self-attention sublayer is missing"),
    ("return type", "returns_tuple", "not a tuple"),
    ("exception", "crash", "raised RuntimeError"),
    ("dtype", "to_float32", "it must be torch.float16"),
    ("inputs unchanged", "mutates_x", "changed its input `x` in place"),
    ("inputs unchanged", "mutates_mask", "changed its input `tgt_mask` in place"),
    ("autograd", "detaches_memory", "no gradient reaches `memory`"),
    ("dropout", "dropout_always", "in eval mode two forward passes differ"),
    ("dropout", "no_dropout", "in train mode the outputs are distributed differently"),
    ("dropout", "dropout_after_add", "although every sublayer outputs zeros"),
]


@pytest.mark.parametrize("kind, switch, hint", LAYER_BUGS, ids=[b[1] for b in LAYER_BUGS])
def test_buggy_decoder_layer_fails_with_targeted_hint(kind, switch, hint):
    for _ in range(2):      # fresh configurations: the hint must not depend on the draw
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.decoder_layer(buggy(**{switch: True}))
        assert hint in str(error.value), str(error.value)


def test_buggy_forward_function_fails_with_targeted_hint():
    def forward(layer, x, memory, tgt_mask=None, memory_mask=None):       # keys and values from the decoder
        x = residual(x, lambda h: layer.self_attn(h, h, h, mask=tgt_mask)[0], layer.norm1, layer.norm_first,
                     layer.dropout1)
        x = residual(x, lambda h: layer.cross_attn(h, h, h)[0], layer.norm2, layer.norm_first, layer.dropout2)
        return residual(x, layer.feed_forward, layer.norm3, layer.norm_first, layer.dropout3)
    with pytest.raises(checks.ExerciseWrong, match="keys and values from the decoder"):
        checks.decoder_layer(forward)


def test_a_bug_in_one_placement_only_is_not_named():
    """Keys and values from the decoder in pre-LN only: no single explanation fits the post-LN
    probes too, so no hint is named; the first wrong output is described instead."""
    class PreOnly(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            if not self.norm_first:
                return super().forward(x, memory, tgt_mask, memory_mask)
            return buggy(kv_from_decoder=True).forward(self, x, memory, tgt_mask, memory_mask)
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.decoder_layer(PreOnly)
    assert "Likely bug" not in str(error.value) and "pre-LN" in str(error.value)


def test_future_leak_is_caught_even_when_it_matches_no_known_variant():
    class Leaks(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            return super().forward(x, memory, tgt_mask, memory_mask) + 1e-3 * x.mean(1, keepdim=True)
    with pytest.raises(checks.ExerciseWrong, match="differs from the reference"):
        checks.decoder_layer(Leaks)


def test_nan_for_empty_rows_is_caught():
    class MinusInfinity(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            out = super().forward(x, memory, tgt_mask, memory_mask)
            if memory_mask is not None and not memory_mask.any(-1).all():
                out = out + torch.where(memory_mask.any(-1).reshape(out.size(0), -1)[:, :1, None], 0.0,
                                        float("nan"))
            return out
    with pytest.raises(checks.ExerciseWrong, match="NaN from a fully masked row"):
        checks.decoder_layer(MinusInfinity)


def test_renamed_parameters_are_reported():
    class Renamed(DecoderLayer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.enc_dec_attn = self.cross_attn
            del self.cross_attn
    with pytest.raises(checks.ExerciseWrong, match="cross_attn"):
        checks.decoder_layer(Renamed)


class Explicit(DecoderLayer):
    """Correct, written out without ``residual``, with F.dropout and torch.add."""

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        p, training = self.dropout1.p, self.training
        sub = [lambda h: self.self_attn(h, h, h, mask=tgt_mask, need_weights=True)[0],
               lambda h: self.cross_attn(h, memory, memory.clone(), mask=memory_mask)[0],
               self.feed_forward]
        for sublayer, norm in zip(sub, (self.norm1, self.norm2, self.norm3)):
            if self.norm_first:
                x = torch.add(x, F.dropout(sublayer(norm(x)), p, training))
            else:
                x = norm(torch.add(x, F.dropout(sublayer(x), p, training)))
        return x


def explicit_function(layer, x, memory, tgt_mask=None, memory_mask=None):
    """Correct, as a function of the layer, with the masks passed by keyword."""
    def attend(h):
        return layer.self_attn(query=h, key=h, value=h, mask=tgt_mask)[0]
    x = residual(x, attend, layer.norm1, layer.norm_first, layer.dropout1)
    x = residual(x, lambda h: layer.cross_attn(h, memory, memory, mask=memory_mask)[0], layer.norm2,
                 layer.norm_first, layer.dropout2)
    return residual(x, layer.feed_forward, layer.norm3, layer.norm_first, dropout=layer.dropout3)


@pytest.mark.parametrize("answer", [Explicit, explicit_function], ids=["explicit class", "function"])
def test_equivalent_correct_layers_pass(answer, capsys):
    checks.decoder_layer(answer)
    assert "✅" in capsys.readouterr().out


class OffInLowPrecision(DecoderLayer):
    """Right in float32, but 5% off in float16/bfloat16 (dtype and finiteness are fine)."""

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        out = super().forward(x, memory, tgt_mask, memory_mask)
        return out if out.dtype == torch.float32 else out * 1.05


def test_a_layer_wrong_only_in_low_precision_fails():
    with pytest.raises(checks.ExerciseWrong, match="differs from float32 arithmetic"):
        checks.decoder_layer(OffInLowPrecision)


# ---- Exercise 8.2: Decoder.forward -------------------------------------------------------------

class _BuggyStack(Decoder):
    same_input = memory_from_previous = masks_not_passed = masks_swapped = no_final_norm = False
    norm_every_layer = reversed_layers = return_in_loop = norm_input = skip_layers = False
    memory_mask_not_passed = n_heads_layers = to_float32 = mutates_x = detaches = crash = False
    returns_tuple = False

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        masks = (memory_mask, tgt_mask) if self.masks_swapped else (tgt_mask, memory_mask)
        if self.masks_not_passed:
            masks = (None, None)
        if self.memory_mask_not_passed:
            masks = (tgt_mask, None)
        if self.crash:
            return x @ memory
        if self.to_float32:
            self.float()
            x, memory = x.float(), memory.float()
        layers = list(self.layers)
        if self.reversed_layers:
            layers.reverse()
        if self.n_heads_layers:
            layers = [self.layers[i % len(self.layers)] for i in range(self.n_heads)]
        out = self.norm(x) if (self.norm_input and self.norm is not None) else x
        for layer in layers:
            if self.skip_layers:
                break
            source = out if self.memory_from_previous else memory
            new = layer(x if self.same_input else out, source, *masks)
            if self.mutates_x:
                x[:] = new
                new = x
            out = new.detach() if self.detaches else new
            if self.norm_every_layer and self.norm is not None:
                out = self.norm(out)
            if self.return_in_loop:
                break
        if self.norm is not None and not (self.no_final_norm or self.norm_every_layer or self.norm_input):
            out = self.norm(out)
        return (out, None) if self.returns_tuple else out


def buggy_stack(**switches):
    return type("BuggyStack", (_BuggyStack,), switches)


def test_the_buggy_stack_base_class_itself_passes():
    checks.decoder_stack(_BuggyStack)


STACK_BUGS = [   # (class of the bug, switch, hint)
    ("structure", "same_input", "every layer reads the stack's input x"),
    ("structure", "skip_layers", "the layers are never applied"),
    ("structure", "return_in_loop", "only the first layer is applied"),
    ("structure", "reversed_layers", "applied in reverse order"),
    ("structure", "memory_from_previous", "previous decoder layer's output as their memory"),
    ("masks", "masks_not_passed", "the masks are not passed on"),
    ("masks", "memory_mask_not_passed", "the masks are not passed on"),
    ("masks", "masks_swapped", "the two masks are swapped"),
    ("norm", "no_final_norm", "final LayerNorm of the pre-LN stack is missing"),
    ("norm", "norm_every_layer", "applied after every layer"),
    ("norm", "norm_input", "applied to the stack's input"),
    ("configuration", "n_heads_layers", "differs from the reference"),
    ("return type", "returns_tuple", "not a tuple"),
    ("exception", "crash", "raised RuntimeError"),
    ("dtype", "to_float32", "it must be torch.float16"),
    ("inputs unchanged", "mutates_x", "changed its input `x` in place"),
    ("autograd", "detaches", "does not depend on the inputs through autograd"),
]


@pytest.mark.parametrize("kind, switch, hint", STACK_BUGS, ids=[b[1] for b in STACK_BUGS])
def test_buggy_decoder_stack_fails_with_targeted_hint(kind, switch, hint):
    for _ in range(2):
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.decoder_stack(buggy_stack(**{switch: True}))
        assert hint in str(error.value), str(error.value)


def test_dropout_applied_by_the_stack_in_eval_mode_is_caught():
    class DropsAlways(Decoder):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            x = super().forward(x, memory, tgt_mask, memory_mask)
            p = self.layers[0].dropout1.p
            return F.dropout(x, p) if p > 0 else x
    with pytest.raises(checks.ExerciseWrong, match="in eval mode two forward passes differ"):
        checks.decoder_stack(DropsAlways)


class ReduceStack(Decoder):
    """Correct, written with functools.reduce and keyword arguments."""

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        import functools
        out = functools.reduce(lambda h, layer: layer(h, memory=memory, tgt_mask=tgt_mask,
                                                      memory_mask=memory_mask), self.layers, x)
        return out if self.norm is None else self.norm(out)


class IndexStack(Decoder):
    """Correct, with an index loop and the norm chosen by norm_first."""

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        for i in range(len(self.layers)):
            x = self.layers[i](x, memory, tgt_mask, memory_mask)
        return self.norm(x) if self.norm_first else x


@pytest.mark.parametrize("answer", [ReduceStack, IndexStack], ids=["reduce", "index loop"])
def test_equivalent_correct_stacks_pass(answer, capsys):
    checks.decoder_stack(answer)
    assert "✅" in capsys.readouterr().out
