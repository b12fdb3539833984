"""StyleGAN3 (and StyleGAN2) for cell masks: networks, ops, training and generation.

- ``networks``: ``Generator`` (cfg "stylegan3-t", "stylegan3-r" or "stylegan2"),
  ``Discriminator`` (StyleGAN2 residual) and ``build_networks`` (per-config defaults).
- ``networks_stylegan2`` / ``networks_stylegan3``: the architectures.
- ``ops``: bias_act, upfirdn2d, filtered_lrelu, conv2d_resample, each with a pure-PyTorch
  reference and a fast path chosen automatically for CPU tensors (``CELLSYNTH_OPS_IMPL``).

Submodules are imported on demand (this package does not import torch by itself).
"""
