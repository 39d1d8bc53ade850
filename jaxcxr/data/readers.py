"""Reads new radiographs (PNG, JPEG, DICOM) into the uint8 images a trained model scores.

PNG and JPEG go through `datasets.decode`, the very function `prepare` stores images with (decoding, grey
conversion, resizing), so a file scores as it would in an evaluation. DICOM reaches 8-bit grey here, then
takes the same resize (`datasets.resize_grey`):

  1. pixel data decoded by pydicom (see `dicom_decoders` for which transfer syntax uses what);
  2. the modality LUT: RescaleSlope/RescaleIntercept, or a Modality LUT Sequence (pydicom's
     `apply_modality_lut`);
  3. the VOI transform, first of: a VOI LUT Sequence (pydicom's `apply_voi`, scaled by the table's output
     range); the first WindowCenter/WindowWidth, with VOILUTFunction LINEAR (the default), LINEAR_EXACT or
     SIGMOID as DICOM PS3.3 C.11.2.1.2 defines them; else 8-bit data as stored (0..255) and deeper data
     min-max scaled over the image (ignoring PixelPaddingValue pixels);
  4. MONOCHROME1 inverted, so bone is bright as in MONOCHROME2 and the NIH PNGs;
  5. rounded to uint8.

Colour, multi-frame, non-image (no Pixel Data) and non-DICOM files are refused with a reason. A file that
cannot be read never stops the others: `read_image` returns the image or an error string naming the file.
Nothing is fetched over the network.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from jaxcxr import errors
from jaxcxr.data import datasets

PNG_JPEG_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
SUFFIXES = PNG_JPEG_SUFFIXES + DICOM_SUFFIXES
_DICOM_MAGIC_OFFSET = 128  # A DICOM Part 10 file: a 128-byte preamble, then b"DICM".


class InputError(errors.UserError):
  """No image could be found among the inputs a user named."""


@dataclasses.dataclass(frozen=True)
class Read:
  """One input file: its (size, size) uint8 image, or None and `error` saying why (file named in it)."""
  path: str
  image: Optional[np.ndarray]
  error: Optional[str] = None


# ----------------------------------------------------------------------------------------------------------
# Finding the inputs.
# ----------------------------------------------------------------------------------------------------------


def is_dicom_file(path):
  """True when `path` starts with the DICOM Part 10 preamble and 'DICM' marker."""
  try:
    with open(path, "rb") as f:
      head = f.read(_DICOM_MAGIC_OFFSET + 4)
  except OSError:
    return False
  return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def find_inputs(paths):
  """The image files that `paths` (files or folders) name, in order; folders are walked recursively.

  A named file is always kept (an unreadable one gets its error row later); in folders, files with a
  PNG/JPEG/DICOM suffix and suffix-less files with the DICOM marker (as PACS exports write them) are taken,
  sorted by path. Raises InputError when nothing is found.
  """
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = []
      for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in files:
          full = os.path.join(root, name)
          suffix = os.path.splitext(name)[1].lower()
          if suffix in SUFFIXES or (not suffix and is_dicom_file(full)):
            found.append(full)
      out += sorted(found)
    else:
      out.append(p)
  if not out:
    raise InputError(f"No PNG, JPEG or DICOM files found in {', '.join(paths) or 'the inputs'} "
                     f"(suffixes {', '.join(SUFFIXES)}, or DICOM files without a suffix).")
  return out


# ----------------------------------------------------------------------------------------------------------
# DICOM.
# ----------------------------------------------------------------------------------------------------------


class DicomError(Exception):
  """A DICOM file that cannot become a greyscale radiograph; the message says why."""


def _imagecodecs_decoders():
  """Transfer syntaxes pydicom decodes only with plugins not installed by default, decoded by imagecodecs
  (a dependency already, for PNG preparation) from the encapsulated frame."""
  import imagecodecs  # pylint: disable=g-import-not-at-top
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  out = {uid.JPEGLossless: imagecodecs.jpeg_decode, uid.JPEGLosslessSV1: imagecodecs.jpeg_decode,
         uid.JPEGExtended12Bit: imagecodecs.jpeg_decode}
  if imagecodecs.JPEGLS.available:
    out.update({uid.JPEGLSLossless: imagecodecs.jpegls_decode, uid.JPEGLSNearLossless: imagecodecs.jpegls_decode})
  if getattr(imagecodecs, "HTJ2K", None) is not None and imagecodecs.HTJ2K.available:
    out.update({u: imagecodecs.htj2k_decode for u in (uid.HTJ2K, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL)})
  return out


def dicom_decoders():
  """{transfer syntax name: what decodes it here} for every transfer syntax that can be read.

  With the default install: the uncompressed ones (pydicom), RLE Lossless (pydicom), JPEG Baseline and
  JPEG 2000 (Pillow through pydicom), JPEG Extended, JPEG Lossless (Process 14 and SV1) and JPEG-LS
  (imagecodecs); HTJ2K where imagecodecs was built with it.
  """
  from pydicom import pixels  # pylint: disable=g-import-not-at-top
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  out = {}
  fallback = _imagecodecs_decoders()
  for ts in sorted(set(uid.AllTransferSyntaxes), key=lambda u: u.name):
    try:
      decoder = pixels.get_decoder(ts)
    except NotImplementedError:
      decoder = None
    if decoder is not None and decoder.is_available:
      plugins = decoder.available_plugins or ("pydicom",)
      out[ts.name] = ", ".join("pydicom" if p in ("", "pydicom") else p for p in plugins)
    if ts in fallback:
      out[ts.name] = ("pillow (8-bit), else imagecodecs" if ts.name in out and ts == uid.JPEGExtended12Bit
                      else "imagecodecs")
  return out


def _frame_with_imagecodecs(ds, decode):
  """The first frame of encapsulated pixel data decoded by `decode`, with the sign of signed data restored."""
  from pydicom import encaps  # pylint: disable=g-import-not-at-top
  frame = next(encaps.generate_frames(ds.PixelData, number_of_frames=1))
  a = np.asarray(decode(frame))
  if a.ndim != 2:
    raise DicomError(f"decoded frame has shape {a.shape}, expected a 2-D grey image")
  bits = int(ds.BitsStored)
  a = a.astype(np.int64) & ((1 << bits) - 1)
  if int(ds.get("PixelRepresentation", 0)) == 1:
    a = np.where(a >= 1 << (bits - 1), a - (1 << bits), a)
  return a


def _stored_pixels(ds):
  """The stored pixel values of a single-frame greyscale dataset, decoded as its transfer syntax says."""
  meta = getattr(ds, "file_meta", None)
  ts = None if meta is None else meta.get("TransferSyntaxUID")
  fallback = _imagecodecs_decoders()
  try:
    return np.asarray(ds.pixel_array)
  except Exception as e:  # pylint: disable=broad-except  (pydicom raises many types; fall back or report)
    if ts is None or ts not in fallback:
      if ts is not None and ts.is_compressed and "plugin" in str(e).lower():
        raise DicomError(f"no decoder here for its transfer syntax {ts.name} ({ts}); readable: "
                         f"{', '.join(dicom_decoders())}") from e
      raise
    try:
      return _frame_with_imagecodecs(ds, fallback[ts])
    except Exception:  # pylint: disable=broad-except  (the first error says more)
      raise e from None


def _window(x, center, width, function):
  """The VOI window of DICOM PS3.3 C.11.2.1.2, to [0, 1]."""
  if function == "SIGMOID":
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
  if function == "LINEAR_EXACT":
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)
  if width < 1:
    raise DicomError(f"WindowWidth {width} < 1 is invalid for VOILUTFunction LINEAR")
  if width == 1:  # The standard's formula divides by width - 1: a threshold at the centre.
    return (x > center - 0.5).astype(np.float64)
  return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value):
  """The first of a multi-valued DICOM element (WindowCenter may hold several windows)."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)


