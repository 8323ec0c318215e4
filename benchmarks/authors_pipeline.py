"""An emulation of the authors' per-episode computation on imrseg's modules and weights:
the baseline `bench_segment.py` measures the folder path against, and the second
computation its logits and masks are checked with.

It does the work the authors' code does, and no more:

- `cam`: one image's CLIP Grad-CAM as their pytorch-grad-cam copy computes it for
  their CAM pass (one map per image and class, stored, then read by every episode
  that uses the image): the prompts encoded again on every call and a full backward
  pass through CLIP, parameter gradients included, since nothing there turns
  gradients off. In fp32, as their `clip.load` leaves CLIP on CPU (on CUDA it keeps
  CLIP in fp16, so there this CAM costs more than theirs).
- `forward`: their test-time network forward (under no-grad, with the original-size
  option, so the logits stay at 100x100): both backbones (block by block with
  in-place ReLUs and residual sums, each tap copied), then, with both branches'
  correlation pyramids built before each step and held through it, at every step,
  the last included, both branches, with the features masked in place, the full cosine
  correlation recomputed, HSNet's channel-major 4D convolution (index_select
  pruning, permute + contiguous around each 2D convolution) and each IMR gate's 1x1
  convolution over the whole [mask, encoded, mid feature, state] concatenation.
  Its two halves, `encode_episode` (backbones, masking, first pyramids) and
  `refine_episode` (the steps, one pair of logits each), are also the training
  forward `bench_train.py` scores.
- `predict_mask_nshot`: their K-shot vote at the query's own size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from imrseg.clip.cam import postprocess_cam
from imrseg.models.backbone import VGG_TAPS, stage_slices
from imrseg.models.conv4d import CenterPivotConv4d
from imrseg.models.imr import LOGIT_SIZE, STATE_SIZE
from imrseg.models.learner import HPNLearner

EPS = 1e-5


def cam(clip, tokens, image, target: int, size: int = 50) -> torch.Tensor:
    """One image's coarse mask as the authors compute it. `clip` must have gradients on."""
    import cv2

    captured = {}
    layer = clip.visual.layer4[-1]
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.__setitem__("act", o)),
             layer.register_full_backward_hook(lambda m, gi, go: captured.__setitem__("grad", go[0]))]
    try:
        image_features = clip.encode_image(image)
        text_features = clip.encode_text(tokens)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        clip.zero_grad()
        probs[0, target].backward()
    finally:
        for hook in hooks:
            hook.remove()
    act, grad = captured["act"].detach()[0], captured["grad"].detach()[0]
    raw = (grad.mean(dim=(1, 2))[:, None, None] * act).sum(dim=0).cpu().numpy()
    return torch.from_numpy(cv2.resize(postprocess_cam(raw, image.shape[-1]), (size, size)))[None]


def _taps(net, img):
    """The backbone's taps as their feature extraction takes them: in-place ReLUs and
    residual sums, each tap copied as it is taken."""
    taps = []
    if net.backbone_name == "vgg16":
        x = img
        for idx, module in enumerate(net.backbone.features[: VGG_TAPS[-1] + 1]):
            x = module(x)  # torchvision's ReLUs are in place
            if idx in VGG_TAPS:
                taps.append(x.clone())
        return taps
    backbone = net.backbone
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(img))))
    for stage, layer in enumerate((backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)):
        for block in layer:
            residual = x
            x = block.relu(block.bn1(block.conv1(x)))
            x = block.relu(block.bn2(block.conv2(x)))
            x = block.bn3(block.conv3(x))
            x += block.downsample(residual) if block.downsample is not None else residual
            if stage > 0:
                taps.append(x.clone())
            x = block.relu(x)
    return taps


