"""jaxcxr: a JAX/Flax trainer for chest X-ray classification under class imbalance."""

import setuptools

setuptools.setup(
    name="jaxcxr",
    version="0.1.0",
    description="JAX/Flax chest X-ray classification for badly imbalanced findings (NIH ChestX-ray14).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["jaxcxr", "jaxcxr.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.20,<0.13",
        "grain>=0.2.12,<0.3",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scikit-learn>=1.5,<2",
        "imbalanced-learn>=0.13,<0.15",
        "pillow>=10,<14",
        "imagecodecs>=2024.1.1",  # libpng for the 8-bit grey PNGs of NIH: 1.1-1.2x faster than PIL.
        "matplotlib>=3.8,<4",
        # DICOM input to `python -m jaxcxr.predict`; its Pillow plugin decodes JPEG Baseline and JPEG 2000,
        # imagecodecs (above) JPEG Lossless and JPEG-LS, all without network access.
        "pydicom>=3,<4",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "safetensors>=0.4,<1",  # ImageNet weight import, read with numpy (no PyTorch).
        # The TFDS ArrayRecord export of prepared data (jaxcxr.prepare); builds and reads with no TensorFlow.
        "tensorflow-datasets>=4.9.7,<5",
        "array-record>=0.5,<1",
        "importlib_resources>=6,<8",  # Needed by TFDS through etils.epath; not always pulled in with it.
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3"],
        # The optional PyTorch peer of `python -m jaxcxr.bench` (torchvision's ResNet side by side).
        "bench": ["torch>=2.4", "torchvision>=0.19"],
    },
)
