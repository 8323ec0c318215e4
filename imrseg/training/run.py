"""A whole training run as one library call: `train(TrainSettings(...))` does what
`imrseg train` does, less the printing, in an order where everything that can go
wrong without a model does so before one loads:

1. check the settings; open the data and the training and validation splits;
2. join the other ranks (torchrun) on the device; rank 0 takes the run folder
   (`RunFolder.opened`: its lock; a link or another's file in the run's place is
   refused) and removes the temporary files a killed run left;
3. what defines the run (`identity`), the weights hashed, not loaded: a folder
   holding another run is refused;
4. the network: the run saved in the folder, else `init`'s checkpoint or a fresh
   one on an ImageNet backbone;
5. CLIP, with the CLIP-CAMs cached on disk (`clip.cache.CamSource`), and `fit`.
What happens along the way is told to a `Reporter`; Ctrl-C ends it with
`TrainingInterrupted`, RUN/last holding the run, and the same settings continue it."""
from __future__ import annotations

import warnings

from ..clip.cache import CamSource
from ..clip.cam import ClipCAM
from ..clip.vocabulary import folder_vocabulary
from ..data.classes import BENCHMARK_CLASSES, fold_class_names
from ..data.datasets import BenchmarkData
from ..data.folder import open_folder
from ..data.splits import load_split, load_training_split
from ..devices import check_precision, default_batch_size, resolve_device
from ..arguments import type_error
from ..distributed import current_shard, start, stop
from ..durable import file_sha256
from ..errors import InputError, Note, param
from ..hub import resolve_clip
from ..interrupts import StopOnInterrupt
from ..models import IMRHSNet
from ..paths import cache_root
from .checkpoints import RunFolder, TrainState
from .data import EpisodeLoader
from .identity import run_identity, weights_identity
from .loop import Reporter, Validation, fit
from .model import initial_model
from .settings import TrainSettings


def train(settings: TrainSettings, reporter: Reporter | None = None) -> TrainState:
    """Train as `settings` say in `settings.out`, continuing the run saved there; returns
    where the run is (its history and best epoch; on every rank of a distributed run).
    The reporter is opened (`with`) around the training itself. Ctrl-C stops at the
    next step with `TrainingInterrupted`, RUN/last saved."""
    reporter = reporter or Reporter()
    if not isinstance(settings, TrainSettings):
        raise type_error("settings", settings, "a TrainSettings")
    settings.check()
    data, split, val, vocabulary, class_names = _open_data(settings)
    shard = current_shard()
    device = start(shard, resolve_device(settings.device))
    check_precision(settings.precision, device)
    # Rank 0 writes the run folder, and keeps other runs out of it meanwhile.
    with RunFolder(settings.out).opened(shard.is_main) as run:
        recipe = settings.resolved()
        weights = weights_identity(recipe)
        run.begin(run_identity(recipe, split, val, data, weights))
        net, origin = _network(recipe, run, class_names)
        if recipe.batch_size < shard.world:
            raise InputError(f"{param('batch_size')} {recipe.batch_size} is smaller than the {shard.world} processes")
        clip_model, tokenizer, clip_info = resolve_clip(settings.clip_weights, device=device)
        cam = ClipCAM(clip_model, tokenizer, mode="official", device=device)
        cams = CamSource(cam, vocabulary, f"{clip_info.model_name}:{file_sha256(clip_info.path)}", cache_root())
        loader = EpisodeLoader(data, settings.benchmark, cams, settings.workers)
        validation = Validation(val, data, default_batch_size(device))
        with reporter, StopOnInterrupt() as stopper:
            state = fit(recipe, net, split, loader, validation, run, device, shard, reporter,
                        lambda: stopper.requested, origin, weights)
    stop(shard)
    return state


def _open_data(settings: TrainSettings):
    """(data, training split, validation split, CLIP vocabulary, validation class names)."""
    benchmark, fold = settings.benchmark, settings.fold
    if benchmark == "folder":
        data, split, val = open_folder(settings.data_root, list(settings.val_classes) or None, settings.val_share)
        return data, split, val, folder_vocabulary(data.class_names), [data.class_names[c] for c in val.class_ids]
    data = BenchmarkData.open(benchmark, settings.data_root)
    split, val = load_training_split(benchmark, fold, settings.splits), load_split(benchmark, fold, settings.splits)
    if not (split.official and val.official):
        warnings.warn(Note(f"the split lists are not HSNet's official {benchmark} fold {fold} lists, so the "
                           "episodes differ from the authors'"), stacklevel=3)
    return data, split, val, BENCHMARK_CLASSES[benchmark], fold_class_names(benchmark, fold)


def _network(settings: TrainSettings, run: RunFolder, class_names: list[str]) -> tuple[IMRHSNet, str]:
    """(network, where it started from): the run saved in `run` (its state is loaded
    by `fit`), else `init`'s checkpoint or a fresh network."""
    saved = run.saved_backbone()
    if saved is None:
        return initial_model(settings.backbone, settings.benchmark, settings.fold, settings.steps, class_names,
                             settings.init, settings.backbone_weights, settings.seed, settings.hub_namespace)
    if settings.backbone is not None and settings.backbone != saved:
        raise InputError(f"{settings.out}: a {saved} run; {param('backbone')} {settings.backbone} cannot continue it")
    return IMRHSNet(saved, settings.benchmark, settings.fold, settings.steps, class_names), ""
