"""The Transformer, built piece by piece in executable notebooks and exported as a tested package.

Modules:

- `scratchformer.checks`: Exercise checkers: each compares a learner's implementation with the package's reference.
- `scratchformer.shapes`: Input validation shared by the public functions: clear ``ValueError``\s that name the shapes."""

__version__ = "0.1.0"
