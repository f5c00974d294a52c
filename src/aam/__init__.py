"""aam: Attention All Microbes. Transformers on 16S amplicon data, with custom kernels."""

from aam import native as _native

__version__ = "0.1.0"

_native.install_kernels_finder()  # `aam.kernels` from <repo>/kernels in a source checkout
