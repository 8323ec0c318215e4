"""Several classes in one run, with recipe weights: one CLIP forward and one backbone
pass per query for every class, Grad-CAMs equal to per-class ones, each class equal
to a one-class run with the same competitors; zero-shot's support branch computed
once; the score falls as the supports or the last two steps disagree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imrseg.clip.cam import ClipCAM
from imrseg.models import refine_and_vote
from imrseg.clip.vocabulary import class_vocabulary
from imrseg.predictor import Predictor
from imrseg.transforms import network_input


def _image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


class Counted:
    """Wraps a callable and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def cam(recipe_clip):
    return ClipCAM(recipe_clip)


def test_cams_for_several_labels_come_from_one_forward_and_equal_per_label_cams(cam, monkeypatch):
    images = [_image(1), _image(2, (40, 70))]
    vocabularies = [class_vocabulary(label, ["dog", "cat", "car"], ["bus", "tree"]) for label in ("dog", "cat", "car")]
    assert vocabularies[1][:3] == ["cat", "dog", "car"]  # the other classes compete
    forward = Counted(cam.model.encode_image)
    monkeypatch.setattr(cam.model, "encode_image", forward)
    together = cam.cams_for_labels(images, vocabularies)
    assert forward.calls == 1 and together.shape == (3, 2, 50, 50)
    for v, vocabulary in enumerate(vocabularies):
        assert torch.equal(together[v], cam(images, vocabulary, [0, 0]))


def test_several_classes_share_the_query_work_and_match_one_class_runs(recipe_net, cam, monkeypatch):
    labels = ["dog", "cat", "bird"]
    supports = {label: ([_image(10 + i)], None) for i, label in enumerate(labels)}
    queries, sizes = [_image(20), _image(21, (50, 30))], [(64, 48), (100, 60)]
    predictor = Predictor(recipe_net, cam, steps=1, vocabulary=["car", "tree"])
    predictor.set_supports(supports)
    encode, forward = Counted(recipe_net.encode), Counted(cam.model.encode_image)
    monkeypatch.setattr(recipe_net, "encode", encode)
    monkeypatch.setattr(cam.model, "encode_image", forward)
    results = predictor.predict_classes(queries, sizes=sizes)
    assert encode.calls == 1 and forward.calls == 1  # one batch: one backbone pass, one CLIP forward
    monkeypatch.undo()

    for result, (w, h) in zip(results, sizes):
        assert result.labels == labels and result.index_mask.shape == (h, w)
        assert set(np.unique(result.index_mask)) <= {0, 1, 2, 3}
    for label in labels:
        # A one-class run whose competitors are the same names gives the same result.
        single = Predictor(recipe_net, cam, steps=1, vocabulary=predictor.vocabulary(label)[1:])
        single.set_support(supports[label][0], label)
        for result, alone in zip(results, single.predict_batch(queries, sizes=sizes)):
            assert np.array_equal(result[label].cam, alone.cam)
            assert np.abs(result[label].prob - alone.prob).max() <= 1e-5
            assert np.array_equal(result[label].mask, alone.mask)
            assert result[label].score == pytest.approx(alone.score, abs=1e-5)


def test_index_mask_takes_the_most_probable_class_where_masks_overlap(recipe_net, cam):
    predictor = Predictor(recipe_net, cam, steps=1)
    predictor.set_zero_shot(["dog", "cat"])
    result = predictor.predict_classes([_image(30)])[0]
    dog, cat, index = result["dog"], result["cat"], result.index_mask
    assert np.array_equal(index == 0, ~dog.mask & ~cat.mask)
    both = dog.mask & cat.mask
    assert np.array_equal(index[both], np.where(cat.prob[both] > dog.prob[both], 2, 1))
    assert np.array_equal(index[dog.mask & ~cat.mask], np.ones((dog.mask & ~cat.mask).sum(), np.uint8))


