"""Pretext tasks for self-supervised pretraining, each cut with one
``extract_cubes`` call: ``rubikops.tasks.get(name)`` or the classes below.

- ``"rubik"``: :class:`RubikCube` (Zhuang et al. 2019; Rubik's Cube+ masks, Zhu et al. 2020);
- ``"jigsaw"``: :class:`Jigsaw3D`; ``"rotation"``: :class:`RotationPrediction3D`;
  ``"relative_location"``: :class:`RelativePatchLocation3D` (Taleb et al. 2020);
- dense, pretraining a U-Net's encoder and decoder: ``"genesis"``: :class:`ModelsGenesis`
  (Zhou et al. 2019); ``"masked"``: :class:`MaskedVolumeModelling` (after MAE and SparK).

The interface is :class:`PretextTask` (rubikops/tasks/base.py)."""
from .base import TASKS, ClassificationTask, Cut, PretextTask, Targets, get, make_generator, normalize_cubes, register  # noqa: F401
from .rubik import ROTATION_MODES, GridGeometry, PuzzleTargets, RubikCube, assemble, solve  # noqa: F401
from .jigsaw import Jigsaw3D  # noqa: F401
from .rotation import ROTATION_AXES, RotationPrediction3D, RotationTargets  # noqa: F401
from .location import NEIGHBOUR_CELLS, NEIGHBOUR_DIRECTIONS, LocationTargets, RelativePatchLocation3D  # noqa: F401
from .dense import DenseTargets, DenseTask  # noqa: F401
from .genesis import ModelsGenesis  # noqa: F401
from .masked import MaskedVolumeModelling  # noqa: F401