def _correlation(query_taps, support_taps, slices):
    corrs = []
    for q, s in zip(query_taps, support_taps):
        b, c, ha, wa = q.shape
        hb, wb = s.shape[-2:]
        q = q.view(b, c, -1)
        s = s.view(b, c, -1)
        q = q / (q.norm(dim=1, p=2, keepdim=True) + EPS)
        s = s / (s.norm(dim=1, p=2, keepdim=True) + EPS)
        corrs.append(torch.bmm(q.transpose(1, 2), s).view(b, ha, wa, hb, wb).clamp(min=0))
    return [torch.stack(corrs[sl]).transpose(0, 1).contiguous() for sl in slices]


def _conv4d(conv: CenterPivotConv4d, x):
    sh, sw = conv.support_stride
    b, c, ha, wa, hb, wb = x.shape
    if sw > 1:
        idxh = torch.arange(0, hb, sh, device=x.device)
        idxw = torch.arange(0, wb, sw, device=x.device)
        idx = (idxw.repeat(len(idxh), 1) + idxh.repeat(len(idxw), 1).t() * wb).view(-1)
        pruned = x.view(b, c, ha, wa, -1).index_select(4, idx).view(b, c, ha, wa, len(idxh), len(idxw))
    else:
        pruned = x
    phb, pwb = pruned.shape[-2:]
    out1 = conv.conv1(pruned.permute(0, 4, 5, 1, 2, 3).contiguous().view(-1, c, ha, wa))
    o = out1.shape[1]
    out1 = out1.view(b, phb, pwb, o, ha, wa).permute(0, 3, 4, 5, 1, 2).contiguous()
    out2 = conv.conv2(x.permute(0, 2, 3, 1, 4, 5).contiguous().view(-1, c, hb, wb))
    out2 = out2.view(b, ha, wa, o, *out2.shape[-2:]).permute(0, 3, 1, 2, 4, 5).contiguous()
    return out1 + out2


def _block(block, x):
    for module in block:
        if isinstance(module, CenterPivotConv4d):
            x = _conv4d(module, x)
        elif isinstance(module, torch.nn.GroupNorm):
            x = F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
        else:
            x = torch.relu_(x)  # in place, as their ReLU(inplace=True)
    return x


def _resize_query_dims(x, size):
    b, c, ha, wa, hb, wb = x.shape
    x = x.permute(0, 4, 5, 1, 2, 3).contiguous().view(b * hb * wb, c, ha, wa)
    x = F.interpolate(x, size, mode="bilinear", align_corners=True)
    return x.view(b, hb, wb, c, *size).permute(0, 3, 4, 5, 1, 2).contiguous()


def _hpn(learner: HPNLearner, pyramid):
    sqz4 = _block(learner.encoder_layer4, pyramid[0])
    sqz3 = _block(learner.encoder_layer3, pyramid[1])
    sqz2 = _block(learner.encoder_layer2, pyramid[2])
    mix43 = _block(learner.encoder_layer4to3, _resize_query_dims(sqz4, sqz3.shape[2:4]) + sqz3)
    mix432 = _block(learner.encoder_layer3to2, _resize_query_dims(mix43, sqz2.shape[2:4]) + sqz2)
    b, c, ha, wa = mix432.shape[:4]
    return mix432.view(b, c, ha, wa, -1).mean(dim=-1)


def _gate(net, name: str, x):
    """A gate's 1x1 convolution, then its two 8-group 3x3 convolutions, one per half."""
    y = getattr(net, f"conv{name}0")(x)
    return torch.cat([getattr(net, f"conv{name}1")(y[:, :256]), getattr(net, f"conv{name}2")(y[:, 256:])], dim=1)


def _imr_step(net, encoded, mid, mask, state):
    """One IMR update, decode and residual head on the previous mask: (logits, state)."""
    z = torch.sigmoid(_gate(net, "z", torch.cat([mask, encoded, mid, state], dim=1)))
    r = torch.sigmoid(_gate(net, "r", torch.cat([mask, encoded, mid, state], dim=1)))
    h = _gate(net, "h", torch.cat([mask, encoded, mid, r * state], dim=1))
    state = (1 - z) * state + z * torch.tanh(h)
    decoded = F.interpolate(net.decoder1(state + encoded), LOGIT_SIZE, mode="bilinear", align_corners=True)
    prior = F.interpolate(mask, LOGIT_SIZE, mode="bilinear", align_corners=True)
    return net.res(torch.cat([net.decoder2(decoded), prior], dim=1)), state


