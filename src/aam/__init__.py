"""aam: Attention All Microbes. Transformers on 16S amplicon data, with custom kernels."""

__version__ = "0.1.0"
