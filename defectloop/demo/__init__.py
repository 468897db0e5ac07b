"""`defectloop demo`: the whole loop against a simulated annotator and a random control arm."""