def test_zero_shot_runs_one_branch_and_keeps_its_masks(recipe_net):
    """The query as its own support: the support branch, which equals the query's, is
    not run (2 learner passes instead of 3 at 2 steps) and the logits are the same."""
    images = torch.stack([network_input(_image(40)), network_input(_image(41))])
    cams = torch.rand(2, 50, 50, generator=torch.Generator().manual_seed(0))
    learner = Counted(recipe_net.hpn_learner.forward)
    with torch.inference_mode():
        query = recipe_net.encode(images)
        recipe_net.hpn_learner.forward = learner
        try:
            shared, _ = recipe_net.refine(query, query, cams, cams, steps=2, with_support=False)
            assert learner.calls == 2
            # The same features and CAM as distinct objects: the full two-branch path.
            full, _ = recipe_net.refine(query, query.index(slice(None)), cams, cams.clone(), steps=2,
                                        with_support=False)
            assert learner.calls == 2 + 3
        finally:
            del recipe_net.hpn_learner.forward
    for a, b in zip(shared, full):
        assert (a - b).abs().max() <= 1e-5
        assert torch.equal(a.argmax(dim=1), b.argmax(dim=1))


class FixedLogits:
    """A stand-in for the network that returns given per-shot, per-step query logits."""

    def __init__(self, per_shot):
        self.per_shot = iter(per_shot)

    def refine(self, *args, **kwargs):
        return next(self.per_shot), None


@pytest.fixture(scope="module")
def recipe_logits(recipe_net):
    """Per-step (1,2,100,100) query logits of the recipe network, one query, 2 steps."""
    with torch.inference_mode():
        query, support = recipe_net.encode(network_input(_image(50))[None]), recipe_net.encode(network_input(_image(51))[None])
        cams = torch.rand(2, 1, 50, 50, generator=torch.Generator().manual_seed(1))
        logits, _ = recipe_net.refine(query, support, cams[0], cams[1], steps=2, with_support=False)
    return logits


def _background(logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The logits saying background with certainty inside `region` (100x100 bool)."""
    out = logits.clone()
    out[:, 0, region], out[:, 1, region] = 10.0, -10.0
    return out


def _score(per_shot) -> float:
    return refine_and_vote(FixedLogits(per_shot), None, None, [(None, None)] * len(per_shot), 2, [(100, 100)])[0].score


def test_score_falls_as_supports_or_steps_disagree(recipe_logits):
    base = [t.clone() for t in recipe_logits]
    foreground = base[-1][0].argmax(0).bool()
    assert foreground.any() and not foreground.all()
    rows = foreground.nonzero()[:, 0].float()
    # Growing parts of the mask (its pixels in the top quarter, half, three quarters of
    # its rows) where a second support, or the step before the last, says background:
    # the mask is unchanged (the vote keeps a pixel one of two supports gives), the
    # disagreement grows.
    cuts = [torch.zeros_like(foreground)] + [foreground & (torch.arange(100)[:, None] <= rows.quantile(q))
                                             for q in (0.25, 0.5, 0.75)]
    agreeing = _score([base, base])
    assert agreeing == pytest.approx(_score([base]))  # a second identical support changes nothing
    support_scores = [_score([base, [base[0], _background(base[1], cut)]]) for cut in cuts]
    step_scores = [_score([[_background(base[0], cut), base[1]]]) for cut in cuts]
    assert support_scores[0] == pytest.approx(agreeing) and step_scores[0] == pytest.approx(agreeing)
    assert all(a > b for a, b in zip(support_scores, support_scores[1:])), support_scores
    assert all(a > b for a, b in zip(step_scores, step_scores[1:])), step_scores


def test_one_step_one_support_score_is_the_mean_probability_inside_the_mask(recipe_net, cam):
    predictor = Predictor(recipe_net, cam, steps=1)
    predictor.set_support([_image(60)], "dog")
    pred = predictor.predict(_image(61))
    expected = float(pred.prob[pred.mask].mean()) if pred.mask.any() else 0.0
    assert pred.score == pytest.approx(expected, abs=1e-6)
    assert 0.5 <= pred.score <= 1.0 or not pred.mask.any()
