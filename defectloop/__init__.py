"""defectloop: an active-learning labelling loop for garment defect images."""

__version__ = "0.1.0"
