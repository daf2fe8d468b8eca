"""Chapter 05: receptive_field, self_attention_macs, ConvEncoder and RNNEncoder."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scratchformer.attention import SelfAttention, padding_mask
from scratchformer.baselines import ConvEncoder, RNNEncoder, receptive_field, self_attention_macs


def influence_width(layers: nn.Module, T: int, position: int) -> set[int]:
    """Perturb input `position` of a (1, 1, T) float64 signal; return the outputs that change."""
    x = torch.randn(1, 1, T, dtype=torch.float64)
    bump = torch.zeros_like(x)
    bump[..., position] = 1.0
    with torch.no_grad():
        changed = (layers(x + bump) != layers(x))[0, 0]
    return set(torch.nonzero(changed).flatten().tolist())


# ---- receptive_field ------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(layers=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), max_size=5),
       seed=st.integers(0, 2**16))
def test_receptive_field_equals_brute_force_measurement(layers, seed):
    """Perturb one input of a random linear stack ('valid' convs, no border in reach): the outputs
    that change span a window as wide as the receptive field."""
    torch.manual_seed(seed)
    kernel_sizes = [k for k, _ in layers]
    dilations = [d for _, d in layers]
    span = sum((k - 1) * d for k, d in layers)
    stack = nn.Sequential(*[nn.Conv1d(1, 1, k, dilation=d, dtype=torch.float64) for k, d in layers])
    T = 2 * span + 3
    changed = influence_width(stack, T, position=span + 1)
    assert max(changed) - min(changed) + 1 == receptive_field(kernel_sizes, dilations)
    assert len(changed) <= receptive_field(kernel_sizes, dilations)  # dilations may leave holes


def test_a_dilated_layer_leaves_holes_inside_its_receptive_field():
    torch.manual_seed(0)
    layer = nn.Conv1d(1, 1, kernel_size=3, dilation=2, dtype=torch.float64)
    assert influence_width(layer, 9, position=4) == {0, 2, 4}          # outputs 1 and 3 never move
    assert receptive_field(3, 2) == 5


def test_receptive_field_examples_and_int_shorthand():
    assert receptive_field([]) == 1
    assert receptive_field([3, 3, 3]) == 7
    assert receptive_field(3, [1, 3, 9]) == 27                     # k^L with dilations k^(l-1)
    assert receptive_field([3] * 4, [3**l for l in range(4)]) == 81
    assert receptive_field(5) == 5 and receptive_field(3, 2) == 5  # two ints: one layer
    assert receptive_field([2, 4], 3) == 1 + 3 + 9


@pytest.mark.parametrize("args, needles", [
    (([3, 3], [1, 2, 4]), ["[3, 3]", "[1, 2, 4]", "one entry per layer"]),
    (([3, 0],), ["kernel_sizes", "[3, 0]"]),
    ((3, [1, -2]), ["dilations", "[1, -2]"]),
    ((2.5,), ["kernel_sizes", "2.5"]),
    (([3, True],), ["kernel_sizes"]),
])
def test_receptive_field_rejects_bad_arguments(args, needles):
    with pytest.raises(ValueError) as error:
        receptive_field(*args)
    for needle in needles:
        assert needle in str(error.value), str(error.value)


# ---- self_attention_macs --------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), d_model=st.integers(1, 24), d_k=st.integers(1, 24), d_v=st.integers(1, 24))
def test_self_attention_macs_equals_torch_flop_counter(n, d_model, d_k, d_v):
    """The closed form equals the multiply-adds torch counts when SelfAttention runs."""
    module = SelfAttention(d_model, d_k=d_k, d_v=d_v)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.randn(1, n, d_model))
    assert self_attention_macs(n, d_model, d_k, d_v) == counter.get_total_flops() // 2


def test_self_attention_macs_defaults_follow_self_attention():
    assert self_attention_macs(10, 6) == self_attention_macs(10, 6, 6, 6) == 10 * 6 * 18 + 100 * 12
    assert self_attention_macs(10, 6, 4) == self_attention_macs(10, 6, 4, 4)


@pytest.mark.parametrize("args, needle", [((0, 8), "n"), ((4, 8, -1), "d_k"), ((4, 2.0), "d_model")])
def test_self_attention_macs_rejects_bad_sizes(args, needle):
    with pytest.raises(ValueError, match=f"^{needle} must be an int >= 1"):
        self_attention_macs(*args)


# ---- ConvEncoder ----------------------------------------------------------------------------

def test_conv_encoder_equals_layers_by_hand():
    torch.manual_seed(0)
    encoder = ConvEncoder(5, kernel_size=5, n_layers=3, dilation=[1, 2, 3])
    x = torch.randn(2, 13, 5)
    h = x.transpose(1, 2)
    for conv, d in zip(encoder.convs, [1, 2, 3]):
        h = h + torch.relu(F.conv1d(h, conv.weight, conv.bias, padding=2 * d, dilation=d))
    torch.testing.assert_close(encoder(x), h.transpose(1, 2))
    assert encoder.receptive_field == receptive_field(5, [1, 2, 3]) == 25


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4), kernel=st.sampled_from([1, 3, 5]),
       n_layers=st.integers(1, 3), seed=st.integers(0, 2**16), mask_shape=st.sampled_from(["BT", "B1T"]))
def test_conv_encoder_padding_never_changes_real_outputs(lengths, kernel, n_layers, seed, mask_shape):
    torch.manual_seed(seed)
    T = max(lengths) + 2                                   # at least two padded steps everywhere
    encoder = ConvEncoder(4, kernel_size=kernel, n_layers=n_layers)
    x = torch.randn(len(lengths), T, 4)
    keep = padding_mask(torch.tensor(lengths), T)
    padded = torch.where(keep[:, :, None], x, 1e3 * torch.randn_like(x))
    with torch.no_grad():
        out = encoder(padded, keep if mask_shape == "BT" else keep[:, None, :])
        for b, n_real in enumerate(lengths):
            if n_real:
                torch.testing.assert_close(out[b, :n_real], encoder(x[b : b + 1, :n_real])[0])
    assert (out[~keep] == 0).all()
    assert torch.isfinite(out).all()


def test_conv_encoder_outputs_outside_the_receptive_field_never_change():
    torch.manual_seed(0)
    encoder = ConvEncoder(3, kernel_size=3, n_layers=3, dilation=[1, 2, 1]).double()
    assert encoder.receptive_field == 9
    x = torch.randn(1, 30, 3, dtype=torch.float64)
    bumped = x.clone()
    bumped[0, 15] += 1.0
    with torch.no_grad():
        changed = (encoder(bumped) != encoder(x)).any(-1)[0]
    positions = set(torch.nonzero(changed).flatten().tolist())
    assert 15 in positions and positions <= set(range(15 - 4, 15 + 5))


def test_conv_encoder_without_mask_keeps_shape_and_gradients():
    encoder = ConvEncoder(8)
    x = torch.randn(2, 7, 8, requires_grad=True)
    out = encoder(x)
    assert out.shape == (2, 7, 8)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- RNNEncoder -----------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_rnn_encoder_without_padding_is_the_wrapped_rnn(cell):
    torch.manual_seed(0)
    encoder = RNNEncoder(6, n_layers=2, cell=cell)
    reference = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](6, 6, num_layers=2, batch_first=True)
    reference.load_state_dict(encoder.rnn.state_dict())
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(encoder(x), reference(x)[0])
    torch.testing.assert_close(encoder(x, torch.ones(3, 5, dtype=torch.bool)), reference(x)[0])


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4), cell=st.sampled_from(["gru", "lstm", "rnn"]),
       bidirectional=st.booleans(), seed=st.integers(0, 2**16))
def test_rnn_encoder_padding_never_changes_real_outputs(lengths, cell, bidirectional, seed):
    """Each real output equals the output of its sequence run alone, in both directions."""
    torch.manual_seed(seed)
    T = max(lengths) + 2
    encoder = RNNEncoder(6, n_layers=2, cell=cell, bidirectional=bidirectional)
    x = torch.randn(len(lengths), T, 6)
    keep = padding_mask(torch.tensor(lengths), T)
    padded = torch.where(keep[:, :, None], x, 1e3 * torch.randn_like(x))
    with torch.no_grad():
        out = encoder(padded, keep[:, None, :])
        for b, n_real in enumerate(lengths):
            if n_real:
                torch.testing.assert_close(out[b, :n_real], encoder(x[b : b + 1, :n_real])[0])
    assert out.shape == (len(lengths), T, 6)
    assert (out[~keep] == 0).all()


def test_rnn_encoder_empty_sequence_gives_zeros_and_finite_gradients():
    encoder = RNNEncoder(4, bidirectional=True)
    x = torch.randn(2, 3, 4, requires_grad=True)
    out = encoder(x, padding_mask(torch.tensor([0, 2]), 3))
    assert torch.equal(out[0], torch.zeros(3, 4))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unidirectional_rnn_encoder_is_causal():
    """Changing the input at step j never changes the outputs before j."""
    torch.manual_seed(0)
    encoder = RNNEncoder(5)
    x = torch.randn(1, 8, 5)
    changed = x.clone()
    changed[0, 5] += 10
    with torch.no_grad():
        a, b = encoder(x), encoder(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, needles", [
    (lambda: ConvEncoder(8)(torch.randn(2, 5, 7)), ["ConvEncoder(d_model=8)", "(2, 5, 7)"]),
    (lambda: ConvEncoder(8)(torch.randn(5, 8)), ["(5, 8)"]),
    (lambda: ConvEncoder(8)(torch.randn(2, 5, 8), torch.ones(2, 4, dtype=torch.bool)), ["(2, 4)", "(2, 5, 8)"]),
    (lambda: ConvEncoder(8)(torch.randn(2, 5, 8), torch.ones(2, 5)), ["boolean", "torch.float32"]),
    (lambda: ConvEncoder(8, kernel_size=4), ["odd", "4"]),
    (lambda: ConvEncoder(8, n_layers=2, dilation=[1, 2, 4]), ["one entry per layer", "[1, 2, 4]"]),
    (lambda: ConvEncoder(8, n_layers=0), ["n_layers", "0"]),
    (lambda: RNNEncoder(6)(torch.randn(2, 5, 4)), ["RNNEncoder(d_model=6)", "(2, 5, 4)"]),
    (lambda: RNNEncoder(6)(torch.randn(2, 5, 6), torch.tensor([[True, False, True, True, True]] * 2)),
     ["right-padding", "padding_mask"]),
    (lambda: RNNEncoder(6)(torch.randn(2, 5, 6), torch.ones(3, 5, dtype=torch.bool)), ["(3, 5)", "(2, 5, 6)"]),
    (lambda: RNNEncoder(5, bidirectional=True), ["even", "d_model=5"]),
    (lambda: RNNEncoder(6, cell="transformer"), ["'transformer'", "gru"]),
    (lambda: RNNEncoder(6)(torch.randint(0, 3, (2, 5, 6))), ["torch.int64"]),
])
def test_bad_input_raises_value_error_naming_the_problem(call, needles):
    with pytest.raises(ValueError) as error:
        call()
    for needle in needles:
        assert needle in str(error.value), str(error.value)
