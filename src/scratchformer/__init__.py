"""scratchformer: the Transformer built piece by piece, one notebook per module.

Modules exported from the book's chapters (``notebooks/NN_slug.ipynb``):

- ``scratchformer.scores`` (01): dot-product and additive scores, attention pooling.
- ``scratchformer.attention`` (02): padding masks, masked softmax, scaled dot-product
  attention, single-head self-attention.
- ``scratchformer.multihead`` (03): split/merge heads, ``MultiHeadAttention`` (explicit and fused
  paths), parity helpers for ``nn.MultiheadAttention``.
- ``scratchformer.positional`` (04): sinusoidal, learned and rotary position encodings.
- ``scratchformer.baselines`` (05): ``ConvEncoder``, ``RNNEncoder``, receptive field and cost.
- ``scratchformer.encoder`` (06): ``LayerNorm``, ``FeedForward``, ``EncoderLayer``, ``Encoder``.
- ``scratchformer.causal`` (07): causal masks, a decoder-only block, a tiny language model.
- ``scratchformer.decoder`` (08): ``DecoderLayer``, ``Decoder``.
- ``scratchformer.model`` (09): ``TransformerConfig``, ``Transformer``.
- ``scratchformer.losses`` (10): smoothed targets, ``label_smoothed_loss`` normalised by tokens.
- ``scratchformer.schedules`` (11): ``noam_rate``, Noam and warmup + cosine ``LambdaLR`` schedules.
- ``scratchformer.training`` (12): ``teacher_forcing``, ``train_step``, ``greedy_decode``,
  ``evaluate``, ``fit`` (the training loop) and ``RECIPES``.
- ``scratchformer.decoding`` (13): the key/value cache, greedy and beam search, sampling.
- ``scratchformer.metrics`` (14): BLEU by hand, chrF and exact match.
- ``scratchformer.tips`` (15): scheduled sampling, a pointer-generator, guided attention.
- ``scratchformer.translation`` (16): Multi30k (verified download), a shared BPE vocabulary,
  checkpoint averaging, BLEU reports, the GPU recipe.

Hand-written infrastructure: ``scratchformer.shapes`` (input validation),
``scratchformer.checks`` (exercise checkers), ``scratchformer.data`` (vocabularies, generated
tasks, batches), ``scratchformer.runs`` (run directories, checkpoints, resume),
``scratchformer.distributed`` (data-parallel training under ``torchrun``) and
``scratchformer.cli`` (the ``scratchformer`` command).
Boolean masks everywhere mean **True = may attend**.
"""

__version__ = "0.1.0"
