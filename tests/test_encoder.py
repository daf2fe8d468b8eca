"""Chapter 06: FeedForward, LayerNorm, the sublayer connection, EncoderLayer and Encoder; parity with
nn.TransformerEncoderLayer / nn.TransformerEncoder, padding, empty sequences, errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from scratchformer.attention import padding_mask
from scratchformer.encoder import (
    Encoder,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    layer_norm,
    residual,
)
from scratchformer.interop import (
    encoder_from_torch,
    encoder_layer_from_torch,
    to_torch_key_padding_mask,
)

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def randomise(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Random weights everywhere (biases and LayerNorm gains included), so a missing piece shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g).to(p.dtype))
    return module.eval()


def torch_stack(d_model, n_heads, d_ff, n_layers, norm_first, activation="relu", dropout=0.1):
    layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=dropout, activation=activation,
                                       batch_first=True, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                     enable_nested_tensor=False)


# ---- parity with PyTorch -----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 6), H=st.sampled_from([1, 2, 4]), Dh=st.integers(1, 4),
       d_ff=st.integers(1, 12), norm_first=st.booleans(), activation=st.sampled_from(["relu", "gelu"]),
       masked=st.booleans(), fast_path=st.booleans(), seed=st.integers(0, 2**16))
def test_encoder_layer_matches_torch(B, S, H, Dh, d_ff, norm_first, activation, masked, fast_path, seed):
    """Eval mode, weights copied; with a key-padding mask compared at the real positions (the
    fast path may skip padded positions)."""
    D = H * Dh
    torch.manual_seed(seed)
    reference = randomise(nn.TransformerEncoderLayer(D, H, d_ff, dropout=0.2, activation=activation,
                                                     batch_first=True, norm_first=norm_first), seed)
    ours = encoder_layer_from_torch(reference)
    assert isinstance(ours, EncoderLayer) and not ours.training and ours.norm_first == norm_first
    x = torch.randn(B, S, D)
    lengths = torch.randint(1, S + 1, (B,))                     # at least one real token: see the NaN test
    keep = padding_mask(lengths, S)                             # (B, S), True at real tokens
    with torch.set_grad_enabled(not fast_path):                 # no_grad + eval: PyTorch's fast path
        expected = reference(x, src_key_padding_mask=to_torch_key_padding_mask(keep) if masked else None)
        out = ours(x, keep[:, None, :] if masked else None)
    real = keep if masked else torch.ones(B, S, dtype=torch.bool)
    torch.testing.assert_close(out[real], expected[real], **TOLERANCE[torch.float32])


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 6), H=st.sampled_from([1, 2]), n_layers=st.integers(1, 3),
       norm_first=st.booleans(), masked=st.booleans(), fast_path=st.booleans(), seed=st.integers(0, 2**16))
def test_encoder_matches_torch_transformer_encoder(B, S, H, n_layers, norm_first, masked, fast_path, seed):
    D = 4 * H
    torch.manual_seed(seed)
    reference = randomise(torch_stack(D, H, 16, n_layers, norm_first), seed)
    ours = encoder_from_torch(reference)
    assert len(ours.layers) == n_layers and (ours.norm is not None) == norm_first
    x = torch.randn(B, S, D)
    keep = padding_mask(torch.randint(1, S + 1, (B,)), S)
    with torch.set_grad_enabled(not fast_path):
        expected = reference(x, src_key_padding_mask=to_torch_key_padding_mask(keep) if masked else None)
        out = ours(x, keep[:, None, :] if masked else None)
    real = keep if masked else torch.ones(B, S, dtype=torch.bool)
    torch.testing.assert_close(out[real], expected[real], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("norm_first", [False, True])
def test_parity_in_bfloat16_and_copies_keep_dtype_and_mode(norm_first):
    torch.manual_seed(0)
    reference = randomise(torch_stack(16, 2, 32, 2, norm_first), 0).to(torch.bfloat16)
    ours = encoder_from_torch(reference)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    keep = padding_mask(torch.tensor([5, 3]), 5)
    with torch.no_grad():
        out = ours(x, keep[:, None, :])
        expected = reference(x, src_key_padding_mask=to_torch_key_padding_mask(keep))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[keep], expected[keep], **TOLERANCE[torch.bfloat16])
    assert encoder_layer_from_torch(reference.layers[0].train()).training


def test_gradients_match_torch():
    torch.manual_seed(0)
    reference = randomise(torch_stack(8, 2, 16, 2, norm_first=True), 1)
    ours = encoder_from_torch(reference)
    x = torch.randn(2, 4, 8)
    keep = padding_mask(torch.tensor([4, 2]), 4)
    (ours(x, keep[:, None, :])[keep] ** 2).sum().backward()
    (reference(x, src_key_padding_mask=~keep)[keep] ** 2).sum().backward()
    torch.testing.assert_close(ours.layers[0].feed_forward.linear1.weight.grad, reference.layers[0].linear1.weight.grad)
    torch.testing.assert_close(ours.layers[0].self_attn.in_proj.weight.grad,
                               reference.layers[0].self_attn.in_proj_weight.grad)
    torch.testing.assert_close(ours.norm.weight.grad, reference.norm.weight.grad)


def test_torch_fast_path_zeroes_padded_positions_with_nested_tensors_and_real_positions_agree():
    """nn.TransformerEncoder's default nested tensors (fast path) may give 0 at padded positions;
    the real positions agree, and ours are finite everywhere."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = randomise(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2), 0)
        ours = encoder_from_torch(reference)
        x = torch.randn(2, 5, 8)
        keep = padding_mask(torch.tensor([5, 2]), 5)
        with torch.no_grad():
            expected = reference(x, src_key_padding_mask=~keep)
            out = ours(x, keep[:, None, :])
    torch.testing.assert_close(out[keep], expected[keep])
    assert torch.isfinite(out).all()


