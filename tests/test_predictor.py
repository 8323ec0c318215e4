"""The Predictor: cached supports, batched queries, K-shot vote, zero-shot, drawn masks."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from imrseg.clip.cam import ClipCAM
from imrseg.errors import InputError
from imrseg.models import vote
from imrseg.predictor import Predictor
from imrseg.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, network_input, normalise


def _image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


class SpyCAM(ClipCAM):
    """A ClipCAM that counts the images it was asked about."""

    def __init__(self, model):
        super().__init__(model)
        self.seen = 0

    def maps_for_labels(self, images, *args, **kwargs):
        self.seen += len(images)
        return super().maps_for_labels(images, *args, **kwargs)


@pytest.fixture(scope="module")
def cam(recipe_clip):
    return ClipCAM(recipe_clip)


def test_prediction_is_at_each_query_size(recipe_net, cam):
    predictor = Predictor(recipe_net, cam, steps=2)
    predictor.set_support([_image(0)], "dog")
    queries = [_image(1, (64, 48)), _image(2, (30, 71))]
    preds = predictor.predict_batch(queries)
    for query, pred in zip(queries, preds):
        w, h = query.size
        assert pred.mask.shape == pred.prob.shape == (h, w) and pred.mask.dtype == bool
        assert len(pred.step_masks) == 2 and all(m.shape == (h, w) for m in pred.step_masks)
        assert pred.cam.shape == (50, 50)
        assert 0.0 <= pred.prob.min() and pred.prob.max() <= 1.0
        # One support: the mask is the arg-max, i.e. probability above one half.
        assert np.array_equal(pred.mask, pred.prob > 0.5)
    big = predictor.predict(queries[0], size=(640, 480))
    assert big.mask.shape == (480, 640)


@pytest.mark.parametrize("labels", [["dog"], ["dog", "cat"]])
def test_only_what_is_kept_comes_back_and_the_masks_are_the_same(recipe_net, cam, labels):
    predictor = Predictor(recipe_net, cam, steps=3)
    predictor.set_supports({label: ([_image(10 + i)], None) for i, label in enumerate(labels)})
    queries = [_image(12), _image(13, (30, 71))]
    every = predictor.predict_classes(queries)
    bare = predictor.predict_classes(queries, keep=())
    for full, kept in zip(every, bare):
        assert np.array_equal(full.index_mask, kept.index_mask) and full.score == kept.score
        for label in labels:
            assert np.array_equal(full[label].mask, kept[label].mask)
            assert kept[label].cam is None and kept[label].step_masks == []
            # Several classes: the probabilities decide overlaps, so they always come back.
            assert (kept[label].prob is None) == (len(labels) == 1)
            assert len(full[label].step_masks) == 3 and full[label].cam.shape == (50, 50)
    with pytest.raises(InputError, match="`keep`"):
        predictor.predict_classes(queries, keep=("probability",))


def test_batch_equals_one_by_one(recipe_net, cam):
    predictor = Predictor(recipe_net, cam, steps=1)
    predictor.set_support([_image(3)], "cat")
    queries = [_image(4), _image(5)]
    batched = predictor.predict_batch(queries)
    for query, pred in zip(queries, batched):
        single = predictor.predict(query)
        assert np.abs(single.prob - pred.prob).max() <= 1e-4
        assert np.abs(single.cam - pred.cam).max() <= 1e-4


def test_two_supports_vote(recipe_net, cam):
    supports, query = [_image(6), _image(7)], _image(8)
    predictor = Predictor(recipe_net, cam, steps=1)
    predictor.set_support(supports, "bird")
    both = predictor.predict(query)
    singles = []
    for support in supports:
        predictor.set_support([support], "bird")
        singles.append(predictor.predict(query).mask)
    expected = vote(torch.from_numpy(np.stack(singles))[None].long())[0].bool().numpy()
    assert np.array_equal(both.mask, expected)


def test_drawn_support_masks_replace_the_cam(recipe_net, recipe_clip):
    spy = SpyCAM(recipe_clip)
    predictor = Predictor(recipe_net, spy, steps=1)
    support = _image(9)
    drawn = np.zeros((48, 64), bool)
    drawn[10:30, 20:50] = True
    predictor.set_support([support], "boat", masks=[drawn])
    assert spy.seen == 0
    # Area-averaged to 50x50: the coarse mask keeps the drawn area.
    assert abs(float(predictor._shots["boat"][0][1].sum()) - drawn.mean() * 2500) <= 1.0
    predictor.predict(_image(10))
    assert spy.seen == 1  # only the query's CAM


def test_a_drawn_mask_replaces_only_its_own_supports_cam(recipe_net, recipe_clip):
    """Supports of one class may mix: a drawn mask for one, the CAM for the other, in
    one CLIP forward of the undrawn ones, each pair as it would be alone."""
    spy = SpyCAM(recipe_clip)
    predictor = Predictor(recipe_net, spy, steps=1)
    images = [_image(11), _image(12, (48, 64))]
    drawn = np.zeros((64, 48), bool)
    drawn[5:40, 10:30] = True
    mixed = predictor.support_set({"boat": (images, [None, drawn])}).shots["boat"]
    assert spy.seen == 1  # the first support's CAM only
    alone = predictor.support_set({"boat": (images[:1], None)}).shots["boat"]  # its CAM in a batch of one
    masks = predictor.support_set({"boat": (images, [np.ones((48, 64), bool), drawn])}).shots["boat"]
    assert torch.equal(mixed[0][1], alone[0][1])
    assert torch.equal(mixed[1][1], masks[1][1])
    assert not torch.equal(mixed[0][1], masks[0][1])
    for (features, _), (own, _) in zip(mixed, masks):  # the features do not depend on the masks
        assert torch.equal(features.mid_gates, own.mid_gates)
    query = _image(13)
    predictor.set_supports({"boat": (images, [None, drawn])})
    assert predictor.predict(query).mask.shape == (48, 64)


def test_zero_shot_is_query_as_its_own_support(recipe_net, cam):
    image = _image(11)
    predictor = Predictor(recipe_net, cam, steps=2)
    zero = predictor.predict_zero_shot([image], "horse")[0]
    predictor.set_support([image], "horse")
    explicit = predictor.predict(image)
    assert np.abs(zero.prob - explicit.prob).max() <= 1e-4


def test_label_is_checked_before_work(recipe_net, cam):
    from imrseg.errors import InputError

    predictor = Predictor(recipe_net, cam)
    with pytest.raises(InputError, match="label is empty"):
        predictor.set_support([_image(0)], "  ")
    with pytest.raises(InputError, match="too long for CLIP"):
        predictor.set_support([_image(0)], "very " * 80 + "dog")


def test_a_vocabulary_of_the_label_alone_is_refused(recipe_net, cam):
    """Alone in the softmax, the label's probability is 1 and its CAM flat."""
    from imrseg.errors import InputError

    for vocabulary in (["cat"], ["cats"], [""]):
        predictor = Predictor(recipe_net, cam, vocabulary=vocabulary)
        with pytest.raises(InputError, match="`background` leaves the label 'cat' nothing to compete with"):
            predictor.set_support([_image(0)], "cat")


