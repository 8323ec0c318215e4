"""The baseline's pieces against the authors' own code, side by side in one process.

`authors_pipeline.py` emulates the authors' per-episode computation on imrseg's
modules; `bench_segment.py` times the folder path against it. This checks that the
emulation costs what their code costs: it imports their modules from a checkout of
github.com/Whileherham/IMR-HSNet (`--authors`), gives both the same recipe weights
and the same inputs, checks that both compute the same CAMs and logits, and times
them in alternation (each pair's order swapped every repeat), `--repeats` times
(medians):

- one CLIP Grad-CAM, as their CAM pass (generate_cam_voc.py) computes it per image;
- one episode's network, as their test forward (under no_grad, with the
  original-size option) runs it for a query and a support.

CPU only: on CPU their `clip.load` runs CLIP in fp32, as the emulation does (on CUDA
it would keep it in fp16). The LAST stdout line is one JSON object.

    python benchmarks/against_authors.py --authors ../IMR-HSNet --repeats 5
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import types
from pathlib import Path
from unittest import mock

import cv2
import open_clip
import torch
from torchvision.models import resnet50

import authors_pipeline
from common import LABEL, images, recipe_clip, recipe_network, report, timed
from imrseg.clip.vocabulary import DEFAULT_TEMPLATE, background_vocabulary
from imrseg.data.classes import PASCAL_CLASSES
from imrseg.transforms import clip_input, network_input


def import_authors(checkout: Path):
    """Their CLIP module, their GradCAM class and their network class."""
    if not (checkout / "model" / "hsnet_imr.py").is_file():
        sys.exit(f"{checkout}: not a checkout of Whileherham/IMR-HSNet (no model/hsnet_imr.py)")
    sys.path.insert(0, str(checkout))
    if importlib.util.find_spec("ttach") is None:
        # Their pytorch-grad-cam copy imports ttach for test-time augmentation, which
        # their CAM pass does not use.
        sys.modules["ttach"] = types.ModuleType("ttach")
    clip = importlib.import_module("clip")
    grad_cam = importlib.import_module("pytorch_grad_cam")
    network = importlib.import_module("model.hsnet_imr")
    return clip, grad_cam.GradCAM, network.HypercorrSqueezeNetwork_imr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", type=Path, required=True, help="a checkout of Whileherham/IMR-HSNet")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    their_clip_module, GradCAM, TheirNetwork = import_authors(args.authors.resolve())

    net = recipe_network().eval()
    clip = recipe_clip().eval()
    # Theirs: their build_model (which rounds the weights through fp16 itself), then fp32 as
    # clip.load does on CPU; gradients on in both, as nothing in their CAM pass turns them off.
    their_clip = their_clip_module.build_model(
        {k: v.clone() for k, v in clip.state_dict().items() if k != "attn_mask"}).float().eval()
    # Their constructor reads an ImageNet ResNet-50 checkpoint from a fixed path; the
    # recipe weights replace it right after.
    with mock.patch("torch.load", lambda *a, **k: resnet50().state_dict()):
        their_net = TheirNetwork("resnet50", True)
    their_net.load_state_dict(net.state_dict())
    their_net.eval()

    vocabulary = background_vocabulary(LABEL, PASCAL_CLASSES)
    prompts = [DEFAULT_TEMPLATE.format(c=c) for c in vocabulary]
    tokens = open_clip.get_tokenizer("RN50-quickgelu")(prompts)
    their_tokens = torch.cat([their_clip_module.tokenize(p) for p in prompts])
    if not torch.equal(tokens, their_tokens):
        sys.exit("the two tokenizers disagree on the prompts")
    query, support = images(1, 1)[0], images(1, 2)[0]
    query_clip, support_clip = clip_input(query, 224)[None], clip_input(support, 224)[None]
    query_img, support_img = network_input(query)[None], network_input(support)[None]

    def their_cam(image):
        their_clip.get_text_features(their_tokens)
        cam = GradCAM(model=their_clip, target_layers=[their_clip.visual.layer4[-1]], use_cuda=False)
        return torch.from_numpy(cv2.resize(cam(input_tensor=image, target_category=0)[0], (50, 50)))[None]

    def emulated_cam(image):
        return authors_pipeline.cam(clip, tokens, image, 0)

    query_cam, support_cam = their_cam(query_clip), their_cam(support_clip)

    def their_network():
        with torch.no_grad():
            return their_net(query_img, support_img, support_cam, query_cam, stage=args.steps)[0]

    def emulated_network():
        with torch.no_grad():
            return authors_pipeline.forward(net, query_img, support_img, query_cam, support_cam, args.steps)

    cam_diff = max(float((their_cam(x) - emulated_cam(x)).abs().max()) for x in (query_clip, support_clip))
    logit_diff = float((their_network() - emulated_network()).abs().max())

    pieces = {"their_cam": lambda: their_cam(query_clip), "emulated_cam": lambda: emulated_cam(query_clip),
              "their_network": their_network, "emulated_network": emulated_network}
    seconds = {name: [] for name in pieces}
    for repeat in range(args.repeats):
        # Each pair in turn, the first of it alternating: whichever runs first after the
        # other pair's work finds the allocator in a different state.
        for pair in (("their_cam", "emulated_cam"), ("their_network", "emulated_network")):
            for name in pair[::-1] if repeat % 2 else pair:
                seconds[name].append(timed(pieces[name]).wall)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats,
        **{f"{name}_s": round(s, 4) for name, s in median.items()},
        "cam_ratio": round(median["emulated_cam"] / median["their_cam"], 3),
        "network_ratio": round(median["emulated_network"] / median["their_network"], 3),
        "cam_max_abs_diff": cam_diff, "logit_max_abs_diff": logit_diff,
    }
    report(result, f"CAM: theirs {median['their_cam']:.3f} s, emulated {median['emulated_cam']:.3f} s   "
                   f"network: theirs {median['their_network']:.3f} s, emulated {median['emulated_network']:.3f} s   "
                   f"max |diff| CAM {cam_diff:.1e}, logits {logit_diff:.1e}")


if __name__ == "__main__":
    main()
