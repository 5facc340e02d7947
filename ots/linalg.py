"""Small dense linear algebra shared by the Gaussian benchmark and FID (numpy, float64)."""

from __future__ import annotations

import numpy as np

__all__ = ["sqrtm_psd"]


def sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigendecomposition: stable, real; negative round-off
    eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