def test_cam_works_with_a_vision_transformer_clip():
    import open_clip

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    cam = ClipCAM(model, open_clip.get_tokenizer("ViT-B-32"))
    maps = cam([_image(12, (80, 60)), _image(13)], ["dog", "cat", "car"], [0, 2], size=50)
    assert maps.shape == (2, 50, 50)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 and float(maps.max()) > 0.5


@pytest.mark.parametrize("stats", [(IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)])
def test_normalising_on_the_device_equals_the_authors_transform(stats):
    """Pixels cross to the device as uint8 and are normalised there by lookup: bit for
    bit torchvision's ToTensor + Normalize, for every byte value and channel."""
    mean, std = stats
    every = np.tile(np.arange(256, dtype=np.uint8), (16, 3)).reshape(16, 256, 3)
    for picture in (Image.fromarray(every), _image(7, (333, 251))):
        reference = TF.normalize(TF.to_tensor(picture), mean, std)
        assert torch.equal(normalise(torch.from_numpy(np.array(picture)).permute(2, 0, 1), mean, std), reference)
    picture = _image(8, (97, 131))
    resized = picture.resize((400, 400), Image.BILINEAR)
    assert torch.equal(network_input(picture), TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD))


def test_queries_prepared_on_other_threads_give_the_same_results(recipe_net, cam):
    """`prepare` (the resizes) runs on a run's decoding threads; what it makes predicts
    exactly as the images themselves."""
    predictor = Predictor(recipe_net, cam, steps=1)
    predictor.set_support([_image(3)], "cat")
    queries = [_image(4), _image(5, (48, 64))]
    with ThreadPoolExecutor(2) as pool:
        prepared = list(pool.map(predictor.prepare, queries))
    assert [p.size for p in prepared] == [q.size for q in queries]
    assert prepared[0].network.dtype == torch.uint8 and prepared[0].clip.shape == (3, 224, 224)
    for direct, made in zip(predictor.predict_classes(queries), predictor.predict_classes(prepared)):
        assert np.array_equal(direct["cat"].mask, made["cat"].mask)
        assert np.array_equal(direct["cat"].prob, made["cat"].prob)
        assert np.array_equal(direct["cat"].cam, made["cat"].cam)
