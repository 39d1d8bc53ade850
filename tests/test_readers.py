"""Reading new radiographs: PNG/JPEG exactly as `prepare` stores them; DICOM to the same pixels."""

import io
import os

import numpy as np
from PIL import Image
import pydicom
from pydicom import encaps
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
import pytest

from jaxcxr.data import datasets
from jaxcxr.data import readers

SIZE = 64


def _radiograph(h=200, w=160, seed=0):
  """A smooth grey test image spanning exactly 0..255 (bright mediastinum, dark lungs, a small nodule)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
  body = 0.35 + 0.4 * np.exp(-((x - 0.5) / 0.12) ** 2) + 0.2 * y
  lungs = np.exp(-(((x - 0.28) / 0.14) ** 2 + ((y - 0.45) / 0.3) ** 2)) + \
      np.exp(-(((x - 0.72) / 0.14) ** 2 + ((y - 0.45) / 0.3) ** 2))
  nodule = 0.5 * np.exp(-(((x - 0.3) / 0.03) ** 2 + ((y - 0.3) / 0.03) ** 2))
  a = body - 0.45 * lungs + nodule + 0.02 * rng.standard_normal((h, w))
  a = (a - a.min()) / (a.max() - a.min())
  return np.round(a * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def grey():
  return _radiograph()


@pytest.fixture(scope="module")
def png(tmp_path_factory, grey):
  path = str(tmp_path_factory.mktemp("png") / "image.png")
  Image.fromarray(grey).save(path)
  return path


def _dataset(pixels, *, photometric="MONOCHROME2", bits=16, signed=False, ts=uid.ExplicitVRLittleEndian, **extra):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = ts
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "DX"
  ds.Rows, ds.Columns = pixels.shape[:2]
  ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[-1]
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 16 if bits > 8 else 8
  ds.BitsStored = bits
  ds.HighBit = bits - 1
  ds.PixelRepresentation = int(signed)
  for k, v in extra.items():
    setattr(ds, k, v)
  if ts == uid.ExplicitVRLittleEndian:
    ds.PixelData = pixels.astype(np.int16 if signed else (np.uint16 if bits > 8 else np.uint8)).tobytes()
  return ds


def _encapsulated(ds, frame):
  ds.PixelData = encaps.encapsulate([frame])
  ds["PixelData"].VR = "OB"
  ds["PixelData"].is_undefined_length = True
  return ds


def _save(ds, path):
  ds.save_as(path, enforce_file_format=True)
  return path


# The 16-bit encoding of the PNG's value v: stored s = 16 v + 8 (12 bits), modality 0.5 s - 1024 = 8 v - 1020.
SLOPE, INTERCEPT = 0.5, -1024.0


def _stored16(grey):
  return grey.astype(np.int64) * 16 + 8


def test_png_and_jpeg_read_exactly_as_prepare(png, tmp_path, grey):
  jpg = str(tmp_path / "image.jpg")
  Image.fromarray(grey).save(jpg, quality=90)
  for path in (png, jpg):
    read = readers.read_image(path, SIZE)
    expected, err = datasets.decode(path, SIZE)
    assert err is None and read.error is None
    np.testing.assert_array_equal(read.image, expected)
    assert read.image.shape == (SIZE, SIZE) and read.image.dtype == np.uint8


def test_resize_grey_is_prepares_resize(png, grey):
  expected, _ = datasets.decode(png, SIZE)
  np.testing.assert_array_equal(datasets.resize_grey(grey, SIZE), expected)


@pytest.mark.parametrize("window", [False, True])
def test_monochrome2_16bit_rescaled_gives_the_pngs_pixels(tmp_path, png, grey, window):
  # Without a window: min-max over the image maps 8v - 1020 back to v exactly (the PNG spans 0..255).
  # With a LINEAR_EXACT window of centre 0, width 2040: (8v - 1020) / 2040 + 0.5 = v / 255 exactly.
  extra = dict(WindowCenter=0, WindowWidth=2040, VOILUTFunction="LINEAR_EXACT") if window else {}
  ds = _dataset(_stored16(grey), bits=12, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, **extra)
  path = _save(ds, str(tmp_path / "mono2.dcm"))
  assert np.array_equal(readers.read_dicom(path), grey)
  read = readers.read_image(path, SIZE)
  expected, _ = datasets.decode(png, SIZE)
  assert read.error is None
  np.testing.assert_array_equal(read.image, expected)


@pytest.mark.parametrize("window", [False, True])
def test_monochrome1_inverted_copy_gives_the_pngs_pixels(tmp_path, png, grey, window):
  # Stored 4095 - s: modality 1019.5 - 8v; a LINEAR_EXACT window of centre -0.5 maps it to 1 - v / 255,
  # which MONOCHROME1 inverts back to v / 255.
  extra = dict(WindowCenter=-0.5, WindowWidth=2040, VOILUTFunction="LINEAR_EXACT") if window else {}
  ds = _dataset(4095 - _stored16(grey), photometric="MONOCHROME1", bits=12, RescaleSlope=SLOPE,
                RescaleIntercept=INTERCEPT, **extra)
  path = _save(ds, str(tmp_path / "mono1.dcm"))
  assert np.array_equal(readers.read_dicom(path), grey)
  expected, _ = datasets.decode(png, SIZE)
  np.testing.assert_array_equal(readers.read_image(path, SIZE).image, expected)


def test_default_linear_window_is_within_one_level(tmp_path, grey):
  # DICOM's LINEAR window divides by width - 1: with width 2041 and centre 0.5 it is exact up to rounding.
  ds = _dataset(_stored16(grey), bits=12, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, WindowCenter=0.5,
                WindowWidth=2041)
  out = readers.read_dicom(_save(ds, str(tmp_path / "linear.dcm")))
  assert np.abs(out.astype(int) - grey).max() <= 1


def test_window_clips_outside_values(tmp_path, grey):
  # A narrow window around mid-grey saturates: values below it black, above it white.
  ds = _dataset(_stored16(grey), bits=12, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, WindowCenter=0,
                WindowWidth=400, VOILUTFunction="LINEAR_EXACT")
  out = readers.read_dicom(_save(ds, str(tmp_path / "narrow.dcm")))
  m = grey.astype(np.float64) * 8 - 1020
  assert (out[m <= -200] == 0).all() and (out[m > 200] == 255).all()
  mid = np.abs(m) < 150
  np.testing.assert_allclose(out[mid], np.round((m[mid] / 400 + 0.5) * 255), atol=1)


def test_voi_lut_sequence_applied(tmp_path, grey):
  # A VOI LUT table that inverts 8-bit input: the output must be 255 - v.
  ds = _dataset(grey, bits=8)
  item = Dataset()
  item.LUTDescriptor = [256, 0, 8]
  item.LUTData = np.arange(255, -1, -1, dtype=np.uint16).tobytes()
  ds.VOILUTSequence = [item]
  out = readers.read_dicom(_save(ds, str(tmp_path / "voilut.dcm")))
  np.testing.assert_array_equal(out, 255 - grey)


def test_8bit_without_luts_is_kept_as_stored(tmp_path):
  a = np.full((20, 30), 100, np.uint8)
  a[5:10, 5:10] = 140
  out = readers.read_dicom(_save(_dataset(a, bits=8), str(tmp_path / "eight.dcm")))
  np.testing.assert_array_equal(out, a)  # Not stretched to 0..255: 8-bit data is already for display.


def test_signed_16bit_min_max(tmp_path, grey):
  stored = grey.astype(np.int64) * 100 - 12000  # -12000 .. 13500, signed.
  ds = _dataset(stored, bits=16, signed=True)
  assert np.array_equal(readers.read_dicom(_save(ds, str(tmp_path / "signed.dcm"))), grey)


def test_jpeg_baseline_dicom_close_to_png(tmp_path, png, grey):
  buf = io.BytesIO()
  Image.fromarray(grey).save(buf, format="JPEG", quality=95)
  ds = _encapsulated(_dataset(grey, bits=8, ts=uid.JPEGBaseline8Bit), buf.getvalue())
  path = _save(ds, str(tmp_path / "baseline.dcm"))
  read = readers.read_image(path, SIZE)
  expected, _ = datasets.decode(png, SIZE)
  assert read.error is None
  diff = np.abs(read.image.astype(int) - expected)
  # Lossy at quality 95: a few levels at full size; resizing averages most of it away.
  assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_jpeg_baseline_dicom_decodes_as_the_same_jpeg_file(tmp_path, grey):
  # The DICOM reader adds no error of its own: the JPEG's bytes as a .jpg through prepare's decoder give
  # the very same pixels.
  buf = io.BytesIO()
  Image.fromarray(grey).save(buf, format="JPEG", quality=80)
  jpg = tmp_path / "same.jpg"
  jpg.write_bytes(buf.getvalue())
  ds = _encapsulated(_dataset(grey, bits=8, ts=uid.JPEGBaseline8Bit), buf.getvalue())
  path = _save(ds, str(tmp_path / "same.dcm"))
  np.testing.assert_array_equal(readers.read_dicom(path), np.asarray(Image.open(jpg)))
  np.testing.assert_array_equal(readers.read_image(path, SIZE).image, datasets.decode(str(jpg), SIZE)[0])


def test_jpeg_lossless_and_rle_dicoms_are_exact(tmp_path, grey):
  import imagecodecs  # pylint: disable=g-import-not-at-top
  stored = _stored16(grey).astype(np.uint16)
  paths = []
  ds = _encapsulated(_dataset(stored, bits=12, ts=uid.JPEGLosslessSV1, RescaleSlope=SLOPE,
                              RescaleIntercept=INTERCEPT), imagecodecs.ljpeg_encode(stored, bitspersample=12))
  paths.append(_save(ds, str(tmp_path / "lossless.dcm")))
  ds = _encapsulated(_dataset(stored, bits=12, ts=uid.JPEGLSLossless, RescaleSlope=SLOPE,
                              RescaleIntercept=INTERCEPT), imagecodecs.jpegls_encode(stored))
  paths.append(_save(ds, str(tmp_path / "jpegls.dcm")))
  ds = _dataset(stored, bits=12, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT)
  ds.compress(uid.RLELossless)
  paths.append(_save(ds, str(tmp_path / "rle.dcm")))
  for path in paths:
    np.testing.assert_array_equal(readers.read_dicom(path), grey, err_msg=path)


def test_decoders_listed():
  decoders = readers.dicom_decoders()
  for name in ("Explicit VR Little Endian", "Implicit VR Little Endian", "JPEG Baseline (Process 1)",
               "RLE Lossless"):
    assert name in decoders, sorted(decoders)
  assert any("Lossless, Non-Hierarchical, First-Order" in n for n in decoders)


def test_refusals_name_file_and_reason(tmp_path, grey):
  rgb = np.stack([grey] * 3, -1)
  ds = _dataset(rgb, photometric="RGB", bits=8)
  ds.PlanarConfiguration = 0
  colour = _save(ds, str(tmp_path / "colour.dcm"))
  ds = _dataset(np.concatenate([grey, grey]), bits=8, NumberOfFrames=2)
  ds.Rows = grey.shape[0]
  multi = _save(ds, str(tmp_path / "multi.dcm"))
  ds = _dataset(grey, bits=8)
  del ds.PixelData
  ds.Modality = "SR"
  no_pixels = _save(ds, str(tmp_path / "report.dcm"))
  text = str(tmp_path / "notes.dcm")
  with open(text, "w") as f:
    f.write("not an image at all\n" * 20)
  cases = {colour: "colour", multi: "multi-frame", no_pixels: "not an image", text: "not a DICOM file",
           str(tmp_path / "absent.png"): "missing"}
  for path, reason in cases.items():
    read = readers.read_image(path, SIZE)
    assert read.image is None and path in read.error and reason in read.error, read.error


def test_truncated_dicom_is_an_error_and_others_still_read(tmp_path, png, grey):
  ds = _dataset(_stored16(grey), bits=12, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT)
  whole = _save(ds, str(tmp_path / "whole.dcm"))
  with open(whole, "rb") as f:
    data = f.read()
  cut = str(tmp_path / "cut.dcm")
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])
  reads = readers.read_images([cut, png, whole], SIZE)
  assert reads[0].image is None and cut in reads[0].error and "DICOM" in reads[0].error
  assert reads[1].error is None and reads[2].error is None
  np.testing.assert_array_equal(reads[1].image, reads[2].image)


def test_find_inputs_walks_folders(tmp_path, grey):
  (tmp_path / "a" / "b").mkdir(parents=True)
  Image.fromarray(grey).save(tmp_path / "a" / "z.png")
  Image.fromarray(grey).save(tmp_path / "a" / "b" / "y.jpg")
  _save(_dataset(grey, bits=8), str(tmp_path / "a" / "b" / "IM0001"))  # No suffix, as PACS exports do.
  (tmp_path / "a" / "readme.txt").write_text("not an image")
  found = readers.find_inputs([str(tmp_path / "a"), str(tmp_path / "named.txt")])
  rel = [os.path.relpath(p, tmp_path) for p in found]
  assert rel == ["a/b/IM0001", "a/b/y.jpg", "a/z.png", "named.txt"]
  with pytest.raises(readers.InputError):
    readers.find_inputs([str(tmp_path / "a" / "b" / "empty")] if (tmp_path / "a" / "b" / "empty").mkdir() is None
                        else [])
  assert readers.read_image(found[0], SIZE).error is None
  assert "missing" in readers.read_image(found[-1], SIZE).error


def test_dicom_pixels_read_by_pydicom_match(tmp_path, grey):
  # The file written is a valid DICOM that pydicom itself reads back to the stored values.
  path = _save(_dataset(_stored16(grey), bits=12), str(tmp_path / "plain.dcm"))
  np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, _stored16(grey))


def test_dicom_without_preamble_or_file_header(tmp_path, grey):
  # Some exports write the bare data set (no 128-byte preamble, no 'DICM', no file meta): read by suffix.
  ds = _dataset(grey, bits=8)
  del ds.file_meta
  path = str(tmp_path / "bare.dcm")
  pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
  with open(path, "rb") as f:
    assert f.read(132)[128:] != b"DICM"
  assert not readers.is_dicom_file(path)
  np.testing.assert_array_equal(readers.read_dicom(path), grey)
