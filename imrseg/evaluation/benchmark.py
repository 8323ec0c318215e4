"""A whole benchmark evaluation as one library call: `run_benchmark(BenchmarkSettings(...))`
does what `imrseg eval` does, less the printing, in an order where everything that can
go wrong without a model does so before one loads:

1. check the settings, open the data, read every fold's weights spec (a wrong or
   unpublished one fails here) and the split lists;
2. load CLIP, with its CLIP-CAMs cached on disk (`clip.cache.CamSource`);
3. for each fold, its weights (loaded once when one spec serves every fold) and its
   episodes (`loop.evaluate`), resumable from a state file under the cache;
4. write the report.
What happens along the way is told to a `BenchmarkProgress`. torch is imported on use."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..arguments import type_error
from ..clip.vocabulary import folder_vocabulary
from ..data.classes import BENCHMARK_CLASSES, paper_steps
from ..data.datasets import BenchmarkData
from ..data.folder import open_fss
from ..data.splits import load_split
from ..devices import default_batch_size, float32_mode, resolve_device
from ..distributed import current_shard, start, stop
from ..durable import file_sha256, finite_json
from ..errors import InputError, Note, param
from ..hub import fetch_weights, load_registry, locate_weights, resolve_clip, resolve_steps, resolve_weights
from ..paths import cache_root
from .progress import BenchmarkProgress
from .settings import BenchmarkSettings, report_folder
from .state import RunState

if TYPE_CHECKING:
    from .loop import EvalResult, EvalSettings

EPISODES = 1000  # per fold, as the authors' test script


def run_benchmark(settings: BenchmarkSettings, progress: BenchmarkProgress | None = None) -> list[EvalResult]:
    """Evaluate every fold of `settings`, each resuming from its saved episodes; returns
    the folds' results, what the report says of each in `extra` (on every rank of a
    distributed run, with every rank's counts). Rank 0 writes `settings.report`."""
    from ..clip.cache import CamSource
    from ..clip.cam import ClipCAM
    from .loop import EvalSettings, evaluate

    progress = progress or BenchmarkProgress()
    if not isinstance(settings, BenchmarkSettings):
        raise type_error("settings", settings, "a BenchmarkSettings")
    settings.check()
    benchmark, fss = settings.benchmark, settings.benchmark == "fss"
    if fss:
        data, fss_split = open_fss(settings.data_root, settings.splits)
    else:
        data = BenchmarkData.open(benchmark, settings.data_root)
    # Every fold's weights are found now (downloaded if need be), so a wrong spec or one out of reach
    # fails before anything loads or any split is fetched.
    specs = {f: _weights_spec(settings, f) for f in settings.folds if settings.method == "imr"}
    for spec in set(specs.values()):
        source = locate_weights(spec, settings.hub_namespace)
        if source.kind in ("registry", "hub"):
            fetch_weights(source)
    splits = [fss_split] if fss else [load_split(benchmark, f, settings.splits) for f in settings.folds]
    for split in splits:
        if not split.official:
            warnings.warn(Note(f"{split.path} is not HSNet's official {benchmark} fold {split.fold} list, so the "
                               "episodes differ from the authors'"), stacklevel=2)

    shard = current_shard()
    device = start(shard, resolve_device(settings.device))
    clip_model, tokenizer, clip_info = resolve_clip(settings.clip_weights, device=device)
    clip_id = f"{clip_info.model_name}:{file_sha256(clip_info.path)}"
    cam = ClipCAM(clip_model, tokenizer, mode="official", device=device)
    # The authors' vocabulary: the benchmark's own class list, "a photo of a {c}".
    vocabulary = folder_vocabulary(fss_split.class_names) if fss else BENCHMARK_CLASSES[benchmark]
    cams = CamSource(cam, vocabulary, clip_id, None if settings.no_cache else cache_root())

    model = info = None
    results = []
    for split in splits:
        if settings.method == "imr" and (info is None or settings.weights is None):
            model, info = resolve_weights(specs[split.fold], settings.hub_namespace, device=device)
        trained_for = (info.benchmark, info.fold) if info is not None and info.benchmark is not None else None
        # (FSS-1000's classes are no checkpoint's test classes: nothing to warn about.)
        if trained_for is not None and split.fold is not None and trained_for != (benchmark, split.fold):
            progress.warn(f"{info.spec} was trained for {info.benchmark} fold {info.fold}; "
                          f"its test classes are not {benchmark} fold {split.fold}'s")
        if info is not None:
            steps = resolve_steps(info, settings.steps, benchmark)
        else:
            steps = settings.steps or paper_steps(benchmark)
        episodes = settings.episodes or (len(split.entries) if fss else EPISODES)
        fold_settings = EvalSettings(benchmark, split.fold, settings.shots, episodes, settings.seed, steps,
                                     settings.method, settings.zero_shot, settings.original_size,
                                     settings.batch_size or default_batch_size(device))
        setting = fold_settings.state_setting(split, data.root, info.sha256 if info else None, clip_id, cam.mode)
        # Ranks of a distributed run share no state file: such a run is not resumable.
        state = None if shard.distributed else RunState(cache_root(), setting)
        try:
            # IEEE fp32 on every device (TF32 off), as the state's rows from any device are.
            with progress.fold(fold_settings) as on_episode, float32_mode("fp32"):
                result = evaluate(fold_settings, split, data, model, cams, state, device, on_episode, shard)
        except KeyboardInterrupt:
            if state is not None:
                progress.interrupted(split.fold, len(state.rows))
            raise
        finally:
            if state is not None:
                state.close()
        result.extra.update({
            "weights": {"name": info.name or info.spec, "sha256": info.sha256} if info else None,
            "clip_weights": {"name": clip_info.spec, "id": clip_id},
            "split": {"path": str(split.path), "sha256": split.sha256, "official": split.official},
            "paper_miou": _paper_miou(info.backbone if info else settings.backbone, fold_settings)})
        results.append(result)
        progress.finished(result)
    stop(shard)
    if settings.report is not None and shard.is_main:
        _write_report(Path(settings.report), results)
    return results


