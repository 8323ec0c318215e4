"""CLIP's part: the label text turned into the coarse masks the network refines.

vocabulary  the prompt template and the words a label competes with in CLIP's softmax
cam         CLIP Grad-CAM, one core for single images and batches
cache       CLIP-CAMs of benchmark images computed once and kept on disk (`CamSource`)
"""
