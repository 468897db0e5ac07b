"""NumPy array type aliases shared by the models modules (numpy only: no torch)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
"""Indices (``np.intp``, what ``argsort`` and ``argmax`` return)."""
