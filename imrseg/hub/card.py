"""Model cards (README.md beside a checkpoint): what the weights are, where they
come from, the paper they belong to and its figure for them. Two kinds share one
frame: an authors' checkpoint converted by `imrseg weights import`, and a run's
best/ written by `imrseg train` (marked with CARD_MARK, so `imrseg weights push`
publishes it as it is instead of writing a new one)."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.classes import BENCHMARK_TITLES, PAPER_TABLES
from ..errors import show_path
from .registry import load_registry
from .weights import WEIGHTS_FILE, WeightsInfo

CARD_FILE = "README.md"
# In every card of a trained run (after its metadata): `imrseg weights push` keeps such a card.
CARD_MARK = "<!-- imrseg train -->"


def _card(title: str, intro: str, rows: Sequence[tuple[str, str]], use: Sequence[str], mark: str = "") -> str:
    from huggingface_hub import ModelCardData

    paper = load_registry().paper
    data = ModelCardData(library_name="imrseg", pipeline_tag="image-segmentation",
                         tags=["few-shot-segmentation", "imr-hsnet", "pytorch_model_hub_mixin"])
    return "\n".join([
        "---", data.to_yaml(), "---", *([mark] if mark else []), "",
        f"# {title}", "",
        intro.format(paper=f"*{paper['title']}* ({paper['authors']}, {paper['venue']}, "
                           f"[arXiv:{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']}))",
                     code=paper["code"]), "",
        "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows), "",
        "## Use", "", *use, "",
        "## Citation", "",
        f"Wang et al., {paper['title']}, {paper['venue']}, doi:{paper['doi']}.", ""])


def _paper_figure(backbone: str, benchmark: str | None, fold: int | None, whose: str) -> str:
    entry = load_registry().find(backbone, benchmark, fold)
    if entry is None or entry.paper_miou is None:
        return "not recorded"
    return f"{entry.paper_miou:.1f} ({PAPER_TABLES[benchmark]} of the paper{whose})"


def imported_card(info: WeightsInfo, repo_id: str = "<repo id>") -> str:
    """The card of an authors' checkpoint in the Hub layout: source, paper, the fold's
    classes and the paper's figure."""
    entry = load_registry().find(info.backbone, info.benchmark, info.fold)
    benchmark = BENCHMARK_TITLES.get(info.benchmark, "unknown benchmark")
    fold = f"fold {info.fold}" if info.fold is not None else "unknown fold"
    source = entry.source if entry else "not recorded"
    return _card(
        f"IMR-HSNet, {info.backbone} backbone, {benchmark} {fold}",
        "The authors' weights of IMR-HSNet from {paper}, converted without change from "
        f"their `best_model.pt` ({source}) to safetensors with `imrseg weights import`. "
        "Code of the paper: {code}.",
        [("backbone", info.backbone),
         ("benchmark", benchmark),
         ("test fold", str(info.fold) if info.fold is not None else "unknown"),
         ("refinement steps", str(info.steps)),
         ("the fold's classes", ", ".join(map(show_path, info.class_names)) if info.class_names else "unknown"),
         ("1-shot mIoU (%) in the paper", _paper_figure(info.backbone, info.benchmark, info.fold, "")),
         (f"sha256 of {WEIGHTS_FILE}", f"`{info.sha256}`")],
        ["```bash", "pip install imrseg", f"imrseg weights info {repo_id}", "```", "",
         "```python", "from imrseg.models import IMRHSNet", "",
         f'model = IMRHSNet.from_pretrained("{repo_id}")', "```"])


def trained_card(model, settings, best: dict, origin: str, weights_sha256: str) -> str:
    """The card of a training run's best/: what was trained, from what, with which
    recipe, and the validation figures that made it the best epoch."""
    if model.benchmark in BENCHMARK_TITLES:
        where = f"{BENCHMARK_TITLES[model.benchmark]} fold {model.fold}"
        validation = f"{best['episodes']} episodes of test fold {model.fold} (seed 0), as `imrseg eval`"
    else:
        where = "a folder of one's own classes"
        validation = f"{best['episodes']} episodes of the held-out classes (seed 0)"
    return _card(
        f"IMR-HSNet, {model.backbone_name} backbone, trained on {where}",
        "IMR-HSNet from {paper}, trained with `imrseg train` following the authors' recipe. "
        "Code of the paper: {code}.",
        [("backbone", f"{model.backbone_name} (frozen)"),
         ("refinement steps", str(model.steps)),
         ("validation classes", ", ".join(map(show_path, model.class_names or [])) or "unknown"),
         ("validation mIoU (%)", f"{best['val_miou']:.2f} (epoch {best['epoch']})"),
         ("validation FB-IoU (%)", f"{best['val_fb_iou']:.2f}"),
         ("validated on", validation),
         ("1-shot mIoU (%) in the paper",
          _paper_figure(model.backbone_name, model.benchmark, model.fold, ", the authors' checkpoint")),
         ("started from", origin),
         ("recipe", f"Adam, lr {settings.lr:g}, {settings.batch_size} episodes a batch, "
                    f"{settings.precision}, episode seed {settings.seed}"),
         (f"sha256 of {WEIGHTS_FILE}", f"`{weights_sha256}`")],
        ["```bash", "imrseg segment --weights THIS_FOLDER --label LABEL --support S.jpg --query Q/ --out OUT/",
         "```"],
        mark=CARD_MARK)
