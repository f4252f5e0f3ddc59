"""The networks nnU-Net (v2) trains, as rubikops backbones, and the export
of pretrained weights into the file ``nnUNetv2_train -pretrained_weights``
loads.

``build_encoder("nnunet:PlainConvUNet", ...)`` (or ``ResidualEncoderUNet``)
builds the network with ``dynamic_network_architectures``, from an nnU-Net
plans file (``NnUNetArchitecture.from_plans``) or from arguments
(``NnUNetArchitecture.default``, nnU-Net's default planner's choices), and
pretrains its encoder; the state_dict keys are nnU-Net's own
(``encoder.stages.0.0.convs.0.conv.weight``).

``export_nnunet(state, architecture)`` builds the network nnU-Net will
train, copies every tensor the pretraining saved that the network has (an
encoder-only pretext task: the encoder; a dense task that pretrained the
decoder too: the whole network), gives the rest nnU-Net's own
initialisation, and returns ``{"network_weights": state_dict}`` with the
report of which is which.  nnU-Net's ``load_pretrained_weights`` skips the
``.seg_layers.`` keys (the number of classes is the fine-tuning task's), so
the export leaves them out."""
from __future__ import annotations

import copy
import json
import math
import pydoc
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

ARCHITECTURES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")  # plans store these as dotted names
SEG_LAYERS = ".seg_layers."  # what nnU-Net's load_pretrained_weights never transfers
INSTALL_HINT = "pip install --no-deps -r requirements-nnunet.txt"
# nnU-Net's default planner: 32 features in the first stage, doubled per stage, at most 320 in 3-D
BASE_FEATURES, MAX_FEATURES = 32, 320
NORMS = {"instance": ("torch.nn.modules.instancenorm.InstanceNorm3d", {"eps": 1e-5, "affine": True}),
         "batch": ("torch.nn.modules.batchnorm.BatchNorm3d", {"eps": 1e-5, "affine": True})}


def _require_dna():
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        raise ValueError(f"the nnunet: backbones need dynamic_network_architectures: {INSTALL_HINT}") from None


