"""The StyleGAN configs and the architecture options with their defaults, defined once.

Imported by the networks, the training options and the CLI; imports nothing (no torch), so the
CLI can read its defaults from here without loading the networks.
"""

CONFIGS = ("stylegan3-t", "stylegan3-r", "stylegan2")

# The architecture options of ``networks.build_networks`` and their defaults (those of the
# StyleGAN3 training configs).
ARCH_DEFAULTS = {
    "cbase": 32768,
    "cmax": 512,
    "map_depth": None,
    "z_dim": 512,
    "w_dim": 512,
    "mbstd_group_size": 4,
    "num_fp16_res": 4,
    "conv_clamp": 256,
}

# The ones the training options (and ``stylegan3 train``'s flags) expose.
TRAIN_ARCH = ("cbase", "cmax", "map_depth", "z_dim", "w_dim")
