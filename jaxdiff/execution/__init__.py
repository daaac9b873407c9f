"""How jaxdiff's computations run on the platform at hand: every platform-specific choice in one place.

The models ask this package for what they need and never look at the platform themselves:

- ``ops``: the convolution (Winograd F(2x2, 3x3) for evaluating 3x3 convolutions on a CPU, XLA's
  elsewhere and for gradients) and the group-norm statistics' spread over channels (a matmul on a CPU).
- ``passes``: one rule for how many images a device runs per forward (and backward) pass, used by the
  train step's microbatches and the samplers' passes, and the one layout of a batch split into passes.
- ``winograd``: the F(2x2, 3x3) algorithm itself.
- ``xla_flags``: XLA CPU flags added to ``XLA_FLAGS`` when ``jaxdiff`` is imported.
- ``allocator``: the command-line programs' re-run under mimalloc.

This ``__init__`` imports nothing: ``train.py`` imports ``execution.allocator`` before JAX is loaded.
"""
