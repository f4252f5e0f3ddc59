"""3D encoders for Rubik's-cube pretraining and their transfer.

Each encoder maps (N, C, D, H, W) to a feature map (N, F, d, h, w) and has
``out_channels = F``; ``stages(x)`` returns every stage's output (the skips a
U-Net decoder needs).  Sizes are set by ``width`` (channels of the first
stage, doubled per stage) so the same code runs a laptop smoke test and the
paper's setting."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _norm(c: int, kind: str) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(c)
    if kind == "instance":
        return nn.InstanceNorm3d(c, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, c), c)
    raise ValueError(f"norm must be 'batch', 'instance' or 'group', got {kind!r}")


def conv_block(cin: int, cout: int, convs: int, norm: str) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), _norm(cout, norm),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _Staged(nn.Module):
    stages_: nn.ModuleList

    def stages(self, x: torch.Tensor) -> list:
        out = []
        for s in self.stages_:
            x = s(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages_:
            x = s(x)
        return x


class VGG3D(_Staged):
    """3D VGG (the paper's backbone for classification transfer): stages of
    3x3x3 convolutions + norm + ReLU, each but the first after a 2x max-pool."""

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 4, convs: Sequence[int] = (1, 1, 2, 2),
                 norm: str = "batch"):
        super().__init__()
        convs = list(convs) + [convs[-1]] * max(0, depth - len(convs))
        chans = [width * 2 ** i for i in range(depth)]
        stages, cin = [], in_channels
        for i, c in enumerate(chans):
            block = conv_block(cin, c, convs[i], norm)
            stages.append(nn.Sequential(nn.MaxPool3d(2), block) if i else block)
            cin = c
        self.stages_ = nn.ModuleList(stages)
        self.out_channels = chans[-1]
        self.stage_channels = chans


class BasicBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(cout, norm)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(cout, norm)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), _norm(cout, norm))

    def forward(self, x):
        y = torch.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet3D18(_Staged):
    """3D ResNet-18 (Rubik's Cube+): a stride-1 3x3x3 stem (cubes are small),
    then four stages of two basic blocks, stride 2 from the second on."""

    def __init__(self, in_channels: int = 1, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2),
                 norm: str = "batch"):
        super().__init__()
        chans = [width * 2 ** i for i in range(len(blocks))]
        stem = nn.Sequential(nn.Conv3d(in_channels, width, 3, 1, 1, bias=False), _norm(width, norm),
                             nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, (c, n) in enumerate(zip(chans, blocks)):
            layers = [BasicBlock3D(cin, c, 2 if i else 1, norm)] + [BasicBlock3D(c, c, 1, norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(stem, *layers) if i == 0 else nn.Sequential(*layers))
            cin = c
        self.stages_ = nn.ModuleList(stages)
        self.out_channels = chans[-1]
        self.stage_channels = chans


class UNetEncoder3D(_Staged):
    """The contracting path of a 3D U-Net: two 3x3x3 convolutions per level,
    2x max-pool between levels; ``stages`` gives the skips for the decoder."""

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 4, norm: str = "batch"):
        super().__init__()
        chans = [width * 2 ** i for i in range(depth)]
        stages, cin = [], in_channels
        for i, c in enumerate(chans):
            block = conv_block(cin, c, 2, norm)
            stages.append(nn.Sequential(nn.MaxPool3d(2), block) if i else block)
            cin = c
        self.stages_ = nn.ModuleList(stages)
        self.out_channels = chans[-1]
        self.stage_channels = chans


BACKBONES = {"vgg": VGG3D, "resnet18": ResNet3D18, "unet": UNetEncoder3D}


def build_encoder(name: str, in_channels: int = 1, width: int = 32, norm: str = "batch", **kw) -> nn.Module:
    """An encoder by name: 'vgg', 'resnet18', 'unet', 'monai:<Class>' (a
    MONAI network class whose forward gives a feature map or vector; its
    keyword arguments go in ``kw``) or 'nnunet:PlainConvUNet' /
    'nnunet:ResidualEncoderUNet' (the encoder of the network nnU-Net trains;
    ``kw``: plans, configuration, n_stages; see rubikops/models/nnunet.py)."""
    if name in BACKBONES:
        return BACKBONES[name](in_channels=in_channels, width=width, norm=norm, **kw)
    if name.startswith("nnunet:"):
        from .nnunet import build_nnunet_encoder
        return build_nnunet_encoder(name.split(":", 1)[1], in_channels, width, norm, **kw)
    if name.startswith("monai:"):
        try:
            import monai.networks.nets as nets
        except ImportError:
            raise ValueError(f"backbone {name!r} needs MONAI: pip install monai") from None
        cls = getattr(nets, name.split(":", 1)[1], None)
        if cls is None:
            raise ValueError(f"backbone {name!r}: monai.networks.nets has no {name.split(':', 1)[1]!r}")
        return cls(**kw)
    raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}, 'monai:<NetworkClass>' or "
                     "'nnunet:PlainConvUNet' / 'nnunet:ResidualEncoderUNet'")