def test_to_torch_key_padding_mask_inverts_once():
    """The interop conversion the chapter's parity section uses."""
    keep = padding_mask(torch.tensor([3, 1]), 4)
    assert torch.equal(to_torch_key_padding_mask(keep), ~keep)
    assert torch.equal(to_torch_key_padding_mask(keep[:, None, :]), ~keep)
    with pytest.raises(ValueError, match="boolean"):
        to_torch_key_padding_mask(keep.float())
    with pytest.raises(ValueError, match=r"\(B, S\) or \(B, 1, S\), got \(2, 4, 4\)"):
        to_torch_key_padding_mask(keep[:, None, :].expand(2, 4, 4))


def test_copies_refuse_what_they_cannot_copy():
    with pytest.raises(ValueError, match="nn.TransformerEncoderLayer"):
        encoder_layer_from_torch(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="bias=False"):
        encoder_layer_from_torch(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, bias=False))
    with pytest.raises(ValueError, match="relu and \\(exact\\) gelu"):
        encoder_layer_from_torch(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, activation=torch.tanh))
    with pytest.raises(ValueError, match="relu and \\(exact\\) gelu"):
        encoder_layer_from_torch(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
                                                            activation=nn.GELU(approximate="tanh")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre_without_norm = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True), 2, enable_nested_tensor=False)
        post_with_norm = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, norm=nn.LayerNorm(8), enable_nested_tensor=False)
    with pytest.raises(ValueError, match="needs a final LayerNorm"):
        encoder_from_torch(pre_without_norm)
    with pytest.raises(ValueError, match="post-LN"):
        encoder_from_torch(post_with_norm)
    with pytest.raises(ValueError, match="nn.TransformerEncoder"):
        encoder_from_torch(nn.TransformerEncoderLayer(8, 2, 16))


# ---- padding ------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 6), extra=st.integers(1, 4), norm_first=st.booleans(),
       seed=st.integers(0, 2**16), data=st.data())
