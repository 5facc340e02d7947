"""OTS: unpaired image super-resolution with neural optimal transport maps.

Pure torch/pyarrow library. Orchestration (Ray, MLflow, DVC) lives in `pipelines/`.
"""

from ots.errors import OTSError

__all__ = ["OTSError"]
__version__ = "0.1.0"
