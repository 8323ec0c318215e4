"""The IMR-HSNet network, with the authors' parameter names so their checkpoints load
with `strict=True`.

backbone     the ResNet-50 / VGG-16 feature taps
correlation  hypercorrelation of query and support taps
conv4d       center-pivot 4D convolution
learner      HSNet's pyramid encoder
imr          the Iterative Mutual Refinement cell, decoder and residual head
imr_hsnet    the network, step by step
voting       K supports, one vote: the authors' K-shot rule
loss         the training objective (Eq. 7)
checkpoint   the authors' best_model.pt read without running pickled code
"""
from .imr_hsnet import IMRHSNet, ImageFeatures
from .voting import INPUT_SIZE, Segmentation, refine_and_vote, upsample_logits, vote

__all__ = ["INPUT_SIZE", "IMRHSNet", "ImageFeatures", "Segmentation", "refine_and_vote", "upsample_logits", "vote"]