def test_padding_never_changes_real_positions(B, S, extra, norm_first, seed, data):
    """Adding pad tokens (any content) never changes the encoder outputs at the real positions."""
    torch.manual_seed(seed)
    encoder = randomise(Encoder(8, 2, 16, 2, norm_first=norm_first), seed)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B)))
    keep = padding_mask(lengths, S)
    x = torch.randn(B, S, 8)
    x_noisy = torch.where(keep[..., None], x, 50 * torch.randn(B, S, 8))       # other padding content
    longer = torch.cat([x_noisy, 50 * torch.randn(B, extra, 8)], dim=1)       # and more of it
    with torch.no_grad():
        out = encoder(x, keep[:, None, :])
        out_longer = encoder(longer, padding_mask(lengths, S + extra)[:, None, :])
    torch.testing.assert_close(out_longer[:, :S][keep], out[keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_padded_sequence_gives_no_nan(dtype, norm_first):
    """A batch with a sequence of length 0 and one of length 1: outputs and gradients finite
    (PyTorch's own attention can give NaN there, pytorch/pytorch#41508)."""
    torch.manual_seed(0)
    encoder = Encoder(8, 2, 16, 2, norm_first=norm_first).to(dtype)
    x = torch.randn(3, 4, 8, dtype=dtype, requires_grad=True)
    keep = padding_mask(torch.tensor([0, 1, 4]), 4)
    out = encoder(x, keep[:, None, :])
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    with torch.no_grad():
        assert torch.isfinite(encoder.eval()(x, keep[:, None, :])).all()


# ---- LayerNorm ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), D=st.integers(1, 16),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), scale=st.sampled_from([1e-3, 1.0, 100.0]),
       seed=st.integers(0, 2**16))
def test_layer_norm_equals_nn_layer_norm_and_f_layer_norm(shape, D, eps, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = scale * (torch.randn(*shape, D, generator=g) + 1.0)
    reference = nn.LayerNorm(D, eps=eps)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(D, generator=g))
        reference.bias.copy_(torch.randn(D, generator=g))
    ours = LayerNorm(D, eps=eps)
    ours.load_state_dict(reference.state_dict())                              # same parameter names
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer_norm(x, reference.weight, reference.bias, eps),
                                   F.layer_norm(x, (D,), reference.weight, reference.bias, eps), atol=1e-5, rtol=1e-4)


def test_layer_norm_defaults_gradients_and_low_precision():
    ours, reference = LayerNorm(6), nn.LayerNorm(6)
    assert torch.equal(ours.weight, torch.ones(6)) and torch.equal(ours.bias, torch.zeros(6)) and ours.eps == 1e-5
    assert set(ours.state_dict()) == set(reference.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 4, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(3, 4, 6)
    (ours(x) * upstream).sum().backward()
    (reference(x_ref) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    low = (10 * torch.randn(2, 5, 6) + 3).to(torch.bfloat16)
    out = ours(low)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.to(torch.bfloat16)(low), **TOLERANCE[torch.bfloat16])
    # statistics in float32, then rounded once: the book's path exactly, the fused one to 1 ulp
    in_float32 = layer_norm(low.float(), ours.weight, ours.bias, ours.eps).to(torch.bfloat16)
    explicit = LayerNorm(6, fused=False)
    assert torch.equal(explicit(low), in_float32)
    torch.testing.assert_close(out, in_float32, atol=0, rtol=2**-7)
    constant = torch.full((2, 6), 7.0)                                        # variance 0: no NaN
    assert torch.equal(ours(constant), torch.zeros(2, 6))


def test_layer_norm_uses_biased_variance_and_eps_inside_the_root():
    x = torch.tensor([[0.0, 0.0, 0.0, 2.0]])                                  # mean 0.5, biased var 0.75
    out = layer_norm(x, torch.ones(4), torch.zeros(4), eps=0.25)
    torch.testing.assert_close(out, (x - 0.5) / torch.sqrt(torch.tensor(0.75 + 0.25)))


# ---- FeedForward --------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 6), D=st.integers(1, 8), d_ff=st.integers(1, 12),
       activation=st.sampled_from(["relu", "gelu"]), seed=st.integers(0, 2**16))
