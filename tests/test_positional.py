"""Chapter 04: permutation equivariance, sinusoidal and learned encodings, rotary embeddings."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchformer.attention import SelfAttention, scaled_dot_product_attention
from scratchformer.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    rotate_pairs,
    sinusoidal_table,
)


@st.composite
def sequence_and_permutation(draw, non_identity=False):
    T = draw(st.integers(2 if non_identity else 1, 9))
    perm = draw(st.permutations(range(T)))
    if non_identity:
        perm = perm if list(perm) != list(range(T)) else list(range(1, T)) + [0]
    return T, torch.tensor(perm), draw(st.integers(0, 2**16))


# ---- 4.1 permutation equivariance -------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(case=sequence_and_permutation(), B=st.integers(1, 3), D=st.integers(1, 12))
def test_self_attention_without_positions_is_permutation_equivariant(case, B, D):
    T, perm, seed = case
    torch.manual_seed(seed)
    attention = SelfAttention(D)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        out, weights = attention(x)
        out_p, weights_p = attention(x[:, perm])
    torch.testing.assert_close(out_p, out[:, perm])                   # Attn(PX) = P Attn(X)
    torch.testing.assert_close(weights_p, weights[:, perm][:, :, perm])  # weights: P W Pᵀ


def _attention_with(kind, D, T):
    """Self-attention (chapter 02) with positions: added before it, or rotary inside it."""
    attention = SelfAttention(D)
    if kind == "rotary":
        rotary = RotaryEmbedding(D)

        def forward(x):
            q, k = rotary(attention.W_q(x), attention.W_k(x))
            return scaled_dot_product_attention(q, k, attention.W_v(x))[0]
        return forward
    encoding = SinusoidalPositionalEncoding(D) if kind == "sinusoidal" else LearnedPositionalEmbedding(T, D)
    if kind == "learned":
        torch.nn.init.normal_(encoding.embedding.weight)               # trained tables are not tiny
    return lambda x: attention(encoding(x))[0]


@settings(max_examples=30, deadline=None)
@given(case=sequence_and_permutation(non_identity=True), kind=st.sampled_from(["sinusoidal", "learned", "rotary"]))
def test_with_positions_self_attention_is_not_permutation_equivariant(case, kind):
    T, perm, seed = case
    torch.manual_seed(seed)
    D = 8
    forward = _attention_with(kind, D, T)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        difference = (forward(x[:, perm]) - forward(x)[:, perm]).abs().max()
    assert difference > 1e-3, f"{kind}: a permuted input gave the permuted output"


# ---- 4.2 sinusoidal encoding ------------------------------------------------------------------

def closed_form(length, d_model):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), entry by entry."""
    table = torch.empty(length, d_model, dtype=torch.float64)
    for pos in range(length):
        for j in range(d_model):
            two_i = j - j % 2
            angle = pos / 10000 ** (two_i / d_model)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("length, d_model", [(1, 2), (50, 16), (7, 5), (30, 1), (200, 64), (0, 4), (3, 0)])
def test_sinusoidal_table_equals_closed_form(length, d_model):
    table = sinusoidal_table(length, d_model)
    assert table.shape == (length, d_model) and table.dtype == torch.float32
    torch.testing.assert_close(table, closed_form(length, d_model).float(), atol=1e-6, rtol=0)


def test_sinusoidal_first_rows():
    table = sinusoidal_table(2, 4)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))     # sin 0, cos 0
    torch.testing.assert_close(table[1], torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]))


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 300), d_model=st.integers(1, 40))
def test_sinusoidal_rows_do_not_depend_on_the_table_length(L, d_model):
    assert torch.equal(sinusoidal_table(2 * L, d_model)[:L], sinusoidal_table(L, d_model))


def test_sinusoidal_dot_product_depends_only_on_distance():
    d_model = 32
    table = sinusoidal_table(300, d_model).double()
    omega = 10000 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    for p, k in [(0, 5), (100, 5), (17, 40), (250, 0)]:
        expected = torch.cos(k * omega).sum()
        torch.testing.assert_close(table[p] @ table[p + k], expected, atol=1e-5, rtol=0)


def test_sinusoidal_module_adds_the_table_at_any_length():
    encoding = SinusoidalPositionalEncoding(6)
    x = torch.randn(2, 11, 6)
    torch.testing.assert_close(encoding(x), x + closed_form(11, 6).float())
    long = torch.randn(1, 3000, 6)
    torch.testing.assert_close(encoding(long), long + sinusoidal_table(3000, 6))
    torch.testing.assert_close(encoding(x), x + closed_form(11, 6).float())  # after the table grew
    assert "table" not in encoding.state_dict()                          # computed, never saved


