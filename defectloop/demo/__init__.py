"""``defectloop demo``: the whole loop with a simulated annotator (built on branch ``demo``)."""
