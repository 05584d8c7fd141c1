"""datasetd: make large training datasets appear on disk, complete and verified."""

__version__ = "0.1.0"
