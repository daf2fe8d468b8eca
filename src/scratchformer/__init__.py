"""scratchformer: the Transformer built piece by piece, one notebook per module.

Modules exported from the book's chapters:

- ``scratchformer.scores`` (chapter 01): dot-product and additive attention scores, attention pooling.
- ``scratchformer.attention`` (chapter 02): padding masks, masked softmax, scaled dot-product
  attention, single-head self-attention.

Hand-written infrastructure: ``scratchformer.shapes`` (input validation),
``scratchformer.checks`` (exercise checkers) and ``scratchformer.cli`` (the ``scratchformer`` command).
"""

__version__ = "0.1.0"