def test_sinusoidal_module_follows_dtype():
    encoding = SinusoidalPositionalEncoding(8)
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    out = encoding(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x + sinusoidal_table(5, 8).to(torch.bfloat16))


@pytest.mark.parametrize("module", [lambda p: SinusoidalPositionalEncoding(8, dropout=p),
                                    lambda p: LearnedPositionalEmbedding(10, 8, dropout=p)])
def test_dropout_is_applied_after_the_sum_in_training_and_off_in_eval(module):
    torch.manual_seed(0)
    encoding = module(0.5)
    x = torch.randn(4, 10, 8)
    encoding.eval()
    first, second = encoding(x), encoding(x)
    assert torch.equal(first, second)                                   # eval: no randomness
    clean = first
    encoding.train()
    out = encoding(x)
    dropped = out == 0
    assert 0.3 < dropped.float().mean() < 0.7
    # Every entry is either 0 or (x + position) / (1 - p): dropout acts on the sum.
    torch.testing.assert_close(out[~dropped], 2 * clean[~dropped])
    assert not torch.equal(encoding(x), out)                            # training: a new mask each call


def test_dropout_zero_by_default():
    x = torch.randn(2, 5, 8)
    for encoding in (SinusoidalPositionalEncoding(8), LearnedPositionalEmbedding(5, 8)):
        encoding.train()
        assert torch.equal(encoding(x), encoding(x))


# ---- 4.3 learned embeddings -------------------------------------------------------------------

def test_learned_adds_one_trained_row_per_position():
    learned = LearnedPositionalEmbedding(max_len=12, d_model=4)
    assert learned.embedding.weight.shape == (12, 4) and learned.embedding.weight.requires_grad
    assert learned.embedding.weight.std() < 0.05                        # N(0, 0.02²)
    x = torch.randn(3, 12, 4)
    torch.testing.assert_close(learned(x), x + learned.embedding.weight)
    torch.testing.assert_close(learned(x[:, :5]), x[:, :5] + learned.embedding.weight[:5])
    learned(x).sum().backward()
    assert learned.embedding.weight.grad is not None


def test_learned_raises_beyond_max_len_naming_both_lengths():
    learned = LearnedPositionalEmbedding(max_len=12, d_model=4)
    with pytest.raises(ValueError) as error:
        learned(torch.randn(2, 13, 4))
    message = str(error.value)
    assert "max_len=12" in message and "T=13" in message and "(2, 13, 4)" in message, message


# ---- 4.4 rotary embeddings --------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 5, -3])
def test_rotary_is_a_counter_clockwise_rotation_of_neighbouring_pairs(m):
    """Closed form, head size 2: (1, 0) at position m becomes (cos mθ₀, sin mθ₀) with θ₀ = 1, and
    (0, 1) becomes (-sin mθ₀, cos mθ₀)."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                       # two tokens (T=2, Dh=2)
    rotated = rotate_pairs(x, torch.tensor([m, m]))
    c, s = math.cos(m), math.sin(m)
    torch.testing.assert_close(rotated, torch.tensor([[c, s], [-s, c]]))


def test_rotary_pairs_are_neighbours_not_halves():
    """Head size 4, base 100: θ = (1, 100^(-1/2) = 0.1). A unit vector in coordinate 2 belongs to
    pair 1 = (x2, x3) and turns by m·0.1 into coordinates 2 and 3 (the half-split convention would
    pair x0 with x2 and move it into coordinate 0)."""
    m = 3
    e2 = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    rotated = rotate_pairs(e2, torch.tensor([m]), base=100.0)
    torch.testing.assert_close(rotated, torch.tensor([[0.0, 0.0, math.cos(0.3), math.sin(0.3)]]))
    e0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rotate_pairs(e0, torch.tensor([m]), base=100.0),
                               torch.tensor([[math.cos(3), math.sin(3), 0.0, 0.0]]))


def complex_reference(x, positions, base=10000.0):
    """Pairs as complex numbers x[2i] + i·x[2i+1], multiplied by exp(i·m·θ_i)."""
    Dh = x.size(-1)
    theta = base ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], Dh // 2, 2).contiguous())
    turned = z * torch.polar(torch.ones(()).double(), positions.double()[..., None] * theta)
    return torch.view_as_real(turned).reshape(x.shape).to(x.dtype)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=2), T=st.integers(1, 8),
       half=st.integers(1, 8), base=st.sampled_from([10.0, 100.0, 10000.0]), seed=st.integers(0, 2**16))
def test_rotary_matches_complex_multiplication(shape, T, half, base, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, T, 2 * half, generator=g)
    positions = torch.randint(-50, 200, (T,), generator=g)
    # float32 angles of up to ~200 radians carry an absolute error of ~1e-5
    torch.testing.assert_close(rotate_pairs(x, positions, base), complex_reference(x, positions, base),
                               atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(half=st.integers(1, 16), T=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_rotation_preserves_norms(half, T, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, 2 * half, generator=g)
    rotated = rotate_pairs(x, torch.randint(0, 1000, (T,), generator=g))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)


def _score(q, k, m, n):
    return (rotate_pairs(q[None], torch.tensor([m])) @ rotate_pairs(k[None], torch.tensor([n])).T).item()


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 60), n=st.integers(0, 60), shift=st.integers(-30, 100), seed=st.integers(0, 2**16))
def test_rotary_score_is_invariant_to_shifting_both_positions(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    assert math.isclose(_score(q, k, m, n), _score(q, k, m + shift, n + shift), abs_tol=2e-4, rel_tol=1e-4)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 60), shift=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_rotary_score_depends_on_the_offset(m, shift, seed):
    """Moving only the query changes its scores against keys at positions 0..7."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    before = torch.tensor([_score(q, k, m, n) for n in range(8)])
    after = torch.tensor([_score(q, k, m + shift, n) for n in range(8)])
    assert (before - after).abs().max() > 1e-3


