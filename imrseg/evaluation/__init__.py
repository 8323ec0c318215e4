"""The paper's benchmark evaluation: `run_benchmark(BenchmarkSettings(...))` evaluates
PASCAL-5i or COCO-20i folds (or FSS-1000's test split) as the authors' test script
does, resumably, and writes the report. The data it reads is in `imrseg.data`.

settings   BenchmarkSettings, checked before the data is read or a model loads
benchmark  the evaluation from start to end
progress   BenchmarkProgress: what the evaluation tells its caller as it goes
loop       `evaluate`: one split's episodes in batches through the network into the metrics
metrics    mIoU and FB-IoU as the authors compute them
state      finished episodes of an evaluation, so it resumes
"""
from .progress import BenchmarkProgress
from .settings import BenchmarkSettings


def __getattr__(name):
    # On use, so that a command declares its options without loading the data readers.
    if name == "run_benchmark":
        from .benchmark import run_benchmark

        return run_benchmark
    raise AttributeError(f"module 'imrseg.evaluation' has no attribute {name!r}")


__all__ = ["BenchmarkProgress", "BenchmarkSettings", "run_benchmark"]
