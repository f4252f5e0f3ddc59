"""``rubikops.puzzle``: the Rubik's cube puzzle and its helpers (defined in
:mod:`rubikops.tasks.rubik` and :mod:`rubikops.tasks.base`, beside the other
pretext tasks)."""
from .tasks.base import make_generator, normalize_cubes  # noqa: F401
from .tasks.rubik import ROTATION_MODES, PuzzleTargets, RubikCube, assemble, solve  # noqa: F401
