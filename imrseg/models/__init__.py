from .imr_hsnet import IMRHSNet, ImageFeatures, upsample_logits, vote

__all__ = ["IMRHSNet", "ImageFeatures", "upsample_logits", "vote"]
