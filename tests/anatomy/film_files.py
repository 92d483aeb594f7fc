"""Real-looking radiograph files written by the tests: a CR / DX DICOM of a smooth
phantom with collimator strips, a lead marker, MONOCHROME1 or 2, 10-16 bits
stored, and whatever geometry tags (or none) a test asks for."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation

#: the strips of :func:`film`: (top, bottom, left, right at its middle row) widths, px,
#: and the right strip's tilt (deg; it widens toward the bottom)
STRIPS = (12, 9, 15, 7)
RIGHT_TILT_DEG = 1.5
#: the marker's box (row0, col0, row1, col1) in :func:`film`
MARKER_BOX = (30, 118, 44, 128)


def phantom(height: int = 200, width: int = 160) -> np.ndarray:
    """A smooth lower-leg-like image, bone bright, in [0, 1]: soft tissue and two
    long bones (tibia wide, fibula thin) that narrow slowly down the film."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    taper = 1.0 - 0.15 * v / height
    tissue = np.clip(1 - ((u - 0.5 * width) / (0.42 * width)) ** 2, 0, None) ** 0.5
    tibia = np.exp(-(((u - 0.42 * width) / (0.09 * width * taper)) ** 2))
    fibula = np.exp(-(((u - 0.66 * width) / (0.03 * width)) ** 2))
    img = 0.35 * tissue + 0.5 * tibia + 0.3 * fibula
    return (img - img.min()) / (img.max() - img.min())


def strip_widths(height: int, width: int) -> dict[str, int]:
    """The widest point of each strip of :func:`film` (pixels counted from its side)."""
    rows = np.arange(height)
    w = STRIPS[3] + np.tan(np.radians(RIGHT_TILT_DEG)) * (rows - height / 2)
    right = int((width - np.ceil(width - w)).max())
    return {"top": STRIPS[0], "bottom": STRIPS[1], "left": STRIPS[2], "right": right}


def film(image: np.ndarray, bits: int = 12, *, strips: bool = True, marker: bool = True,
         noise: float = 0.002, seed: int = 0) -> np.ndarray:
    """Stored values (MONOCHROME2: high = dense = bright) of ``image`` in [0, 1]:
    the anatomy spans 10 %-85 % of the ``bits`` range with Gaussian noise of
    ``noise`` times the range (an exposed film is never noise-free), collimated
    strips and lead are unexposed (the top of the range)."""
    top_code = 2**bits - 1
    grain = np.random.default_rng(seed).normal(0.0, noise, image.shape)
    stored = np.clip(np.round(top_code * (0.1 + 0.75 * image + grain)), 0, top_code)
    H, W = image.shape
    if strips:
        t, b, left, _ = STRIPS
        stored[:t], stored[H - b:], stored[:, :left] = top_code, top_code, top_code
        v, u = np.mgrid[0:H, 0:W]
        stored[u >= W - STRIPS[3] - np.tan(np.radians(RIGHT_TILT_DEG)) * (v - H / 2)] = top_code
    if marker:  # an "R"-like block of lead: a bar with a notch
        r0, c0, r1, c1 = MARKER_BOX
        stored[r0:r1, c0:c1] = top_code
        stored[r0 + 4 : r0 + 7, c0 + 3 : c1 - 3] = np.round(top_code * 0.6)
    return stored


def write_dicom(path, stored: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 12,
                modality: str = "CR", **tags):
    """A one-frame DICOM of ``stored`` (MONOCHROME2 values: inverted into the file
    for MONOCHROME1) with ``bits`` stored in 16 allocated, and the given tags
    (``PixelData=None`` leaves the pixel data out)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_SOP_CLASS if modality == "CR" else DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    values = (2**bits - 1) - stored if photometric == "MONOCHROME1" else stored
    pixel_data = tags.pop("PixelData", values.astype(np.uint16).tobytes())
    for k, v in tags.items():
        setattr(ds, k, v)
    if pixel_data is not None:
        ds.PixelData = pixel_data
    ds.save_as(str(path), enforce_file_format=True)
    return path
