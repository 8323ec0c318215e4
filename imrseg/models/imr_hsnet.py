"""IMR-HSNet: HSNet's hypercorrelation encoder with Iterative Mutual Refinement of
the query and support masks (Wang et al., IJCAI 2022)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.classes import paper_steps
from .backbone import SPECS, build_backbone, extract_taps, stage_slices
from .correlation import StageFeatures, mask_factor, masked_correlation, resize_mask, stage_cosine
from .imr import STATE_SIZE, IterativeMutualRefinement
from .learner import HPNLearner
from .loss import refinement_loss
from .voting import INPUT_SIZE, refine_and_vote, upsample_logits


@dataclass
class ImageFeatures:
    """What the network needs of one batch of images: computed once, reused by
    every pairing and every refinement step."""

    stages: list  # StageFeatures per correlation stage, deepest first
    mid_gates: torch.Tensor  # (B, 1536, 50, 50): the mid feature's share of the IMR gates

    @property
    def batch_size(self) -> int:
        return self.mid_gates.shape[0]

    def index(self, idx) -> "ImageFeatures":
        return ImageFeatures([s.index(idx) for s in self.stages], self.mid_gates[idx])


class IMRHSNet(IterativeMutualRefinement, PyTorchModelHubMixin,
               library_name="imrseg", repo_url="https://github.com/Whileherham/IMR-HSNet",
               paper_url="https://arxiv.org/abs/2303.05646", pipeline_tag="image-segmentation",
               tags=["few-shot-segmentation", "imr-hsnet"]):
    """The `__init__` arguments are the checkpoint's config.json in the Hub layout
    (`save_pretrained` / `from_pretrained` / `push_to_hub`): the backbone, and for
    a trained checkpoint its benchmark, test fold, default refinement steps and
    the names of the fold's classes."""

    def __init__(self, backbone: str = "resnet50", benchmark: str | None = None, fold: int | None = None,
                 steps: int | None = None, class_names: list[str] | None = None):
        super().__init__()
        if backbone not in SPECS:
            raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(SPECS)}")
        self.benchmark, self.fold = benchmark, fold
        self.steps = steps if steps is not None else paper_steps(benchmark)
        self.class_names = list(class_names) if class_names is not None else None
        self.backbone_name = backbone
        self.spec = SPECS[backbone]
        self.backbone = build_backbone(backbone)
        if self.spec.mid_channels != 512:
            self.conv1024_512 = nn.Conv2d(self.spec.mid_channels, 512, kernel_size=1)
        self.hpn_learner = HPNLearner(self.spec.stage_sizes)
        self.eval()

    # ---------------------------------------------------------------- features
    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """Backbone taps of normalised (B,3,400,400) images, ready for correlation."""
        with torch.no_grad():
            taps = extract_taps(self.backbone_name, self.backbone, images)
            slices = stage_slices(self.spec, len(taps))
            stages = [StageFeatures.from_taps(taps[sl]) for sl in slices]
            mid = F.interpolate(sum(taps[slices[1]]), STATE_SIZE, mode="bilinear", align_corners=True)
        if hasattr(self, "conv1024_512"):
            mid = self.conv1024_512(mid)
        return ImageFeatures(stages, self.mid_gates(mid))

    # -------------------------------------------------------------- refinement
    def refine(self, query: ImageFeatures, support: ImageFeatures, query_cam: torch.Tensor,
               support_cam: torch.Tensor, steps: int | None = None, with_support: bool = True,
               recompute: bool = True):
        """Refine both masks for `steps` iterations; returns per-step lists of
        (B,2,100,100) query and support logits. A support batch of 1 is shared by
        every query. With `with_support=False` the last step's support branch,
        which no query output depends on, is skipped (its entry is None).

        `recompute` (under autograd only): each branch's masked correlation pyramid
        and 4D-convolution learner are not kept for the backward pass but computed
        again during it (activation checkpointing), so training holds the 4D
        correlations of one branch at a time instead of every step's: far less
        memory for about one more forward of the learner per step, and the very
        same numbers. It is a way of running, not part of the weights.

        Zero-shot passes the query as its own support (the same `support` object and
        the same `support_cam` tensor): the support branch would then repeat the query
        branch step for step (same image, same CAM, a symmetric correlation), so it is
        not run and the support logits are the query's."""
        steps = self.steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        mirror = support is query and support_cam is query_cam
        bsz = query.batch_size
        support_mid = support.mid_gates.expand(bsz, -1, -1, -1)
        support_cam = support_cam.expand(bsz, -1, -1)
        cosines = [stage_cosine(q, s) for q, s in zip(query.stages, support.stages)]
        # Reused correlation buffers are for eager inference only: under autograd the 4D
        # convolutions save their input for the backward pass, and torch.compile cannot
        # view them as it traces.
        buffers = ([None] * len(cosines) if torch.is_grad_enabled() or torch.compiler.is_compiling()
                   else [torch.empty(c.numel(), dtype=c.dtype, device=c.device) for c in cosines])

        def encoded(q_factors: list, s_factors: list, transpose: bool) -> torch.Tensor:
            # The factors are arguments, not the loop's variables: a recomputation in
            # the backward pass must see this step's.
            return self.hpn_learner([masked_correlation(c, qf, sf, q.size, s.size, transpose, out=buf)
                                     for c, qf, sf, q, s, buf in zip(cosines, q_factors, s_factors, query.stages,
                                                                     support.stages, buffers)])

        def encode_branch(q_factors: list, s_factors: list, transpose: bool) -> torch.Tensor:
            if recompute and torch.is_grad_enabled():
                return checkpoint(encoded, q_factors, s_factors, transpose, use_reentrant=False)
            return encoded(q_factors, s_factors, transpose)

        # The authors mask the feature lists in place, so masks accumulate over the
        # steps and both sides of every correlation are masked; at the first step the
        # query features carry the *support* CAM and the support features the *query*
        # CAM. Their checkpoints were trained with this, so it is kept as is.
        query_masks = [resize_mask(support_cam, s.size) for s in query.stages]
        support_masks = query_masks if mirror else [resize_mask(query_cam, s.size) for s in support.stages]
        query_prior, support_prior = query_cam.unsqueeze(1), support_cam.unsqueeze(1)
        query_state = support_state = self.initial_state(bsz)

        query_logits, support_logits = [], []
        for step in range(steps):
            last = step == steps - 1
            q_factors = [mask_factor(s, m) for s, m in zip(query.stages, query_masks)]
            s_factors = q_factors if mirror else [mask_factor(s, m) for s, m in zip(support.stages, support_masks)]
            q_logit, query_state = self.refine_step(encode_branch(q_factors, s_factors, False), query.mid_gates,
                                                    query_prior, query_state)
            query_logits.append(q_logit)
            if mirror:
                s_logit, support_state = q_logit, query_state
            elif last and not with_support:
                support_logits.append(None)
                break
            else:
                s_logit, support_state = self.refine_step(encode_branch(q_factors, s_factors, True), support_mid,
                                                          support_prior, support_state)
            support_logits.append(s_logit)
            if last:
                break
            q_prob = q_logit.softmax(dim=1)[:, 1]
            query_masks = [m * resize_mask(q_prob, s.size) for m, s in zip(query_masks, query.stages)]
            query_prior = F.interpolate(q_prob.unsqueeze(1), STATE_SIZE, mode="bilinear", align_corners=True)
            if mirror:
                support_masks, support_prior = query_masks, query_prior
            else:
                s_prob = s_logit.softmax(dim=1)[:, 1]
                support_masks = [m * resize_mask(s_prob, s.size) for m, s in zip(support_masks, support.stages)]
                support_prior = F.interpolate(s_prob.unsqueeze(1), STATE_SIZE, mode="bilinear", align_corners=True)
        return query_logits, support_logits

    def forward(self, query_img: torch.Tensor, support_img: torch.Tensor, query_cam: torch.Tensor,
                support_cam: torch.Tensor, steps: int | None = None):
        """(query_logits, support_logits), each (B,2,400,400), for normalised
        (B,3,400,400) images and (B,50,50) CAMs."""
        q_logits, s_logits = self.refine(self.encode(query_img), self.encode(support_img),
                                         query_cam, support_cam, self.steps if steps is None else steps)
        return upsample_logits(q_logits[-1]), upsample_logits(s_logits[-1])

    def segment(self, query: ImageFeatures, query_cams: torch.Tensor, shots, steps: int | None = None,
                sizes=None, every_step: bool = False):
        """Refine-and-vote (see `voting.refine_and_vote`): one Segmentation per query,
        at `sizes` (default 400x400 each)."""
        return refine_and_vote(self, query, query_cams, shots, self.steps if steps is None else steps,
                               sizes or [INPUT_SIZE] * query.batch_size, every_step)

    # ---------------------------------------------------------------- training
    def loss(self, query_img: torch.Tensor, support_img: torch.Tensor, query_cam: torch.Tensor,
             support_cam: torch.Tensor, query_mask: torch.Tensor, support_mask: torch.Tensor,
             steps: int | None = None, recompute: bool = True) -> torch.Tensor:
        """The paper's Eq. 7 for one batch of 1-shot episodes: sum over the `steps`
        (default `self.steps`) refinement steps of the query's and the support's
        mean pixel cross-entropy at the (B,H,W) 0/1 masks' size. The gradient
        reaches every step through the masks each step hands to the next.
        `recompute`: see `refine` (the same loss and gradients either way)."""
        q_logits, s_logits = self.refine(self.encode(query_img), self.encode(support_img), query_cam,
                                         support_cam, self.steps if steps is None else steps, recompute=recompute)
        return refinement_loss(q_logits, s_logits, query_mask, support_mask)

    def train(self, mode: bool = True) -> "IMRHSNet":
        """As the authors' `train_mode()`: the backbone stays in eval mode (its batch
        norms keep their pretrained statistics) whatever `mode` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the (frozen) backbone: what the authors' optimiser updates."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    # ------------------------------------------------------------- checkpoints
    @classmethod
    def from_official(cls, source) -> "IMRHSNet":
        """Load an authors' `best_model.pt` (path) or a state dict, `module.` prefixes allowed."""
        from .checkpoint import load_official

        return load_official(cls, source)

