"""rubikops: fused kernels for Rubik's-cube self-supervised pretraining of 3D medical networks."""
__version__ = "0.1.0"

from . import reference, rotations, tasks  # noqa: F401
from .ops import available_backends, extract_cubes  # noqa: F401
from .permutations import load_permutation_set, permutation_set  # noqa: F401
from .puzzle import PuzzleTargets, RubikCube, assemble, make_generator, solve  # noqa: F401
from .tasks import Jigsaw3D, PretextTask, RelativePatchLocation3D, RotationPrediction3D  # noqa: F401
from .volumes import TensorVolumes, VolumeSource  # noqa: F401
from .rotations import (  # noqa: F401
    IDENTITY,
    PAPER_ROTATIONS,
    PROPER_ROTATIONS,
    ROT180_D,
    ROT180_H,
    ROT180_W,
    apply_code,
    make_code,
)