def test_rotary_module_positions_offset_and_identity_at_zero():
    rotary = RotaryEmbedding(8)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    q_rot, k_rot = rotary(q, k)
    torch.testing.assert_close(q_rot, rotate_pairs(q, torch.arange(5)))
    torch.testing.assert_close(k_rot, rotate_pairs(k, torch.arange(5)))
    torch.testing.assert_close(q_rot[..., 0, :], q[..., 0, :])          # position 0: no rotation
    q_off, k_off = rotary(q, k, positions=7)
    torch.testing.assert_close(q_off, rotate_pairs(q, torch.arange(7, 12)))
    explicit = torch.tensor([4, 0, 9, 9, 2])
    torch.testing.assert_close(rotary(q, k, explicit)[1], rotate_pairs(k, explicit))
    torch.testing.assert_close(RotaryEmbedding(8, base=50).rotate(q), rotate_pairs(q, torch.arange(5), 50.0))
    assert list(rotary.parameters()) == []


def test_rotary_scores_form_a_toeplitz_matrix():
    """The same query and key content at every position: scores depend only on n - m."""
    torch.manual_seed(0)
    T, Dh = 12, 8
    q, k = torch.randn(Dh).expand(T, Dh), torch.randn(Dh).expand(T, Dh)
    q_rot, k_rot = RotaryEmbedding(Dh)(q, k)
    scores = q_rot @ k_rot.T
    for offset in range(-T + 1, T):
        diagonal = scores.diagonal(offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-5, rtol=0)


def test_rotary_in_bfloat16_is_close_to_float32():
    x = torch.randn(2, 6, 16)
    positions = torch.arange(6)
    low = rotate_pairs(x.bfloat16(), positions)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), rotate_pairs(x, positions), atol=5e-2, rtol=2e-2)


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, needles", [
    (lambda: RotaryEmbedding(7), ["head_dim=7", "even"]),
    (lambda: rotate_pairs(torch.randn(2, 5, 7), torch.arange(5)), ["(2, 5, 7)", "even"]),
    (lambda: rotate_pairs(torch.randn(2, 5, 8), torch.arange(6)), ["(6,)", "(2, 5)"]),
    (lambda: rotate_pairs(torch.randn(2, 5, 8), [0, 1, 2, 3, 4]), ["tensor", "torch.arange"]),
    (lambda: RotaryEmbedding(8)(torch.randn(2, 5, 6), torch.randn(2, 5, 6)), ["head_dim=8", "(2, 5, 6)"]),
    (lambda: RotaryEmbedding(8)(torch.randn(2, 5, 8), torch.randn(2, 4, 8)), ["(2, 5, 8)", "(2, 4, 8)", "rotate"]),
    (lambda: SinusoidalPositionalEncoding(8)(torch.randn(2, 5, 6)), ["d_model=8", "(2, 5, 6)"]),
    (lambda: SinusoidalPositionalEncoding(8)(torch.randn(8)), ["(8,)"]),
    (lambda: LearnedPositionalEmbedding(4, 8)(torch.randn(2, 3, 6)), ["d_model=8", "(2, 3, 6)"]),
    (lambda: sinusoidal_table(-1, 8), ["length", "-1"]),
    (lambda: sinusoidal_table(4, -2), ["d_model", "-2"]),
    (lambda: sinusoidal_table(4.0, 8), ["length", "4.0"]),
    (lambda: SinusoidalPositionalEncoding(8)(torch.ones(2, 3, 8, dtype=torch.long)), ["torch.int64"]),
])
def test_bad_input_raises_value_error_naming_the_problem(call, needles):
    with pytest.raises(ValueError) as error:
        call()
    for needle in needles:
        assert needle in str(error.value), str(error.value)
