"""The machinery around every checker: fallback to the reference in a notebook, one short
message instead of a traceback, the learner's line named, and the shared probes."""

import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from nbformat import v4

from scratchformer import checks
from scratchformer.attention import padding_mask
from scratchformer.checks import _probes
from scratchformer.checks._common import _call


def run_cells(*sources):
    nb = v4.new_notebook(cells=[v4.new_code_cell(s) for s in sources])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    return nb.cells


def errors(cell):
    return [o for o in cell.outputs if o.output_type == "error"]


def stdout(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_in_a_notebook_an_unsolved_exercise_fails_only_its_check_cell():
    cells = run_cells(
        "from scratchformer import checks\nimport torch",
        "def padding_mask(lengths, max_len):\n    raise NotImplementedError('Exercise 2.1')",
        "checks.padding_mask(padding_mask)",
        "print(padding_mask(torch.tensor([2, 0]), 3).tolist())",
        "print(padding_mask.__module__)",
    )
    assert [e.ename for e in errors(cells[2])] == ["ExerciseNotAttempted"]
    assert "Exercise 2.1 not solved yet: the cells below use scratchformer's `padding_mask`." \
        in stdout(cells[2])
    assert errors(cells[2])[0].traceback[0].startswith("\x1b[1m⏳ padding_mask: not attempted")
    assert len(errors(cells[2])[0].traceback) == 1          # one message, no traceback
    assert not errors(cells[3]) and stdout(cells[3]) == "[[True, True, False], [False, False, False]]\n"
    assert stdout(cells[4]).strip() == "scratchformer.attention"


def test_in_a_notebook_a_wrong_answer_names_the_learners_line():
    cells = run_cells(
        "from scratchformer import checks\nimport torch",
        "def padding_mask(lengths, max_len):\n    x = lengths[:, None]\n    return x.foo",
        "checks.padding_mask(padding_mask)",
    )
    (error,) = errors(cells[2])
    assert error.ename == "ExerciseWrong"
    assert "your code raised AttributeError (line 3: `return x.foo`)" in error.evalue
    assert "not right yet: the cells below use" in stdout(cells[2])


def test_a_passing_exercise_keeps_the_learners_code():
    cells = run_cells(
        "from scratchformer import checks\nimport torch",
        "def padding_mask(lengths, max_len):\n"
        "    return torch.arange(max_len)[None, :] < lengths[:, None]",
        "checks.padding_mask(padding_mask)\nprint(padding_mask.__module__)",
    )
    assert not errors(cells[2]) and stdout(cells[2]).rstrip().endswith("__main__")


def test_outside_a_notebook_nothing_is_rebound():
    def padding_mask_stub(lengths, max_len):
        raise NotImplementedError
    globals()["padding_mask_stub"] = padding_mask_stub
    with pytest.raises(checks.ExerciseNotAttempted) as info:
        checks.padding_mask(padding_mask_stub)
    assert globals()["padding_mask_stub"] is padding_mask_stub
    assert info.value.exercise == "2.1"


def test_call_turns_every_exception_into_wrong_with_the_line():
    def learner(x):
        y = x + 1
        return y["key"]  # an IndexError from torch
    with pytest.raises(checks.ExerciseWrong, match=r"your code raised IndexError \(line \d+: "
                                                   r"`return y\[\"key\"\]`\)"):
        _call("demo", learner, torch.zeros(2))
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        _call("demo", lambda: (_ for _ in ()).throw(NotImplementedError()))


def test_every_checker_is_registered_with_its_exercise_number():
    assert checks.REGISTRY["padding_mask"] == ("2.1", "scratchformer.attention")
    for name in checks.REGISTRY:
        assert getattr(checks, name).exercise_number == checks.REGISTRY[name][0]


def test_mask_variants_cover_every_broadcast_shape_and_keep_a_key_per_row():
    g = torch.Generator().manual_seed(0)
    shapes = {k: tuple(v.shape) for k, v in _probes.mask_variants(g, (2, 3), 4, 5).items()}
    assert sorted(shapes.values()) == sorted([(4, 5), (2, 1, 1, 5), (2, 1, 4, 5), (2, 3, 4, 5)])
    for mask in _probes.mask_variants(g, (2,), 4, 5).values():
        assert mask.any(-1).all()


def test_equivalent_types_are_accepted_and_wrong_ones_named():
    assert _probes.as_int("f", "the count", np.int64(7)) == 7
    assert _probes.as_int("f", "the count", torch.tensor(7)) == 7
    with pytest.raises(checks.ExerciseWrong, match="use // not /"):
        _probes.as_int("f", "the count", 7.0)
    with pytest.raises(checks.ExerciseWrong, match="should be an int"):
        _probes.as_int("f", "the count", True)
    assert _probes.as_pair("f", "(out, weights)", [1, 2]) == (1, 2)


def test_unchanged_and_gradient_probes_bite():
    x = torch.randn(3)
    before = _probes.snapshot(x)
    x -= 1
    with pytest.raises(checks.ExerciseWrong, match="changed its input `x` in place"):
        _probes.require_unchanged("f", ["x"], before, [x])
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(checks.ExerciseWrong, match="does not depend on the inputs through autograd"):
        _probes.require_gradients("f", (leaf * 2).detach(), {"x": leaf})
    _probes.require_gradients("f", leaf * 2, {"x": leaf})


def test_dropout_probe_tells_eval_leaks_and_missing_dropout_apart():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.linear, self.mode = torch.nn.Linear(4, 4), mode

        def forward(self, x):
            if self.mode == "missing":
                return self.linear(x)
            return self.linear(torch.nn.functional.dropout(x, 0.3, self.training or self.mode == "always"))

    reference, x = Net("ok"), torch.randn(8, 4)
    run = lambda m: m(x)  # noqa: E731
    for mode, message in [("always", "dropout applied in eval"), ("missing", "are identical")]:
        learner = Net(mode)
        learner.load_state_dict(reference.state_dict())
        with pytest.raises(checks.ExerciseWrong, match=message):
            _probes.require_dropout_behaviour("f", learner, reference, run)
    unscaled = Net("unscaled")
    unscaled.forward = lambda x: unscaled.linear(                       # forgets the 1/(1-p)
        torch.nn.functional.dropout(x, 0.3, unscaled.training) * (0.7 if unscaled.training else 1))
    unscaled.load_state_dict(reference.state_dict())
    with pytest.raises(checks.ExerciseWrong, match="average output differs"):
        _probes.require_dropout_behaviour("f", unscaled, reference, run)
    for seed in range(20):                      # a correct module is never rejected
        torch.manual_seed(seed)
        good = Net("ok")
        good.load_state_dict(reference.state_dict())
        _probes.require_dropout_behaviour("f", good, reference, run)


def test_distinct_ints_are_distinct():
    g = torch.Generator().manual_seed(3)
    values = _probes.distinct_ints(g, 5, 1, 8)
    assert len(set(values)) == 5 and all(1 <= v < 8 for v in values)
    with pytest.raises(ValueError):
        _probes.distinct_ints(g, 5, 1, 4)


def test_reference_padding_mask_passes():
    checks.padding_mask(padding_mask)


def test_a_check_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    from scratchformer.encoder import FeedForward
    from scratchformer.multihead import MultiHeadAttention

    checks.feed_forward(FeedForward)             # these build modules on the global generator
    checks.multi_head_attention(MultiHeadAttention)
    torch.testing.assert_close(torch.rand(3), expected)


def test_agreeing_bug_needs_every_probe_and_a_unique_match():
    import torch

    from scratchformer.checks._probes import agreeing_bug

    a, b = torch.zeros(2), torch.ones(2)
    assert agreeing_bug([(a, {"bug": a, "other": b}), (b, {"bug": b, "other": a})]) == "bug"
    # one probe disagrees: no hint
    assert agreeing_bug([(a, {"bug": a}), (b, {"bug": a})]) is None
    # two hints agree everywhere: ambiguous, no hint
    assert agreeing_bug([(1.0, {"x": 1.0, "y": 1.0})]) is None
    assert agreeing_bug([]) is None