@dataclass
class NnUNetArchitecture:
    """What nnU-Net's plans say about one configuration's network: the class
    (dotted name), its keyword arguments (``conv_op`` etc. as dotted names,
    as in the plans) and the input channels."""
    network_class_name: str
    arch_kwargs: dict
    in_channels: int = 1
    kw_requires_import: tuple = REQUIRES_IMPORT
    source: str = "arguments"

    @property
    def short_name(self) -> str:
        return self.network_class_name.rsplit(".", 1)[-1]

    @property
    def stage_channels(self) -> list:
        f = self.arch_kwargs["features_per_stage"]
        return [int(v) for v in (f if isinstance(f, (list, tuple)) else [f] * self.arch_kwargs["n_stages"])]

    @property
    def total_stride(self) -> tuple:
        """Per axis, the product of the stages' strides: inputs must be a multiple of it."""
        out = [1, 1, 1]
        for s in self.arch_kwargs["strides"]:
            s = [s] * 3 if isinstance(s, int) else s
            out = [a * int(b) for a, b in zip(out, s)]
        return tuple(out)

    def check_input(self, size, what: str) -> None:
        """A ValueError unless inputs of ``size`` voxels (padded to the total stride) leave the
        deepest stage more than one voxel: instance norm cannot normalise a single one."""
        stride = self.total_stride
        size = tuple(int(s) for s in size) * (3 if len(size) == 1 else 1)
        deepest = [-(-n // s) for n, s in zip(size, stride)]
        if math.prod(deepest) < 2:
            need = tuple(2 * s for s in stride)
            raise ValueError(f"{what} {size} is too small for {self.short_name} from {self.source}: its total "
                             f"stride {stride} leaves one voxel at the deepest stage (use at least {need})")

    def to_json(self) -> dict:
        return {"network_class_name": self.network_class_name, "arch_kwargs": self.arch_kwargs,
                "_kw_requires_import": list(self.kw_requires_import), "in_channels": self.in_channels,
                "source": self.source}

    @classmethod
    def from_json(cls, d: dict) -> "NnUNetArchitecture":
        if not isinstance(d, dict) or "network_class_name" not in d or "arch_kwargs" not in d:
            raise ValueError(f"not an nnU-Net architecture description: {str(d)[:80]}")
        return cls(d["network_class_name"], dict(d["arch_kwargs"]), int(d.get("in_channels", 1)),
                   tuple(d.get("_kw_requires_import", REQUIRES_IMPORT)), d.get("source", "encoder.json"))

    @classmethod
    def default(cls, name: str, in_channels: int = 1, width: int = BASE_FEATURES, norm: str = "instance",
                n_stages: int = 5) -> "NnUNetArchitecture":
        """nnU-Net's default 3-D choices (3x3x3 kernels, stride 1 then 2, LeakyReLU, instance norm,
        features doubled per stage up to 320), with ``n_stages`` stages of ``width`` features first."""
        if name not in ARCHITECTURES:
            raise ValueError(f"nnunet:{name}: choose one of {', '.join('nnunet:' + k for k in ARCHITECTURES)}")
        if norm not in NORMS:
            raise ValueError(f"nnunet:{name}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if n_stages < 2 or width < 1 or in_channels < 1:
            raise ValueError(f"nnunet:{name}: need n_stages >= 2, width >= 1, in_channels >= 1")
        norm_op, norm_kwargs = NORMS[norm]
        kw = {"n_stages": n_stages, "features_per_stage": [min(width * 2 ** i, MAX_FEATURES) for i in range(n_stages)],
              "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n_stages,
              "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1), "conv_bias": True,
              "norm_op": norm_op, "norm_op_kwargs": norm_kwargs, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
        if name == "PlainConvUNet":
            kw.update(n_conv_per_stage=[2] * n_stages, n_conv_per_stage_decoder=[2] * (n_stages - 1))
        else:  # nnU-Net ResEnc presets: 1, 3, 4, 6, 6, ... blocks, one conv per decoder stage
            kw.update(n_blocks_per_stage=([1, 3, 4] + [6] * n_stages)[:n_stages],
                      n_conv_per_stage_decoder=[1] * (n_stages - 1))
        return cls(ARCHITECTURES[name], kw, in_channels)

    @classmethod
    def from_plans(cls, plans_path: str, configuration: str = "3d_fullres",
                   in_channels: int = 1) -> "NnUNetArchitecture":
        """The network of ``configuration`` in an nnU-Net plans file
        (``nnUNetPlans.json``), following ``inherits_from``."""
        try:
            with open(plans_path) as f:
                plans = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{plans_path}: not a readable nnU-Net plans file ({type(exc).__name__})") from None
        configs = plans.get("configurations") if isinstance(plans, dict) else None
        if not isinstance(configs, dict) or configuration not in configs:
            have = ", ".join(configs) if isinstance(configs, dict) else "none"
            raise ValueError(f"{plans_path}: no configuration {configuration!r} (it has: {have})")
        merged, seen, name = {}, [], configuration
        while name is not None:  # a child configuration overrides what it inherits
            if name in seen or name not in configs:
                raise ValueError(f"{plans_path}: configuration {configuration!r} inherits from a missing or "
                                 f"circular {name!r}")
            seen.append(name)
            merged = {**configs[name], **merged}
            name = configs[name].get("inherits_from")
        arch = merged.get("architecture")
        if not isinstance(arch, dict) or "network_class_name" not in arch:
            raise ValueError(f"{plans_path}: configuration {configuration!r} has no 'architecture' (plans of "
                             "nnU-Net v2.4 or later describe the network there)")
        return cls(arch["network_class_name"], dict(arch["arch_kwargs"]), in_channels,
                   tuple(arch.get("_kw_requires_import", REQUIRES_IMPORT)), f"{plans_path}:{configuration}")

    def build(self, num_classes: int = 2, deep_supervision: bool = False, initialize: bool = True) -> nn.Module:
        """The network, as nnU-Net's ``get_network_from_plans`` builds it (and initialises it)."""
        _require_dna()
        kwargs = copy.deepcopy(self.arch_kwargs)
        for key in self.kw_requires_import:
            if kwargs.get(key) is not None:
                located = pydoc.locate(kwargs[key])
                if located is None:
                    raise ValueError(f"nnU-Net architecture: {key} {kwargs[key]!r} cannot be imported")
                kwargs[key] = located
        cls = pydoc.locate(self.network_class_name)
        if cls is None:
            raise ValueError(f"nnU-Net architecture: class {self.network_class_name!r} cannot be imported")
        try:
            network = cls(input_channels=self.in_channels, num_classes=num_classes,
                          deep_supervision=deep_supervision, **kwargs)
        except (TypeError, AssertionError) as exc:
            raise ValueError(f"nnU-Net architecture {self.short_name}: {exc}") from None
        if initialize and hasattr(network, "initialize"):
            network.apply(network.initialize)
        return network


class NnUNetEncoder(nn.Module):
    """The encoder of an nnU-Net network as a staged rubikops encoder
    (``stages(x)``, ``stage_channels``, ``out_channels``), holding it as
    ``encoder``, so its state_dict keys are the network's own."""

    def __init__(self, architecture: NnUNetArchitecture, network: Optional[nn.Module] = None):
        super().__init__()
        network = architecture.build() if network is None else network
        self.encoder = network.encoder
        self.architecture = architecture
        self.stage_channels = architecture.stage_channels
        self.out_channels = self.stage_channels[-1]

    def stages(self, x: torch.Tensor) -> list:
        return list(self.encoder(x))  # nnU-Net's encoders return every stage (return_skips=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1]


class NnUNetSegmenter(nn.Module):
    """The whole nnU-Net network, for fine-tuning here or for a dense pretext
    task that pretrains the decoder too: inputs are padded to a multiple of
    the total stride (nnU-Net's patch sizes are by plan) and the output
    cropped back.  ``encoder``: an :class:`NnUNetEncoder` to build the
    network around (its modules become the network's encoder), so a task
    handed the backbone pretrains nnU-Net's own decoder on it; its
    state_dict then holds every nnU-Net key under ``network.``."""

    def __init__(self, architecture: NnUNetArchitecture, num_classes: int, encoder: Optional[NnUNetEncoder] = None):
        super().__init__()
        self.network = architecture.build(num_classes)
        if encoder is not None:
            # the decoder keeps a reference to the encoder it was built for (nnU-Net's state_dict lists
            # it as decoder.encoder.*): both must be the given one
            self.network.encoder = self.network.decoder.encoder = encoder.encoder
        self.encoder = encoder if encoder is not None else NnUNetEncoder(architecture, self.network)
        self.multiple = architecture.total_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pad = [(-n) % m for n, m in zip(size, self.multiple)]
        if any(pad):
            x = nn.functional.pad(x, [p for q in reversed(pad) for p in (0, q)])
        return self.network(x)[..., :size[0], :size[1], :size[2]]


def stages_for(size) -> int:
    """Stages of a network built from arguments for inputs of ``size`` voxels: the deepest sees them
    halved to 2 voxels (instance norm needs more than one), at most nnU-Net's 6 for 3-D."""
    return max(2, min(6, int(math.log2(max(2, min(size))))))


def nnunet_architecture(name: str, in_channels: int = 1, width: int = BASE_FEATURES, norm: str = "instance",
                        plans: Optional[str] = None, configuration: str = "3d_fullres",
                        n_stages: int = 5) -> NnUNetArchitecture:
    """``nnunet:<name>``'s network: from ``plans`` (its network class must be ``name``) or from arguments."""
    if plans:
        arch = NnUNetArchitecture.from_plans(plans, configuration, in_channels)
        if arch.short_name != name:
            raise ValueError(f"nnunet:{name}: {plans} configuration {configuration!r} builds a {arch.short_name}")
        return arch
    return NnUNetArchitecture.default(name, in_channels, width, norm, n_stages)


def build_nnunet_encoder(name: str, in_channels: int = 1, width: int = BASE_FEATURES, norm: str = "instance",
                         plans: Optional[str] = None, configuration: str = "3d_fullres",
                         n_stages: int = 5) -> NnUNetEncoder:
    """``nnunet:<name>``'s encoder (``nnunet_architecture``'s arguments)."""
    return NnUNetEncoder(nnunet_architecture(name, in_channels, width, norm, plans, configuration, n_stages))


# -- export ---------------------------------------------------------------------------------------
@dataclass
class ExportReport:
    prefix: str = ""                                   # what the saved keys carried before nnU-Net's names
    pretrained: list = field(default_factory=list)     # network keys copied from the pretraining
    initialised: list = field(default_factory=list)    # network keys with nnU-Net's own initialisation
    mismatched: list = field(default_factory=list)     # (key, saved shape, network shape)
    unused: list = field(default_factory=list)         # saved keys the network has no place for

    @property
    def encoder_only(self) -> bool:
        return bool(self.initialised) and all(not k.startswith("encoder.") for k in self.initialised)

    def summary(self) -> str:
        lines = [f"nnU-Net export: {len(self.pretrained)} tensors pretrained, {len(self.initialised)} with the "
                 f"network's own initialisation, {len(self.unused)} saved tensors unused"]
        if self.encoder_only:
            lines.append("  encoder-only pretraining: the decoder keeps nnU-Net's initialisation "
                         f"({', '.join(sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in self.initialised}))})")
        elif not self.initialised:
            lines.append("  the whole network (encoder and decoder) is pretrained")
        else:
            lines += [f"  initialised, not pretrained: {k}" for k in self.initialised[:20]]
        return "\n".join(lines)


def _network_keys(network: nn.Module) -> dict:
    """The network's state_dict without the segmentation layers; the decoder's alias of the
    encoder (``decoder.encoder.*``, the same tensors) is filled with the encoder."""
    return {k: v for k, v in network.state_dict().items() if SEG_LAYERS not in k}


def match_prefix(saved: dict, names) -> str:
    """The prefix P such that the most saved keys are P + a network key
    (``encoder.pt``: none; a pretraining model: e.g. ``encoder.``; DDP: ``module.``)."""
    names = set(names)
    counts: dict = {}
    for key in saved:
        for cut in [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]:
            if key[cut:] in names:
                counts[key[:cut]] = counts.get(key[:cut], 0) + 1
    if not counts:
        return ""
    return max(counts, key=lambda p: (counts[p], -len(p)))


def export_nnunet(state: dict, architecture: NnUNetArchitecture, seed: int = 0) -> tuple:
    """({"network_weights": state_dict}, ExportReport): the network of
    ``architecture`` with every matching saved tensor, the rest as nnU-Net
    initialises it (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = architecture.build()
    own = _network_keys(network)
    prefix = match_prefix(state, own)
    report = ExportReport(prefix)
    usable = {}
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name not in own:
            report.unused.append(key)
        elif tuple(value.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    if report.mismatched:
        first = report.mismatched[0]
        raise ValueError(f"the pretrained weights do not fit {architecture.short_name} from {architecture.source}: "
                         f"{len(report.mismatched)} shape mismatches, e.g. {first[0]} saved {first[1]} vs network "
                         f"{first[2]} (export with the plans the pretraining used)")
    if not usable:
        raise ValueError(f"none of the {len(state)} saved tensors is a {architecture.short_name} tensor "
                         f"(saved keys look like {next(iter(state), '<none>')!r})")
    network.load_state_dict(usable, strict=False)
    weights = {k: v.detach().clone() for k, v in _network_keys(network).items()}
    # PlainConvUNet's decoder refers to the encoder: its decoder.encoder.* keys are the same tensors,
    # written to the file (nnU-Net's loader asks for them) but not counted twice in the report
    alias = "decoder.encoder."
    report.pretrained = sorted(k for k in weights if k in usable and not k.startswith(alias))
    report.initialised = sorted(k for k in weights if k not in usable and not k.startswith(alias))
    return {"network_weights": weights}, report