def test_feed_forward_is_position_wise(B, S, D, d_ff, activation, seed):
    torch.manual_seed(seed)
    ffn = FeedForward(D, d_ff, activation=activation).eval()
    x = torch.randn(B, S, D)
    act = {"relu": lambda h: torch.clamp(h, min=0), "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))}[activation]
    with torch.no_grad():
        out = ffn(x)
        for t in range(S):                                                    # each position on its own
            expected = act(x[:, t] @ ffn.linear1.weight.T + ffn.linear1.bias) @ ffn.linear2.weight.T + ffn.linear2.bias
            torch.testing.assert_close(out[:, t], expected)
        perm = torch.randperm(S)
        torch.testing.assert_close(ffn(x[:, perm]), out[:, perm])             # permuting commutes with FFN


def test_feed_forward_dropout_after_the_activation_in_training_only():
    torch.manual_seed(0)
    ffn = FeedForward(6, 12, dropout=0.5)
    x = torch.randn(2, 3, 6)
    torch.manual_seed(1)
    out = ffn(x)
    torch.manual_seed(1)
    expected = ffn.linear2(F.dropout(F.relu(ffn.linear1(x)), 0.5))
    torch.testing.assert_close(out, expected)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn.linear2(F.relu(ffn.linear1(x))))


# ---- the sublayer connection, the layer, the stack ----------------------------------------------

def test_residual_post_ln_and_pre_ln():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    sub = nn.Linear(4, 4)
    norm = randomise(LayerNorm(4), 0)
    drop = lambda t: 0.5 * t  # noqa: E731
    torch.testing.assert_close(residual(x, sub, norm), norm(x + sub(x)))
    torch.testing.assert_close(residual(x, sub, norm, norm_first=False, dropout=drop), norm(x + drop(sub(x))))
    torch.testing.assert_close(residual(x, sub, norm, norm_first=True, dropout=drop), x + drop(sub(norm(x))))


def test_encoder_layer_equals_its_equations():
    torch.manual_seed(0)
    for norm_first in (False, True):
        layer = randomise(EncoderLayer(8, 2, 16, norm_first=norm_first), 3)
        x = torch.randn(2, 5, 8)
        keep = padding_mask(torch.tensor([5, 2]), 5)[:, None, :]
        with torch.no_grad():
            if norm_first:
                n1 = layer.norm1(x)
                h = x + layer.self_attn(n1, n1, n1, mask=keep)[0]
                expected = h + layer.feed_forward(layer.norm2(h))
            else:
                h = layer.norm1(x + layer.self_attn(x, x, x, mask=keep)[0])
                expected = layer.norm2(h + layer.feed_forward(h))
            torch.testing.assert_close(layer(x, keep), expected)


def test_encoder_is_the_stack_with_a_final_norm_for_pre_ln_only():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8)
    for norm_first in (False, True):
        encoder = randomise(Encoder(8, 2, 16, 3, norm_first=norm_first), 5)
        assert (encoder.norm is not None) == norm_first
        weights = [layer.feed_forward.linear1.weight for layer in encoder.layers]
        assert len({w.data_ptr() for w in weights}) == 3                      # every layer its own weights
        with torch.no_grad():
            h = x
            for layer in encoder.layers:
                h = layer(h)
            torch.testing.assert_close(encoder(x), encoder.norm(h) if norm_first else h)


def test_default_is_post_ln():
    assert EncoderLayer(8, 2, 16).norm_first is False
    assert Encoder(8, 2, 16, 2).norm_first is False and Encoder(8, 2, 16, 2).norm is None


def test_eval_is_deterministic_with_dropout():
    torch.manual_seed(0)
    encoder = Encoder(8, 2, 16, 2, dropout=0.3)
    x = torch.randn(2, 5, 8)
    keep = padding_mask(torch.tensor([5, 3]), 5)[:, None, :]
    assert not torch.equal(encoder(x, keep), encoder(x, keep))                 # training: dropout active
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder(x, keep), encoder(x, keep))


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_dropout_of_one_leaves_only_the_residual_path(norm_first):
    """With the sublayer outputs fully dropped (p = 1), each sublayer connection is the identity
    (pre-LN) or the norm of its input (post-LN)."""
    torch.manual_seed(0)
    layer = randomise(EncoderLayer(8, 2, 16, dropout=0.1, norm_first=norm_first), 2).train()
    layer.dropout1.p = layer.dropout2.p = 1.0
    x = torch.randn(2, 5, 8)
    expected = x if norm_first else layer.norm2(layer.norm1(x))
    torch.testing.assert_close(layer(x), expected)


