"""A finished query's files under the output folder: which ones a run writes
(`OutputOptions`) and writing them, the mask last, so that a mask on disk means
its query's other files are complete."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..images import LoadedImage
from ..outputs import naming as outputs
from ..outputs.masks import save_gray_png, save_heatmap_png, save_index_png, save_mask_png
from ..outputs.naming import file_tags
from ..outputs.overlay import save_overlay


@dataclass(frozen=True)
class OutputOptions:
    save_prob: bool = False
    save_cam: bool = False
    save_steps: bool = False

    @property
    def kept(self) -> tuple[str, ...]:
        """What the predictor brings back to the host for these files (`predict_classes`'
        `keep`): only what is written."""
        return tuple(name for name, wanted in (("prob", self.save_prob), ("cam", self.save_cam),
                                               ("steps", self.save_steps)) if wanted)

    def suffixes(self, steps: int, labels: Sequence[str] = ()) -> list[str]:
        """Every file a finished query has, the mask last (it is written last). With
        several `labels` the probability, CAM and step files are one per class."""
        own = [outputs.PROB_SUFFIX] if self.save_prob else []
        own += [outputs.CAM_SUFFIX] if self.save_cam else []
        own += [outputs.step_suffix(t) for t in range(1, steps + 1)] if self.save_steps else []
        return [outputs.OVERLAY_SUFFIX, *(tag + suffix for tag in file_tags(labels) for suffix in own),
                outputs.MASK_SUFFIX]


def write_outputs(stem: Path, loaded: LoadedImage, result, options: OutputOptions, labels: Sequence[str]) -> None:
    """A query's files at `stem` (in a run, a stem whose files the folder's guard has
    claimed), the mask last. One class: the 0/255 mask and the tinted
    overlay; several: the indexed mask, the overlay with a legend, and the
    probability, CAM and step files of each class (`outputs.naming.file_tags`)."""
    for label, tag in zip(labels, file_tags(labels)):
        prediction = result[label]

        def path(suffix: str) -> Path:
            return outputs.output_path(stem, tag + suffix)

        if options.save_steps:
            for t, mask in enumerate(prediction.step_masks, start=1):
                save_mask_png(path(outputs.step_suffix(t)), mask)
        if options.save_cam:
            save_heatmap_png(path(outputs.CAM_SUFFIX), prediction.cam, loaded.size)
        if options.save_prob:
            save_gray_png(path(outputs.PROB_SUFFIX), prediction.prob)
    overlay, mask = outputs.output_path(stem, outputs.OVERLAY_SUFFIX), outputs.output_path(stem, outputs.MASK_SUFFIX)
    if len(labels) > 1:
        save_overlay(overlay, loaded.image, result.index_mask, labels)
        save_index_png(mask, result.index_mask)
    else:
        save_overlay(overlay, loaded.image, result[labels[0]].mask)
        save_mask_png(mask, result[labels[0]].mask)