def _weights_spec(settings: BenchmarkSettings, fold: int | None) -> str:
    """`weights`, else the registry's checkpoint for the backbone, benchmark and fold."""
    if settings.weights is not None:
        return settings.weights
    entry = load_registry().find(settings.backbone, settings.benchmark, fold)
    if entry is None:
        where = settings.benchmark if fold is None else f"{settings.benchmark} fold {fold}"
        raise InputError(f"no registry checkpoint for {settings.backbone} {where}; pass {param('weights')}")
    return entry.name


def _paper_miou(backbone: str, settings: EvalSettings) -> float | None:
    """The paper's 1-shot figure for this fold and backbone, from the weights
    registry; None for settings it records no figure for (other shots, methods,
    steps or resolution)."""
    if settings.shots != 1 or settings.method != "imr" or settings.zero_shot or settings.original_size:
        return None
    entry = load_registry().find(backbone, settings.benchmark, settings.fold)
    return entry.paper_miou if entry and entry.steps == settings.steps else None


def _write_report(path: Path, results: list[EvalResult]) -> None:
    """One fold's result as it is; several folds' as their means, with each fold's under `per_fold`."""
    if len(results) == 1:
        doc = results[0].to_dict()
    else:
        first = results[0].to_dict()
        papers = [r.extra["paper_miou"] for r in results]
        doc = {key: first[key] for key in ("benchmark", "shots", "steps", "episodes", "seed", "method",
                                           "zero_shot", "original_size", "clip_weights")}
        doc.update({
            "fold": "all", "folds": [r.settings.fold for r in results],
            "weights": [r.extra["weights"] for r in results],
            "miou": sum(r.miou for r in results) / len(results),
            "fb_iou": sum(r.fb_iou for r in results) / len(results),
            "per_class": {name: iou for r in results for name, iou in r.per_class.items()},
            "unevaluated_classes": [name for r in results for name in r.unevaluated],
            "seconds": sum(r.seconds for r in results),
            "paper_miou": sum(papers) / len(papers) if all(p is not None for p in papers) else None,
            "per_fold": [r.to_dict() for r in results]})
    with report_folder(path) as folder:
        folder.write(path.name, (finite_json(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
