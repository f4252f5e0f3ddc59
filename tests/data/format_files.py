"""One test volume written by the tests themselves as NIfTI, NRRD,
MetaImage and a DICOM series (pydicom), from a known array and RAS affine."""
from __future__ import annotations

import os

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
SLOPE, INTERCEPT = 0.5, -1024.0        # CT rescale: HU = stored * 0.5 - 1024


def _rounded(v, digits=8):
    """Values as the DICOM writer stores them (decimal strings of at most 16 characters)."""
    return np.array([float(f"{x:.{digits}g}") for x in np.ravel(v)]).reshape(np.shape(v))


def rotation(angles_deg) -> np.ndarray:
    a, b, c = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


class ScanVolume:
    """stored: int16 (X, Y, Z) values; data: the HU array every reader must
    return; affine: its RAS voxel-to-world matrix (oblique, anisotropic,
    slice axis against the DICOM slice normal when ``reversed_slices``)."""

    def __init__(self, seed=0, shape=(7, 6, 5), spacing=(0.75, 0.8, 2.5), angles=(17.0, -11.0, 23.0),
                 origin=(-40.5, 22.25, 61.0), reversed_slices=False):
        rng = np.random.default_rng(seed)
        self.shape = shape
        self.stored = rng.integers(0, 4000, size=shape).astype(np.int16)
        self.data = (self.stored.astype(np.float64) * SLOPE + INTERCEPT).astype(np.float32)
        rot = _rounded(rotation(angles))
        if reversed_slices:
            rot[:, 2] *= -1
        lps = np.eye(4)
        lps[:3, :3] = rot * np.asarray(spacing)
        lps[:3, 3] = origin
        # what the DICOM header can say: rounded cosines and positions; the NIfTI, NRRD and MHA
        # files get the same numbers, so every format describes one grid
        self.row_cosine = _rounded(rot[:, 0])
        self.column_cosine = _rounded(rot[:, 1])
        self.pixel_spacing = (spacing[1], spacing[0])  # DICOM order: between rows, between columns
        self.positions = [_rounded(lps[:3, 3] + k * lps[:3, 2]) for k in range(shape[2])]
        lps[:3, 0] = self.row_cosine * spacing[0]
        lps[:3, 1] = self.column_cosine * spacing[1]
        lps[:3, 2] = (self.positions[-1] - self.positions[0]) / (shape[2] - 1)
        lps[:3, 3] = self.positions[0]
        self.affine = LPS @ lps

    # -- writers -------------------------------------------------------------------------------
    def nifti(self, path) -> str:
        import nibabel as nib
        img = nib.Nifti1Image(self.stored, self.affine)
        img.header.set_slope_inter(SLOPE, INTERCEPT)
        nib.save(img, str(path))
        return str(path)

    def itk(self, path, dtype=np.float32) -> str:
        import SimpleITK as sitk
        img = sitk.GetImageFromArray(self.data.astype(dtype).transpose(2, 1, 0))  # ITK arrays are (z, y, x)
        lps = LPS @ self.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        img.SetSpacing(tuple(spacing))
        img.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
        img.SetOrigin(tuple(lps[:3, 3]))
        sitk.WriteImage(img, str(path))
        return str(path)

    def dicom(self, folder, series_uid=None, order=None, overrides=None) -> list:
        """One file per slice, in shuffled file-name order; ``overrides``: {slice: {keyword: value}}."""
        os.makedirs(folder, exist_ok=True)
        from pydicom.uid import generate_uid
        series_uid = series_uid or generate_uid()
        order = list(order) if order is not None else list(np.random.default_rng(1).permutation(self.shape[2]))
        paths = []
        for n, k in enumerate(order):
            fields = dict(ImagePositionPatient=self.positions[k],
                          ImageOrientationPatient=np.concatenate([self.row_cosine, self.column_cosine]),
                          PixelSpacing=self.pixel_spacing, pixels=self.stored[:, :, k].T, InstanceNumber=n + 1)
            fields.update((overrides or {}).get(k, {}))
            paths.append(write_slice(os.path.join(folder, f"IM{n:04d}"), series_uid, **fields))
        return paths


def write_slice(path, series_uid, pixels, ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
                InstanceNumber=1, ImageType=("ORIGINAL", "PRIMARY", "AXIAL"), slope=SLOPE, intercept=INTERCEPT,
                **extra) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series_uid, "1.2.3.4", "CT"
    ds.ImageType = list(ImageType)
    ds.InstanceNumber = InstanceNumber
    ds.ImagePositionPatient = [f"{v:.8g}" for v in ImagePositionPatient]
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in ImageOrientationPatient]
    ds.PixelSpacing = [f"{v:.8g}" for v in PixelSpacing]
    pixels = np.ascontiguousarray(pixels, dtype="<i2")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)
