"""`imrseg train`: the paper's training, as the authors' train.py runs it,
resumable and on one GPU or many. Data, episodes and metrics are the
evaluation's (`imrseg.evaluation`), so validation is exactly `imrseg eval`.

settings     the paper's recipe per benchmark; what a resumed run must share
model        the starting network: a checkpoint to fine-tune, or an ImageNet backbone
data         episodes to batches (as the authors' loader), the CLIP-CAM cache filled once
checkpoints  the run folder: last/ (to continue), best/ (Hub layout), metrics.jsonl
card         best/'s model card
loop         `fit`: the epochs, validation, saving, DistributedDataParallel
plot         curves.png
"""
