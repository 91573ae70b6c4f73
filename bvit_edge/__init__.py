"""bvit-edge: binarized Vision Transformers from few images to a measured binary on an edge CPU."""

__version__ = "0.1.0"
