"""The chapter 08 checkers bite: references pass, stubs are 'not attempted', and every known-buggy
decoder layer and decoder stack fails with its targeted hint."""

import pytest
import torch

from scratchformer import checks
from scratchformer.decoder import Decoder, DecoderLayer
from scratchformer.encoder import residual

# ---- references pass, stubs are not attempted --------------------------------------------------


def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):
        checks.decoder_layer(DecoderLayer)
        checks.decoder_stack(Decoder)
    assert capsys.readouterr().out.count("✅") == 6


def test_a_forward_function_is_accepted_too(capsys):
    """``checks.decoder_layer`` takes a class or an unbound forward(layer, x, memory, tgt_mask, memory_mask)."""
    checks.decoder_layer(DecoderLayer.forward)
    assert "✅" in capsys.readouterr().out


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
    norm_first_ignored = memory_normalised = tgt_mask_ignored = returns_tuple = False

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        self_mask, cross_mask = tgt_mask, memory_mask
        if self.causal_on_cross:
            self_mask, cross_mask = memory_mask, tgt_mask
        if self.memory_mask_ignored:
            cross_mask = None
        if self.tgt_mask_ignored:
            self_mask = None
        norm_first = not self.norm_first if self.norm_first_ignored else self.norm_first

        def self_attend(h):
            return self.self_attn(h, h, h, mask=self_mask)[0]

        def cross_attend(h):
            mem = self.norm2(memory) if self.memory_normalised else memory
            if self.kv_from_decoder:
                return self.cross_attn(h, h, h, mask=cross_mask)[0]
            if self.q_from_memory:
                return self.cross_attn(mem, h, h, mask=cross_mask)[0]
            return self.cross_attn(h, mem, mem, mask=cross_mask)[0]

        steps = [(self_attend, self.norm1, self.dropout1), (cross_attend, self.norm2, self.dropout2)]
        if self.cross_first:
            steps.reverse()
        for sublayer, norm, dropout in steps + [(self.feed_forward, self.norm3, self.dropout3)]:
            x = residual(x, sublayer, norm, norm_first, dropout)
        return (x, None) if self.returns_tuple else x


def buggy(**switches):
    return type("Buggy", (_Buggy,), switches)


def test_the_buggy_base_class_itself_passes():
    """The switches below are the only difference from a correct forward."""
    checks.decoder_layer(_Buggy)


@pytest.mark.parametrize("cls, hint", [
    # the five bugs named in the issue
    (buggy(kv_from_decoder=True), "keys and values from the decoder instead of the memory"),
    (buggy(q_from_memory=True), "queries from the memory instead of the decoder"),
    (buggy(causal_on_cross=True), "causal mask is applied to the cross-attention instead of the self-attention"),
    (buggy(memory_mask_ignored=True), "the memory padding mask is ignored"),
    (buggy(cross_first=True), "cross-attention before self-attention"),
    # and a few more
    (buggy(tgt_mask_ignored=True), "the target mask is ignored"),
    (buggy(norm_first_ignored=True), "norm_first is ignored"),
    (buggy(memory_normalised=True), "the memory goes through the decoder's LayerNorm"),
    (buggy(returns_tuple=True), "not a tuple"),
], ids=["kv_from_decoder", "q_from_memory", "causal_on_cross", "memory_mask_ignored", "cross_first",
        "tgt_mask_ignored", "norm_first_ignored", "memory_normalised", "tuple"])
def test_buggy_decoder_layer_fails_with_targeted_hint(cls, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.decoder_layer(cls)
    assert hint in str(error.value), str(error.value)


def test_buggy_forward_function_fails_with_targeted_hint():
    def forward(layer, x, memory, tgt_mask=None, memory_mask=None):       # keys and values from the decoder
        x = residual(x, lambda h: layer.self_attn(h, h, h, mask=tgt_mask)[0], layer.norm1, layer.norm_first)
        x = residual(x, lambda h: layer.cross_attn(h, h, h)[0], layer.norm2, layer.norm_first)
        return residual(x, layer.feed_forward, layer.norm3, layer.norm_first)
    with pytest.raises(checks.ExerciseWrong, match="keys and values from the decoder"):
        checks.decoder_layer(forward)


def test_a_bug_that_shows_only_when_target_and_source_lengths_differ_is_caught():
    """A layer that mixes the (padded) memory into its output only when T != S is still caught."""
    class LeaksWhenLengthsDiffer(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            out = super().forward(x, memory, tgt_mask, memory_mask)
            return out + 1e-3 * memory.mean(1, keepdim=True) if x.size(1) != memory.size(1) else out
    with pytest.raises(checks.ExerciseWrong):
        checks.decoder_layer(LeaksWhenLengthsDiffer)


def test_future_leak_is_caught_even_when_it_matches_no_known_variant():
    class Leaks(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            return super().forward(x, memory, tgt_mask, memory_mask) + 1e-3 * x.mean(1, keepdim=True)
    with pytest.raises(checks.ExerciseWrong):
        checks.decoder_layer(Leaks)


def test_nan_for_empty_rows_is_caught():
    class MinusInfinity(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            out = super().forward(x, memory, tgt_mask, memory_mask)
            if memory_mask is not None and not memory_mask.any(-1).all():
                out = out + torch.where(memory_mask.any(-1, keepdim=True), 0.0, float("nan"))
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


def test_crash_is_reported_as_wrong():
    class Crashes(DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            return x @ memory
    with pytest.raises(checks.ExerciseWrong, match="RuntimeError"):
        checks.decoder_layer(Crashes)


# ---- Exercise 8.2: Decoder.forward -------------------------------------------------------------

class _BuggyStack(Decoder):
    same_input = memory_from_previous = masks_not_passed = masks_swapped = no_final_norm = False
    norm_every_layer = False

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        masks = (memory_mask, tgt_mask) if self.masks_swapped else (tgt_mask, memory_mask)
        if self.masks_not_passed:
            masks = (None, None)
        out = x
        for layer in self.layers:
            source = out if self.memory_from_previous else memory
            out = layer(x if self.same_input else out, source, *masks)
            if self.norm_every_layer and self.norm is not None:
                out = self.norm(out)
        if self.norm is not None and not (self.no_final_norm or self.norm_every_layer):
            out = self.norm(out)
        return out


def buggy_stack(**switches):
    return type("BuggyStack", (_BuggyStack,), switches)


def test_the_buggy_stack_base_class_itself_passes():
    checks.decoder_stack(_BuggyStack)


@pytest.mark.parametrize("cls, hint", [
    (buggy_stack(same_input=True), "every layer reads the stack's input x"),
    (buggy_stack(memory_from_previous=True), "previous decoder layer's output as their memory"),
    (buggy_stack(masks_not_passed=True), "the masks are not passed on"),
    (buggy_stack(masks_swapped=True), "the two masks are swapped"),
    (buggy_stack(no_final_norm=True), "final LayerNorm of the pre-LN stack is missing"),
    (buggy_stack(norm_every_layer=True), "applied after every layer"),
], ids=["same_input", "memory_from_previous", "masks_not_passed", "masks_swapped", "no_final_norm",
        "norm_every_layer"])
def test_buggy_decoder_stack_fails_with_targeted_hint(cls, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.decoder_stack(cls)
    assert hint in str(error.value), str(error.value)