def test_post_ln_has_larger_gradients_near_the_output_at_initialisation():
    """Xiong et al. (2020): at initialisation, post-LN's last layer gets a larger gradient than pre-LN's."""
    def last_layer_gradient(norm_first, seed):
        torch.manual_seed(seed)
        encoder, readout = Encoder(32, 4, 64, 12, norm_first=norm_first), nn.Linear(32, 20)
        x, labels = torch.randn(4, 8, 32), torch.randint(0, 20, (4, 8))
        F.cross_entropy(readout(encoder(x)).flatten(0, 1), labels.flatten()).backward()
        return torch.cat([p.grad.flatten() for p in encoder.layers[-1].parameters()]).norm().item()

    post = sum(last_layer_gradient(False, s) for s in range(3))
    pre = sum(last_layer_gradient(True, s) for s in range(3))
    assert post > 1.3 * pre


# ---- errors -------------------------------------------------------------------------------------

def test_clear_errors():
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by n_heads=3.*\[1, 2, 5, 10\]"):
        EncoderLayer(10, 3, 16)
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
        Encoder(10, 4, 16, 2)
    with pytest.raises(ValueError, match=r"activation must be one of \['gelu', 'relu'\], got 'tanh'"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1.5"):
        EncoderLayer(8, 2, 16, dropout=1.5)
    with pytest.raises(ValueError, match="n_layers must be a positive int, got n_layers=0"):
        Encoder(8, 2, 16, 0)
    with pytest.raises(ValueError, match="d_ff must be a positive int"):
        FeedForward(8, 0)
    with pytest.raises(ValueError, match=r"EncoderLayer\(d_model=8\) got x of shape \(2, 5, 6\); expected \(B, S, 8\)"):
        EncoderLayer(8, 2, 16)(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"Encoder\(d_model=8\) got x of shape \(5, 8\); expected \(B, S, 8\)"):
        Encoder(8, 2, 16, 1)(torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"LayerNorm\(d_model=8\) got x of shape \(2, 3, 4\)"):
        LayerNorm(8)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"FeedForward\(d_model=8\) got x of shape \(3, 5\)"):
        FeedForward(8, 16)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        LayerNorm(8, eps=-1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 5\).*mask\[:, None, :\]"):
        EncoderLayer(8, 2, 16)(torch.randn(2, 5, 8), padding_mask(torch.tensor([5, 3]), 5))
    with pytest.raises(ValueError, match="True = may attend"):
        EncoderLayer(8, 2, 16)(torch.randn(2, 5, 8), torch.ones(2, 1, 5))


def test_at_initialisation_pre_ln_stream_gradient_grows_towards_the_input_and_post_ln_does_not_vanish():
    """The chapter's §6.9 claims, on a smaller stack: in pre-LN the gradient on the residual
    stream grows on its way down; in post-LN the first layer's gradient is of the order of the
    last layer's (no vanishing at initialisation)."""
    def gradients(norm_first, seed):
        torch.manual_seed(seed)
        encoder, readout = Encoder(32, 4, 64, 12, norm_first=norm_first), nn.Linear(32, 20)
        x, labels = torch.randn(4, 8, 32), torch.randint(0, 20, (4, 8))
        streams = []
        for layer in encoder.layers:
            x = layer(x)
            x.retain_grad()
            streams.append(x)
        out = x if encoder.norm is None else encoder.norm(x)
        F.cross_entropy(readout(out).flatten(0, 1), labels.flatten()).backward()
        params = [torch.cat([p.grad.flatten() for p in layer.parameters()]).norm() for layer in encoder.layers]
        return torch.stack(params), torch.stack([s.grad.norm() for s in streams])

    pre = [gradients(True, seed) for seed in range(3)]
    stream = torch.stack([s for _, s in pre]).mean(0)
    assert stream[0] > stream[5] > stream[-1]
    post = torch.stack([p for p, _ in (gradients(False, seed) for seed in range(3))]).mean(0)
    assert 0.5 < post[0] / post[-1] < 2
