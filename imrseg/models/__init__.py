from .imr_hsnet import IMRHSNet, ImageFeatures
from .voting import INPUT_SIZE, Segmentation, refine_and_vote, upsample_logits, vote

__all__ = ["INPUT_SIZE", "IMRHSNet", "ImageFeatures", "Segmentation", "refine_and_vote", "upsample_logits", "vote"]
