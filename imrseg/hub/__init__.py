"""Where weights come from: the registry of the authors' checkpoints, the Hugging
Face Hub and local files.

registry  the checkpoints the paper's authors trained, where each is published and released
download  one file of a Hub repo, from the HF cache or downloaded into it
weights   IMR-HSNet weights from any --weights spec; the refinement-steps rule
drive     the authors' release on Google Drive (gdown): listing, finding an entry's file, downloading
release   the authors' checkpoints converted once into imrseg's cache, with a record (imported on use)
clip      CLIP weights from any --clip-weights spec
publish   authors' best_model.pt -> Hub layout, and publishing it (imported on use)

Every command resolves `--weights` with `resolve_weights` and `--clip-weights` with
`resolve_clip`; nothing that came from the network is unpickled."""
from .clip import (CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE, DEFAULT_CLIP, DEFAULT_CLIP_MODEL, ClipInfo, fetch_clip,
                   locate_clip, resolve_clip)
from .registry import DEFAULT_WEIGHTS, NAMESPACE_ENV, Registry, RegistryEntry, load_registry
from .weights import (CONFIG_FILE, ORIGINS, WEIGHTS_FILE, WeightsInfo, cached_from, fetch_weights, is_cached,
                      locate_weights, resolve_steps, resolve_weights)

__all__ = ["CLIP_CONFIG_FILE", "CLIP_WEIGHTS_FILE", "CONFIG_FILE", "NAMESPACE_ENV", "DEFAULT_CLIP", "DEFAULT_CLIP_MODEL",
           "DEFAULT_WEIGHTS", "ORIGINS", "WEIGHTS_FILE", "ClipInfo",
           "Registry", "RegistryEntry", "WeightsInfo", "cached_from", "fetch_clip", "fetch_weights", "is_cached",
           "load_registry",
           "locate_clip", "locate_weights", "resolve_clip", "resolve_steps", "resolve_weights"]
