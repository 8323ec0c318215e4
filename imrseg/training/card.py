"""The model card (README.md) of a run's best/: what was trained, from what, with
which recipe, and the validation figures that made it the best epoch, next to
the paper's figure where the registry records one. `imrseg weights push`
publishes it with the weights."""
from __future__ import annotations

from ..evaluation.classes import BENCHMARK_TITLES, PAPER_TABLES
from ..hub.registry import load_registry
from ..hub.weights import WEIGHTS_FILE

# In every card written here (after its metadata): `imrseg weights push` keeps such a card.
CARD_MARK = "<!-- imrseg train -->"


def run_card(model, settings, best: dict, origin: str, weights_sha256: str) -> str:
    from huggingface_hub import ModelCardData

    registry = load_registry()
    paper = registry.paper
    entry = registry.find(model.backbone_name, model.benchmark, model.fold)
    if model.benchmark in BENCHMARK_TITLES:
        where = f"{BENCHMARK_TITLES[model.benchmark]} fold {model.fold}"
        validation = f"{best['episodes']} episodes of test fold {model.fold} (seed 0), as `imrseg eval`"
    else:
        where = "a folder of one's own classes"
        validation = f"{best['episodes']} episodes of the held-out classes (seed 0)"
    figure = (f"{entry.paper_miou:.1f} ({PAPER_TABLES[model.benchmark]} of the paper, the authors' checkpoint)"
              if entry and entry.paper_miou is not None else "not recorded")
    data = ModelCardData(library_name="imrseg", pipeline_tag="image-segmentation",
                         tags=["few-shot-segmentation", "imr-hsnet", "pytorch_model_hub_mixin"])
    return "\n".join([
        "---", data.to_yaml(), "---", CARD_MARK, "",
        f"# IMR-HSNet, {model.backbone_name} backbone, trained on {where}", "",
        f"IMR-HSNet from *{paper['title']}* ({paper['authors']}, {paper['venue']}, "
        f"[arXiv:{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']})), trained with `imrseg train` "
        f"following the authors' recipe. Code of the paper: {paper['code']}.", "",
        "| | |", "|---|---|",
        f"| backbone | {model.backbone_name} (frozen) |",
        f"| refinement steps | {model.steps} |",
        f"| validation classes | {', '.join(model.class_names or []) or 'unknown'} |",
        f"| validation mIoU (%) | {best['val_miou']:.2f} (epoch {best['epoch']}) |",
        f"| validation FB-IoU (%) | {best['val_fb_iou']:.2f} |",
        f"| validated on | {validation} |",
        f"| 1-shot mIoU (%) in the paper | {figure} |",
        f"| started from | {origin} |",
        f"| recipe | Adam, lr {settings.lr:g}, {settings.batch_size} episodes a batch, "
        f"{settings.precision}, episode seed {settings.seed} |",
        f"| sha256 of {WEIGHTS_FILE} | `{weights_sha256}` |", "",
        "## Use", "",
        "```bash", "imrseg segment --weights THIS_FOLDER --label LABEL --support S.jpg --query Q/ --out OUT/",
        "```", "",
        "## Citation", "",
        f"Wang et al., {paper['title']}, {paper['venue']}, doi:{paper['doi']}.", ""])
