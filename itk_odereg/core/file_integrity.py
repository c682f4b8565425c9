"""What ITK's readers do not check: truncated gzip files and non-finite NIfTI voxels.

ITK (and so SimpleITK) reads a ``.nii.gz`` cut short as an image whose missing part is zero,
without an error, and its NIfTI reader turns NaN and infinite voxels into 0. A registration of
such an input runs to the end and returns a wrong map. :func:`check_image_file` reads the file
once more, as a stream (no second copy of the image in memory), and refuses both:

* any ``.gz`` file: the gzip stream must reach its end marker, and its CRC and length must match
  (Python's :mod:`gzip` checks both);
* an uncompressed NIfTI file (``.nii``): it must hold the bytes its header promises;
* NIfTI-1 and NIfTI-2 single files (``.nii``, ``.nii.gz``) of float32 or float64 voxels: every
  voxel must be finite.

Other formats (NRRD, MetaImage) keep NaN through ITK, so :func:`itk_odereg.core.image.load_image`
sees and refuses them in memory. Analyze pairs (``.hdr``/``.img``) are not scanned.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import BinaryIO, Optional

import numpy as np

__all__ = ["check_image_file"]

_CHUNK = 1 << 22
#: NIfTI datatype codes of real floating voxels -> numpy dtype (without byte order).
_FLOAT_TYPES = {16: "f4", 64: "f8"}


class _Header:
    def __init__(self, datatype: int, voxels: int, bytes_per_voxel: int, vox_offset: int, order: str) -> None:
        self.datatype, self.voxels, self.bytes_per_voxel = datatype, voxels, bytes_per_voxel
        self.vox_offset, self.order = vox_offset, order

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.bytes_per_voxel


def _nifti_header(raw: bytes) -> Optional[_Header]:
    """The fields of a NIfTI-1 or NIfTI-2 header that locate the voxels, or None if ``raw`` is neither."""
    for order in ("<", ">"):
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            dims = struct.unpack(order + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
            vox_offset = int(struct.unpack(order + "f", raw[108:112])[0])
            break
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
            dims = struct.unpack(order + "8q", raw[16:80])
            vox_offset = int(struct.unpack(order + "q", raw[168:176])[0])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(n), 1) for n in dims[1:1 + ndim]], dtype=np.int64))
    return _Header(int(datatype), voxels, int(bitpix) // 8, max(vox_offset, 348), order)


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    parts, left = [], count
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _count_non_finite(stream: BinaryIO, header: _Header, start: bytes) -> tuple[int, int, int]:
    """(NaN count, infinite count, voxels read) over the voxel data: ``start``, its first bytes
    already read with the header, then the rest of ``stream``."""
    dtype = np.dtype(header.order + _FLOAT_TYPES[header.datatype])
    n_nan = n_inf = read = 0
    carry = start[:header.data_bytes]
    left = header.data_bytes - len(carry)
    while True:
        chunk = stream.read(min(left, _CHUNK)) if left > 0 else b""
        if not chunk and not carry:
            break
        left -= len(chunk)
        chunk = carry + chunk
        if not chunk:
            break
        usable = len(chunk) - len(chunk) % dtype.itemsize
        values = np.frombuffer(chunk[:usable], dtype=dtype)
        carry = chunk[usable:]
        if values.size == 0:
            break
        bad = ~np.isfinite(values)
        if bad.any():
            nan = int(np.isnan(values).sum())
            n_nan += nan
            n_inf += int(bad.sum()) - nan
        read += values.size
    return n_nan, n_inf, read


def check_image_file(path: str, label: str) -> None:
    """Refuse a truncated compressed file, a short NIfTI file, or a NIfTI file with NaN or infinite voxels.

    Args:
        path: the image file about to be read with SimpleITK.
        label: how the caller names it in messages (``"register(): 'fixed'"``).

    Raises:
        ValueError: naming ``label``, the path and what is wrong.
    """
    lower = path.lower()
    compressed = lower.endswith(".gz")
    nifti = lower.endswith((".nii", ".nii.gz"))
    if not (compressed or nifti):
        return
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            head = _read_exactly(stream, 540)
            header = _nifti_header(head) if nifti else None
            if header is not None and header.datatype in _FLOAT_TYPES:
                _read_exactly(stream, max(0, header.vox_offset - len(head)))
                n_nan, n_inf, read = _count_non_finite(stream, header, head[header.vox_offset:])
                if read < header.voxels:
                    raise EOFError(f"the file holds {read} of the {header.voxels} voxels its header declares")
                if n_nan or n_inf:
                    raise ValueError(
                        f"{label} has {n_nan} NaN and {n_inf} infinite voxel(s) of {header.voxels} in '{path}' "
                        "(ITK's NIfTI reader would read them as 0); replace or mask them before registration "
                        "(e.g. np.nan_to_num)")
            if compressed:
                while stream.read(_CHUNK):
                    pass
            elif header is not None and os.path.getsize(path) < header.vox_offset + header.data_bytes:
                raise EOFError(f"the file has {os.path.getsize(path)} bytes, its header declares "
                               f"{header.vox_offset + header.data_bytes}")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        if isinstance(err, gzip.BadGzipFile) and str(err).startswith("Not a gzipped file"):
            return   # not gzip at all: the image reader names what it is not
        if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
            raise
        raise ValueError(f"{label} is truncated or corrupt: '{path}' ({err}); it would be read with its "
                         "missing part as zeros. Copy or decompress it again") from None
