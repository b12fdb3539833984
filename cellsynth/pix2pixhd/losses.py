"""Pix2PixHD losses: the adversarial loss (LSGAN, vanilla, hinge) over a multiscale
discriminator, the discriminator feature-matching loss and the VGG19 perceptual loss.

VGG19 weights cannot be downloaded on every machine: they come from a local file in
torchvision's VGG19 state-dict layout (``--vgg_weights PATH`` or env ``CELLSYNTH_VGG19``), from
torch's hub cache, or by name through torchvision when online; otherwise a clear error says
which file is missing and where to put it (or to pass ``--no_vgg_loss``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cellsynth.errors import CellsynthError

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG19 weights
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision's vgg19 "features" configuration ("M" = 2x2 max pool)
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
_VGG19_CFG += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# features indices after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, and their loss weights
VGG_LAYERS = (1, 6, 11, 20, 29)
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GANLoss(nn.Module):
    """Adversarial loss summed over the scales of a multiscale discriminator.

    ``mode``: ``lsgan`` (squared error to 1/0), ``vanilla`` (BCE with logits) or ``hinge``.
    Call with the discriminator output (list per scale of lists of block outputs; only the last
    block, the score map, is used), whether the target is real, and whether this is the
    discriminator's loss (hinge differs between the two players).
    """

    def __init__(self, mode: str = "lsgan"):
        super().__init__()
        if mode not in ("lsgan", "vanilla", "hinge"):
            raise CellsynthError(f"unknown GAN loss {mode!r}; use lsgan, vanilla or hinge")
        self.mode = mode

    def _one(self, pred: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
        pred = pred.float()
        if self.mode == "lsgan":
            return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))
        if self.mode == "vanilla":
            target = torch.full_like(pred, 1.0 if real else 0.0)
            return F.binary_cross_entropy_with_logits(pred, target)
        if for_discriminator:
            return F.relu(1.0 - pred).mean() if real else F.relu(1.0 + pred).mean()
        return -pred.mean()

    def forward(self, outputs, real: bool, for_discriminator: bool = True) -> torch.Tensor:
        return sum(self._one(scale[-1], real, for_discriminator) for scale in outputs)


def feature_matching_loss(fake_outputs, real_outputs, lambda_feat: float = 10.0) -> torch.Tensor:
    """lambda_feat * mean over scales of the sum over intermediate blocks of the L1 distance
    between the discriminator's features of the fake and (detached) real images."""
    total = 0.0
    for fake_scale, real_scale in zip(fake_outputs, real_outputs):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total * (lambda_feat / len(fake_outputs))


def vgg19_features() -> nn.Sequential:
    """An untrained VGG19 ``features`` stack up to relu5_1, indexed like torchvision's."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers[: VGG_LAYERS[-1] + 1])


def vgg19_state_dict(path: str | os.PathLike) -> dict:
    """Read a torchvision-layout VGG19 state dict (``features.N.weight`` ...) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(
            f"VGG19 weights file {path} not found; put torchvision's {VGG19_FILE} there, or "
            "pass --no_vgg_loss"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CellsynthError(
            f"{path}: cannot read VGG19 weights ({type(exc).__name__}); expected a torchvision "
            f"vgg19 state dict such as {VGG19_FILE}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CellsynthError(f"{path}: not a VGG19 state dict")
    return state


def _find_vgg_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("CELLSYNTH_VGG19")
    if env:
        return Path(env)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    return cached if cached.is_file() else None


def _download_vgg_state() -> dict:
    """torchvision's VGG19 by name (needs network access); raises CellsynthError offline."""
    try:
        return torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", progress=False)
    except Exception as exc:
        raise CellsynthError(
            f"VGG19 weights are missing and could not be downloaded ({type(exc).__name__}); "
            f"download {VGG19_URL} and pass --vgg_weights PATH (or set CELLSYNTH_VGG19, or put "
            f"it at {Path(torch.hub.get_dir()) / 'checkpoints' / VGG19_FILE}), or pass "
            "--no_vgg_loss"
        ) from None


class VGGLoss(nn.Module):
    """Perceptual loss: weighted L1 between VGG19 relu{1..5}_1 features of fake and real.

    Images are N x C x H x W in [-1, 1]; 1-channel images are repeated to 3, 2 channels are
    averaged to 1 first, 4 channels lose the 4th; then ImageNet normalisation.
    """

    def __init__(self, state_dict: dict):
        super().__init__()
        features = vgg19_features()
        wanted = {f"features.{k}": v for k, v in features.state_dict().items()}
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise CellsynthError(
                f"VGG19 weights lack {len(missing)} entries (e.g. {missing[0]}); expected "
                f"torchvision's vgg19 state dict layout ({VGG19_FILE})"
            )
        for k, v in wanted.items():
            if tuple(state_dict[k].shape) != tuple(v.shape):
                raise CellsynthError(
                    f"VGG19 weights: {k} has shape {tuple(state_dict[k].shape)}, expected "
                    f"{tuple(v.shape)}"
                )
        features.load_state_dict({k[len("features.") :]: state_dict[k] for k in wanted})
        features.requires_grad_(False).eval()
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @classmethod
    def load(cls, path: str | None = None, allow_download: bool = True) -> VGGLoss:
        """From ``path``, env ``CELLSYNTH_VGG19``, torch's hub cache, or by name when online."""
        found = _find_vgg_file(path)
        if found is not None:
            return cls(vgg19_state_dict(found))
        if not allow_download:
            raise CellsynthError(
                f"VGG19 weights not found: pass --vgg_weights PATH to torchvision's {VGG19_FILE} "
                "(or set CELLSYNTH_VGG19), or pass --no_vgg_loss"
            )
        return cls(_download_vgg_state())

    def to_vgg_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 2:
            x = x.mean(1, keepdim=True)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = x[:, :3]
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = self.to_vgg_input(x)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_LAYERS:
                out.append(h)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_f, real_f = self.extract(fake), self.extract(real)
        return sum(w * F.l1_loss(f, r.detach()) for w, f, r in zip(VGG_WEIGHTS, fake_f, real_f))
