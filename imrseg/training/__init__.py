"""`imrseg train`: the paper's training, as the authors' train.py runs it,
resumable and on one GPU or many: `train(TrainSettings(...))`. Data and episodes
are `imrseg.data`'s and the metrics and loop are the evaluation's
(`imrseg.evaluation`), so validation is exactly `imrseg eval`.

settings     TrainSettings: the paper's recipe per benchmark, checked before any
             model loads
identity     what defines a run (recipe, data, weights by content): what a resumed
             run must share
run          `train`: the whole run, data to run folder, as the command does it
model        the starting network: a checkpoint to fine-tune, or an ImageNet backbone
data         episodes to batches (as the authors' loader), the CLIP-CAM cache filled once
checkpoints  the run folder, through the guard: run.json, last/ (to continue),
             best/ (Hub layout), metrics.jsonl
loop         `fit`: the epochs, validation, saving, DistributedDataParallel
plot         curves.png
"""
from .checkpoints import TrainState
from .loop import Reporter, TrainingInterrupted
from .run import train
from .settings import TrainSettings

__all__ = ["Reporter", "TrainSettings", "TrainState", "TrainingInterrupted", "train"]
