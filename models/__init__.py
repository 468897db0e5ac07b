"""Architectures, training, inference, selection strategies, evaluation and Grad-CAM.

Kept nearly empty on purpose: importing ``models.selection`` must not import torch.
"""
