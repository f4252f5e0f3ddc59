"""Networks: 3D encoders (VGG, ResNet-18, U-Net encoder), the Siamese-Octad
pretraining network and its loss, and the transfer networks built on a
pretrained encoder."""
from .encoders import BACKBONES, ResNet3D18, UNetEncoder3D, VGG3D, build_encoder  # noqa: F401
from .heads import SiameseClassifier  # noqa: F401
from .nnunet import NnUNetArchitecture, NnUNetEncoder, NnUNetSegmenter, export_nnunet  # noqa: F401
from .octad import CUBE_LOSSES, POOLS, OctadOutput, SiameseOctad, feature_dim, puzzle_loss, puzzle_metrics  # noqa: F401
from .transfer import DUC3D, Classifier, LoadReport, RestorationUNet, UNet3D, load_decoder, load_encoder, pixel_shuffle_3d  # noqa: F401
