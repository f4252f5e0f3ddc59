"""Pretrained weights into MONAI's ``BasicUNet``.

The ``unet`` backbone (:class:`UNetEncoder3D`: per level two 3x3x3
convolutions without bias, each followed by its norm and ReLU, 2x max-pool
between levels) is the contracting path of MONAI's ``BasicUNet`` built with
``features=(w, 2w, 4w, 8w, 16w, w)``, ``act="relu"``, the same norm and
``bias=False`` (``basic_unet_arguments``):

=================================  ===========================================
rubikops (encoder.pt)              monai.networks.nets.BasicUNet
=================================  ===========================================
``stages_.0.{0,3}.weight``         ``conv_0.conv_{0,1}.conv.weight``
``stages_.0.{1,4}.*`` (norm)       ``conv_0.conv_{0,1}.adn.N.*``
``stages_.i.1.{0,3}.weight``       ``down_i.convs.conv_{0,1}.conv.weight``
``stages_.i.1.{1,4}.*`` (norm)     ``down_i.convs.conv_{0,1}.adn.N.*``
``UNet3D`` ``up.i`` (i >= 1)       ``upcat_{i+1}.upsample.deconv``
``UNet3D`` ``dec.i.{0,3}``/norms   ``upcat_{i+1}.convs.conv_{0,1}.conv``/``adn.N``
=================================  ===========================================

BasicUNet has five levels: an encoder of depth 4 (pretrain.py's default)
fills levels 0-3 and ``down_4`` keeps MONAI's initialisation.  Its last
up-sampling does not halve the channels (``upcat_1``), unlike UNet3D's, so a
pretrained UNet3D decoder fills ``upcat_2`` to ``upcat_4``; ``upcat_1`` and
``final_conv`` stay as MONAI initialises them.  The other backbones (VGG,
ResNet, nnunet:) have no BasicUNet counterpart."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

NORMS = {"batch": ("batch", {}), "instance": ("instance", {"affine": True})}
CONV = {"0": "conv_0", "3": "conv_1"}   # index in rubikops' conv_block -> MONAI TwoConv member
NORM = {"1": "conv_0", "4": "conv_1"}


def basic_unet_arguments(width: int, in_channels: int = 1, out_channels: int = 2, norm: str = "batch") -> dict:
    """The BasicUNet whose encoder is a rubikops ``unet`` encoder of ``width`` (``norm``: batch or
    instance; group norm's groups differ per level in rubikops)."""
    if norm not in NORMS:
        raise ValueError(f"BasicUNet mapping: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    w = int(width)
    return dict(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                features=(w, 2 * w, 4 * w, 8 * w, 16 * w, w), act=("relu", {"inplace": True}), norm=NORMS[norm],
                bias=False, dropout=0.0)


def basic_unet_name(key: str):
    """The BasicUNet key of a rubikops ``unet`` encoder key or UNet3D key, or None."""
    m = re.fullmatch(r"(?:encoder\.)?stages_\.(\d+)\.(?:1\.)?(\d+)\.(.+)", key)
    if m:
        level, index, rest = m.groups()
        block = "conv_0" if level == "0" else f"down_{level}.convs"
        if level != "0" and not key.replace("encoder.", "", 1).startswith(f"stages_.{level}.1."):
            return None
        if index in CONV and rest == "weight":
            return f"{block}.{CONV[index]}.conv.weight"
        if index in NORM:
            return f"{block}.{NORM[index]}.adn.N.{rest}"
        return None
    m = re.fullmatch(r"up\.(\d+)\.(weight|bias)", key)
    if m and int(m.group(1)) >= 1:
        return f"upcat_{int(m.group(1)) + 1}.upsample.deconv.{m.group(2)}"
    m = re.fullmatch(r"dec\.(\d+)\.(\d+)\.(.+)", key)
    if m and int(m.group(1)) >= 1:
        level, index, rest = m.groups()
        block = f"upcat_{int(level) + 1}.convs"
        if index in CONV and rest == "weight":
            return f"{block}.{CONV[index]}.conv.weight"
        if index in NORM:
            return f"{block}.{NORM[index]}.adn.N.{rest}"
    return None


@dataclass
class MonaiLoadReport:
    loaded: list = field(default_factory=list)      # BasicUNet keys filled from the pretraining
    kept: list = field(default_factory=list)        # BasicUNet keys left as MONAI initialised them
    unmapped: list = field(default_factory=list)    # saved keys with no BasicUNet counterpart

    def summary(self) -> str:
        blocks = sorted({k.split(".")[0] for k in self.kept})
        return (f"BasicUNet: {len(self.loaded)} tensors pretrained, {len(self.kept)} as MONAI initialises them "
                f"({', '.join(blocks) or 'none'}), {len(self.unmapped)} saved tensors without a counterpart")


def load_into_basic_unet(network: torch.nn.Module, state: dict) -> MonaiLoadReport:
    """Copy a rubikops ``unet`` encoder state_dict (encoder.pt) or a UNet3D state_dict into a
    BasicUNet built with ``basic_unet_arguments``; a shape mismatch is a ValueError naming the key."""
    own = network.state_dict()
    report, usable = MonaiLoadReport(), {}
    for key, value in state.items():
        name = basic_unet_name(key[len("module."):] if key.startswith("module.") else key)
        if name is None or name not in own:
            report.unmapped.append(key)
            continue
        if tuple(own[name].shape) != tuple(value.shape):
            raise ValueError(f"BasicUNet: {key} {tuple(value.shape)} does not fit {name} {tuple(own[name].shape)} "
                             "(build it with basic_unet_arguments(width) of the pretrained encoder)")
        usable[name] = value
    if not usable:
        raise ValueError("BasicUNet: none of the saved tensors maps to it (only the 'unet' backbone and UNet3D do)")
    for block in sorted({k.split(".")[0] for k in usable}):  # a level loads whole or not at all
        missing = [k for k in own if k.split(".")[0] == block and k not in usable]
        if missing:
            raise ValueError(f"BasicUNet: the saved tensors fill {block} only in part ({missing[0]} has no "
                             "counterpart): only the 'unet' backbone's two-convolution levels map")
    network.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.kept = sorted(k for k in own if k not in usable)
    return report