def _mask(taps, mask):
    for i, t in enumerate(taps):
        taps[i] = t * F.interpolate(mask.unsqueeze(1), t.shape[-2:], mode="bilinear", align_corners=True)


def _pyramids(q_taps, s_taps, slices):
    """Both branches' correlation pyramids: built before a step and held through it."""
    return _correlation(q_taps, s_taps, slices), _correlation(s_taps, q_taps, slices)


def encode_episode(net, query_img, support_img, query_cam, support_cam):
    """What their forward computes before the steps, for both branches (query,
    support): the backbones' taps, each masked by the other image's CAM; the mid
    features (the middle stage's taps summed, at the state's size); the first
    correlation pyramids. Returns (taps, slices, mids, pyramids)."""
    q_taps, s_taps = _taps(net, query_img), _taps(net, support_img)
    slices = stage_slices(net.spec, len(q_taps))
    mids = [F.interpolate(sum(t[slices[1]]), STATE_SIZE, mode="bilinear", align_corners=True) for t in (q_taps, s_taps)]
    _mask(q_taps, support_cam)
    _mask(s_taps, query_cam)
    return (q_taps, s_taps), slices, mids, _pyramids(q_taps, s_taps, slices)


def refine_episode(net, taps, slices, mids, pyramids, priors, steps):
    """Their refinement steps from `encode_episode`'s results and the first priors
    (the CAMs, (B,1,50,50) each): yields each step's (query, support) logits. Every
    step runs both branches; after each but the last, each branch's features are
    masked by its own foreground probability, both pyramids rebuilt and the
    probabilities become the next priors. The mids go through the net's 1024->512
    convolution first, where it has one."""
    (q_taps, s_taps), (q_corr, s_corr), (q_prior, s_prior) = taps, pyramids, priors
    q_mid, s_mid = (net.conv1024_512(m) if hasattr(net, "conv1024_512") else m for m in mids)
    q_state = s_state = net.state.expand(q_prior.shape[0], -1, -1, -1)
    for step in range(steps):
        q_logit, q_state = _imr_step(net, _hpn(net.hpn_learner, q_corr), q_mid, q_prior, q_state)
        s_logit, s_state = _imr_step(net, _hpn(net.hpn_learner, s_corr), s_mid, s_prior, s_state)
        yield q_logit, s_logit
        if step < steps - 1:
            q_prob, s_prob = q_logit.softmax(1)[:, 1], s_logit.softmax(1)[:, 1]
            _mask(q_taps, q_prob)
            _mask(s_taps, s_prob)
            q_corr, s_corr = _pyramids(q_taps, s_taps, slices)
            q_prior = F.interpolate(q_prob.unsqueeze(1), STATE_SIZE, mode="bilinear", align_corners=True)
            s_prior = F.interpolate(s_prob.unsqueeze(1), STATE_SIZE, mode="bilinear", align_corners=True)


def forward(net, query_img, support_img, query_cam, support_cam, steps):
    """Query logits (B,2,100,100) of the last step, computed as the authors do."""
    taps, slices, mids, pyramids = encode_episode(net, query_img, support_img, query_cam, support_cam)
    priors = query_cam.unsqueeze(1), support_cam.unsqueeze(1)
    *_, (q_logit, _) = refine_episode(net, taps, slices, mids, pyramids, priors, steps)
    return q_logit


def predict_mask_nshot(logits, size) -> torch.Tensor:
    """(K,2,100,100) logits of one query against K supports -> its (H, W) bool mask:
    each support's logits upsampled bilinearly to `size`, the arg-max masks summed,
    divided by the largest vote (at least 1) and thresholded at 0.5."""
    total = sum(F.interpolate(shot[None], size, mode="bilinear", align_corners=True).argmax(dim=1)[0]
                for shot in logits.float())
    return total.float() / total.max().clamp(min=1) >= 0.5
