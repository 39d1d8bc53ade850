"""jaxcxr: a JAX/Flax trainer for chest X-ray classification under class imbalance."""

__version__ = "0.1.0"
