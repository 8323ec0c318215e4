"""Facts of the few-shot benchmarks: class names in their index order, the folds,
their titles in the paper and the paper's refinement steps on each. Pure data (no
torch), so the CLI, the model and the evaluation all read them from here."""
from __future__ import annotations

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

BENCHMARK_CLASSES = {"pascal": PASCAL_CLASSES, "coco": COCO_CLASSES}
# The benchmarks with folds (PASCAL-5i, COCO-20i); what `eval` tests on (those and FSS-1000);
# what `train` trains on (those and a folder of one's own classes in FSS-1000's layout).
FOLD_BENCHMARKS = tuple(BENCHMARK_CLASSES)
TEST_BENCHMARKS = (*FOLD_BENCHMARKS, "fss")
TRAIN_BENCHMARKS = (*FOLD_BENCHMARKS, "folder")
BENCHMARK_TITLES = {"pascal": "PASCAL-5i", "coco": "COCO-20i", "fss": "FSS-1000"}
# The backbones of the paper's tables, as they title their rows.
BACKBONE_TITLES = {"resnet50": "ResNet-50", "vgg16": "VGG-16"}
PAPER_TABLES = {"pascal": "Table 1", "coco": "Table 2"}  # where the paper reports each benchmark's 1-shot mIoU
NUM_FOLDS = 4
# The paper refines 2 steps on PASCAL-5i and 3 on COCO-20i; 2 for weights of unknown origin.
PAPER_STEPS = {"pascal": 2, "coco": 3}


def paper_steps(benchmark: str | None) -> int:
    return PAPER_STEPS.get(benchmark, 2)


def fold_classes(benchmark: str, fold: int) -> list[int]:
    """0-based class indices of a test fold, as the authors: PASCAL fold i holds
    classes 5i..5i+4; COCO fold i holds {4k + i : k = 0..19} (interleaved)."""
    if benchmark not in BENCHMARK_CLASSES:
        raise ValueError(f"unknown `benchmark` {benchmark!r}; expected pascal or coco")
    if fold not in range(NUM_FOLDS):
        raise ValueError(f"`fold` must be 0-{NUM_FOLDS - 1}, got {fold}")
    n = len(BENCHMARK_CLASSES[benchmark]) // NUM_FOLDS
    if benchmark == "pascal":
        return [fold * n + i for i in range(n)]
    return [fold + NUM_FOLDS * k for k in range(n)]


def fold_class_names(benchmark: str, fold: int) -> list[str]:
    """Names of a test fold's classes, in the fold's order."""
    ids = fold_classes(benchmark, fold)  # validates both arguments
    return [BENCHMARK_CLASSES[benchmark][i] for i in ids]
