"""Downstream networks built around a (pretrained) encoder, and loading the
encoder weights with an exact report of what was loaded and what was not
(a silent partial load is the classic transfer-learning failure)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .encoders import conv_block


class Classifier(nn.Module):
    """encoder -> global average pool -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.out_channels, num_classes))

    def forward(self, x):
        return self.head(self.encoder(x).mean((2, 3, 4)))


class UNet3D(nn.Module):
    """A 3D U-Net on any staged encoder (``stages(x)`` and ``stage_channels``,
    each stage halving the resolution after the first): transposed-conv
    upsampling, skip concatenation, two 3x3x3 convolutions per level."""

    def __init__(self, encoder: nn.Module, num_classes: int, norm: str = "batch"):
        super().__init__()
        self.encoder = encoder
        ch = list(encoder.stage_channels)
        self.up = nn.ModuleList(nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2) for i in range(len(ch) - 1))
        self.dec = nn.ModuleList(conv_block(2 * ch[i], ch[i], 2, norm) for i in range(len(ch) - 1))
        self.out = nn.Conv3d(ch[0], num_classes, 1)

    def forward(self, x):
        skips = self.encoder.stages(x)
        y = skips[-1]
        for i in reversed(range(len(skips) - 1)):
            y = self.up[i](y)
            s = skips[i]
            if y.shape[2:] != s.shape[2:]:  # odd sizes: pad the upsampled map to the skip's
                pad = []
                for a, b in zip(reversed(s.shape[2:]), reversed(y.shape[2:])):
                    pad += [0, a - b]
                y = nn.functional.pad(y, pad)
            y = self.dec[i](torch.cat([s, y], 1))
        return self.out(y)


class RestorationUNet(UNet3D):
    """The U-Net of segmentation fine-tuning (same module names, so its
    encoder and decoder load into :class:`UNet3D`) with one output per input
    channel, restoring crops: takes (B, C, D, H, W) or a dense task's
    (B, 1, C, D, H, W) and returns (B, C, D, H, W)."""

    def __init__(self, encoder: nn.Module, channels: int = 1, norm: str = "batch"):
        super().__init__(encoder, channels, norm)

    def forward(self, x):
        return super().forward(x[:, 0] if x.dim() == 6 else x)


def pixel_shuffle_3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """(N, C*r^3, D, H, W) -> (N, C, D*r, H*r, W*r)."""
    n, c, d, h, w = x.shape
    c_out = c // r ** 3
    x = x.view(n, c_out, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(n, c_out, d * r, h * r, w * r)


class DUC3D(nn.Module):
    """The paper's light "3D DUC" decoder (dense upsampling convolution): a
    3x3x3 convolution on the encoder's last features predicts num_classes x
    r^3 channels, and a 3D pixel shuffle rearranges them to full resolution,
    so the randomly initialised part is one convolution (plus a refinement)."""

    def __init__(self, encoder: nn.Module, num_classes: int, hidden: int = 64):
        super().__init__()
        self.encoder = encoder
        self.r = 2 ** (len(encoder.stage_channels) - 1)
        c = encoder.stage_channels[-1]
        self.duc = nn.Sequential(nn.Conv3d(c, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv3d(hidden, num_classes * self.r ** 3, 3, padding=1))

    def forward(self, x):
        size = x.shape[2:]
        pad = [(-n) % self.r for n in size]  # the shuffle needs multiples of r
        if any(pad):
            x = nn.functional.pad(x, [p for q in reversed(pad) for p in (0, q)])
        y = pixel_shuffle_3d(self.duc(self.encoder(x)), self.r)
        return y[..., :size[0], :size[1], :size[2]]


@dataclass
class LoadReport:
    loaded: list = field(default_factory=list)       # tensors copied into the model
    missing: list = field(default_factory=list)      # model tensors the file did not have (left as initialised)
    unexpected: list = field(default_factory=list)   # file tensors the model has no place for
    mismatched: list = field(default_factory=list)   # (name, file shape, model shape)
    part: str = "encoder"                            # what was loaded: encoder or decoder

    def summary(self) -> str:
        lines = [f"{self.part} weights: {len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches"]
        for k in self.missing:
            lines.append(f"  missing (kept random init): {k}")
        for k in self.unexpected:
            lines.append(f"  unexpected (ignored): {k}")
        for k, a, b in self.mismatched:
            lines.append(f"  shape mismatch (kept random init): {k} file {a} vs model {b}")
        return "\n".join(lines)


def _load_matching(module: nn.Module, own: dict, state: dict, part: str, strict: bool) -> LoadReport:
    """Copy the tensors of ``state`` whose name and shape match ``own`` (the part of
    ``module.state_dict()`` being loaded) into ``module``; report the rest."""
    rep = LoadReport(part=part)
    usable = {}
    for k, v in state.items():
        if k not in own:
            rep.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            rep.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    rep.missing = [k for k in own if k not in usable and k not in {m[0] for m in rep.mismatched}]
    rep.loaded = list(usable)
    if strict and (rep.missing or rep.unexpected or rep.mismatched):
        raise ValueError(f"load_{part}(strict=True): " + rep.summary())
    module.load_state_dict(usable, strict=False)
    return rep


DECODER_SKIP = ("encoder.", "out.")  # the encoder loads apart; the output layer is the task's (classes differ)


def load_decoder(unet: UNet3D, network_state: dict, strict: bool = False) -> LoadReport:
    """Copy a pretrained U-Net's decoder (every tensor but the encoder's and the
    output layer's, which belongs to the pretext task) into ``unet``; a
    ``module.`` (DDP) prefix is stripped."""
    if network_state and all(k.startswith("module.") for k in network_state):
        network_state = {k[len("module."):]: v for k, v in network_state.items()}
    decoder = {k: v for k, v in network_state.items() if not k.startswith(DECODER_SKIP)}
    own = {k: v for k, v in unet.state_dict().items() if not k.startswith(DECODER_SKIP)}
    return _load_matching(unet, own, decoder, "decoder", strict)


def load_encoder(encoder: nn.Module, state: dict, strict: bool = False) -> LoadReport:
    """Copy a state_dict into ``encoder``; a ``module.`` (DDP) or ``encoder.``
    (whole-network checkpoint) prefix is stripped unless the encoder's own
    names carry it (an nnU-Net encoder's keys start with ``encoder.``).
    ``strict``: raise unless every tensor on both sides matched."""
    own = encoder.state_dict()
    for prefix in ("module.", "encoder."):
        if state and all(k.startswith(prefix) for k in state) and not all(k in own for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state) and not any(k in own for k in state):
        # a SiameseOctad state_dict: take its encoder
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return _load_matching(encoder, own, state, "encoder", strict)