def _voi_lut_range(ds):
  """(low, high): the output range of the first VOI LUT table, over all its inputs."""
  from pydicom import pixels  # pylint: disable=g-import-not-at-top
  n, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
  n = n or 65536
  out = pixels.apply_voi(np.arange(first, first + n, dtype=np.int64), ds, index=0)
  return float(np.min(out)), float(np.max(out))


def _minmax(x, mask=None):
  values = x if mask is None or not mask.any() else x[mask]
  lo, hi = float(np.min(values)), float(np.max(values))
  if hi <= lo:
    return np.zeros_like(x, np.float64)
  return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def dicom_to_grey(ds):
  """A pydicom dataset as (H, W) uint8 grey, as the module doc says; DicomError when it is not a
  single-frame greyscale image."""
  from pydicom import pixels  # pylint: disable=g-import-not-at-top
  if "PixelData" not in ds:
    other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
    if other:
      raise DicomError(f"{other[0]} (floating-point pixels) is not supported")
    modality = ds.get("Modality", "")
    raise DicomError(f"not an image: no Pixel Data element (SOP class {ds.get('SOPClassUID', '?')}"
                     f"{', modality ' + modality if modality else ''})")
  photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
  samples = int(ds.get("SamplesPerPixel", 1))
  if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise DicomError(f"colour image (PhotometricInterpretation {photometric or 'missing'}, "
                     f"{samples} samples per pixel); only greyscale radiographs are read")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames != 1:
    raise DicomError(f"multi-frame image ({frames} frames); save the frame to score as a single-frame DICOM")
  stored = _stored_pixels(ds)
  if stored.ndim != 2 or min(stored.shape) == 0:
    raise DicomError(f"pixel array of shape {stored.shape}, expected (rows, columns)")
  padding = ds.get("PixelPaddingValue")
  real = None if padding is None else stored != padding
  x = np.asarray(pixels.apply_modality_lut(stored, ds), np.float64)
  bits = int(ds.get("BitsStored", 8))
  identity_modality = ("ModalityLUTSequence" not in ds and float(ds.get("RescaleSlope", 1) or 1) == 1
                       and float(ds.get("RescaleIntercept", 0) or 0) == 0)
  if "VOILUTSequence" in ds:
    lo, hi = _voi_lut_range(ds)
    integral = np.array_equal(x, np.round(x))  # Table look-ups index by integer input values.
    y = np.asarray(pixels.apply_voi(np.round(x).astype(np.int64) if integral else x, ds, index=0), np.float64)
    y = np.clip((y - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(y)
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    y = _window(x, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
  elif bits <= 8 and int(ds.get("PixelRepresentation", 0)) == 0 and identity_modality:
    y = x / float((1 << bits) - 1)
  else:
    y = _minmax(x, real)
  if photometric == "MONOCHROME1":
    y = 1.0 - y
  if real is not None and not real.all():
    y = np.where(real, y, 0.0)  # Padding (outside the collimated field) shown black.
  return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom(path):
  """(H, W) uint8 grey of a DICOM file; DicomError saying why it cannot be read."""
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom import errors as dicom_errors  # pylint: disable=g-import-not-at-top
  try:
    ds = pydicom.dcmread(path, force=not is_dicom_file(path))
  except dicom_errors.InvalidDicomError as e:
    raise DicomError(f"not a DICOM file ({e})") from e
  except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DicomError(f"unreadable DICOM header (truncated or corrupt): {type(e).__name__}: {e}") from e
  if not is_dicom_file(path) and "SOPClassUID" not in ds and "PixelData" not in ds:
    raise DicomError("not a DICOM file (no DICM marker, no SOP class, no pixel data)")
  if "TransferSyntaxUID" not in ds.file_meta:  # A bare data set without a file header: as it was read.
    from pydicom import uid  # pylint: disable=g-import-not-at-top
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                      uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
  try:
    return dicom_to_grey(ds)
  except DicomError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (pydicom's pixel errors have many types)
    raise DicomError(f"cannot decode its pixel data (truncated or corrupt?): {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------------------------------------
# Any input file.
# ----------------------------------------------------------------------------------------------------------


def _kind(path):
  """'dicom', 'pil' (PNG/JPEG through prepare's decoder) or None when the file is neither."""
  suffix = os.path.splitext(path)[1].lower()
  if is_dicom_file(path) or suffix in DICOM_SUFFIXES:
    return "dicom"
  if suffix in PNG_JPEG_SUFFIXES:
    return "pil"
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError:
    return "pil"  # decode names the problem (missing, unreadable).
  if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
    return "pil"
  return None


def read_image(path, size):
  """Reads one input file as (size, size) uint8 grey, as `prepare` would store it; never raises for a
  bad file: the returned Read carries the error, naming the file and the reason."""
  if not os.path.exists(path):
    return Read(path, None, f"{path}: missing (no such file)")
  if os.path.isdir(path):
    return Read(path, None, f"{path}: is a folder")
  kind = _kind(path)
  if kind is None:
    return Read(path, None, f"{path}: not a PNG, JPEG or DICOM file")
  if kind == "pil":
    image, err = datasets.decode(path, size)
    if err is not None:
      reason, detail = err
      return Read(path, None, f"{path}: {reason} ({detail})")
    return Read(path, np.asarray(image, np.uint8))
  try:
    grey = read_dicom(path)
  except DicomError as e:
    return Read(path, None, f"{path}: DICOM {e}")
  except OSError as e:
    return Read(path, None, f"{path}: unreadable ({type(e).__name__}: {e})")
  return Read(path, datasets.resize_grey(grey, size))


def read_images(paths, size):
  """`read_image` over `paths`, in order."""
  return [read_image(p, size) for p in paths]
