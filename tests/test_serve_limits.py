"""The server's safety without a model: token rules, every limit, one-line JSON errors,
root paths, a full queue, timeouts, and one failing request leaving the others whole.
A stub predictor stands in for the network (masks: the image's left half)."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imrseg.errors import InputError
from imrseg.predictor import ClassPredictions, Prediction, SupportSet
from imrseg.serve.app import create_app
from imrseg.serve.limits import Limits
from imrseg.serve.server import check_binding
from imrseg.serve.service import Busy, ClassRequest, Segmenter

ROOT = Path(__file__).resolve().parents[1]
POISON = (13, 13)  # a query of this size makes the stub's forward fail


class StubPredictor:
    """What the Segmenter needs of a Predictor; `gate` (when set) holds each forward."""

    steps, cam, device, precision, weights_info, clip_info = 1, None, "cpu", "fp32", None, None

    def __init__(self):
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def support_set(self, classes):
        self.classes = classes
        return SupportSet(dict.fromkeys(classes))

    def predict_classes(self, images, steps=None, sizes=None, keep=(), supports=None):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if any(im.size == POISON for im in images):
            raise RuntimeError("the forward failed")
        out = []
        for (w, h) in sizes:
            mask = np.zeros((h, w), bool)
            mask[:, : w // 2] = True
            out.append(ClassPredictions({label: Prediction(mask, mask.astype(np.float32), None, [], 0.5)
                                         for label in supports.labels}))
        return out


def png(size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def stub():
    return StubPredictor()


@pytest.fixture
def make(stub, tmp_path):
    segmenters = []

    def make(limits=Limits(), token=None, root=None, **options):
        segmenter = Segmenter(stub, max_queue=limits.max_queue, timeout_s=limits.timeout_s, **options)
        segmenters.append(segmenter)
        return TestClient(create_app(segmenter, limits, token=token, root=root), raise_server_exceptions=False)

    yield make
    if stub.gate is not None:
        stub.gate.set()
    for segmenter in segmenters:
        segmenter.close()


def post(client, n=1, size=(8, 6), **data):
    return client.post("/v1/segment", files=[("queries", (f"q{i}.png", png(size))) for i in range(n)],
                       data={"label": "cat", **data})


def one_line_error(response, status, *words):
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_a_request_answers_the_mask_and_png_matches_rle(make):
    client = make()
    result = post(client, format="both").json()["results"][0]
    (cat,) = result["classes"]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(cat["png"])))) > 0
    assert mask.shape == (6, 8) and mask[:, :4].all() and not mask[:, 4:].any()
    assert cat["rle"]["size"] == [6, 8] and cat["foreground_fraction"] == 0.5


def mask_png(size, left: int) -> bytes:
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[:, :left] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


def test_drawn_support_masks_reach_the_support_set_and_a_wrong_size_is_named(make, stub):
    client = make()
    files = [("queries", ("q.png", png())), ("supports", ("s.png", png((10, 4)))),
             ("support_masks", ("m.png", mask_png((10, 4), 3)))]
    assert client.post("/v1/segment", files=files, data={"label": "cat"}).status_code == 200
    (images, masks), = stub.classes.values()
    assert len(images) == 1 and len(masks) == 1
    assert masks[0].shape == (4, 10) and masks[0][:, :3].all() and not masks[0][:, 3:].any()
    files[2] = ("support_masks", ("m.png", mask_png((9, 4), 3)))
    one_line_error(client.post("/v1/segment", files=files, data={"label": "cat"}), 400, "support_masks[0]", "9x4")


def test_token_bearer_or_basic_password_and_health_stays_open(make):
    client = make(token="s3cret")
    assert client.get("/v1/health").status_code == 200
    one_line_error(client.get("/v1/info"), 401, "token")
    one_line_error(client.get("/v1/info", headers={"Authorization": "Bearer wrong"}), 401, "token")
    assert client.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert client.get("/v1/info", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"s3cret:nope").decode()
    one_line_error(client.get("/v1/info", headers={"Authorization": f"Basic {wrong}"}), 401, "token")
    one_line_error(post(client), 401, "token")


def test_loopback_needs_no_token_other_hosts_do():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_binding(host, None)
    check_binding("0.0.0.0", "t")
    with pytest.raises(InputError, match="`token`"):
        check_binding("0.0.0.0", None)
    for port in (0, 65536, True):
        with pytest.raises(InputError, match="`port`"):
            check_binding("127.0.0.1", None, port)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("IMRSEG_TOKEN", None)
    for flags, named in ((["--host", "0.0.0.0"], "--token"), (["--port", "99999"], "--port"),
                         (["--batch-size", "0"], "--batch-size")):
        run = subprocess.run([sys.executable, "-m", "imrseg", "serve", *flags], capture_output=True,
                             text=True, env=env, timeout=300)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and named in run.stderr, run.stderr


def test_body_over_the_limit_is_refused_while_read(make):
    client = make(Limits(max_body_bytes=2000))
    one_line_error(post(client, size=(200, 200)), 413, "request body", "2000")

    def chunks():  # no Content-Length: the limit counts the bytes as they come
        yield (b'--x\r\nContent-Disposition: form-data; name="queries"; filename="q.png"\r\n'
               b"Content-Type: image/png\r\n\r\n" + b"x" * 1500)
        yield b"x" * 1500
        yield b"\r\n--x--\r\n"

    response = client.post("/v1/segment", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    one_line_error(response, 413, "request body")


def test_pixels_images_and_fields_limits_name_the_field(make):
    client = make(Limits(max_pixels=1000, max_images=2))
    one_line_error(post(client, size=(100, 100)), 400, "queries", "pixels", "1000")
    one_line_error(post(client, n=3), 400, "images", "2")
    one_line_error(client.post("/v1/segment", files=[("queries", ("q.png", png()))]), 422, "label")
    one_line_error(post(client, steps="many"), 422, "steps")
    one_line_error(post(client, steps="50"), 400, "steps")
    one_line_error(post(client, format="gif"), 422, "format")
    one_line_error(client.post("/v1/segment", files=[("queries", ("q.png", b"not an image"))],
                               data={"label": "cat"}), 400, "queries", "q.png")
    one_line_error(client.post("/v1/segment/paths", json={"queries": ["a.png"], "classes": [{}]}), 422,
                   "classes.0.name")


def test_decompression_bomb_is_refused_before_decoding(make):
    buffer = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buffer, "PNG")  # 49 megapixels in a few kilobytes
    client = make()
    response = client.post("/v1/segment", files=[("queries", ("bomb.png", buffer.getvalue()))],
                           data={"label": "cat"})
    one_line_error(response, 400, "bomb.png", "49000000 pixels")


def test_root_paths_inside_only(make, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "in.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png())
    (root / "link.png").symlink_to(outside / "secret.png")
    client = make(root=root)
    ok = client.post("/v1/segment/paths", json={"queries": ["in.png"], "classes": [{"name": "cat"}]})
    assert ok.status_code == 200 and ok.json()["results"][0]["image"] == "in.png"
    for path, words in (("../outside/secret.png", ["'..'"]), ("link.png", ["outside the server's root"]),
                        (str(outside / "secret.png"), ["relative"])):
        response = client.post("/v1/segment/paths", json={"queries": [path], "classes": [{"name": "cat"}]})
        message = one_line_error(response, 400, "queries", *words)
        assert str(tmp_path) not in message.replace(path, "")
    one_line_error(post(client, query_paths="link.png"), 400, "query_paths", "outside")
    one_line_error(make().post("/v1/segment/paths", json={"queries": ["in.png"], "classes": [{"name": "c"}]}),
                   400, "--root")


def test_full_queue_answers_503_with_retry_after(make, stub):
    stub.gate = threading.Event()
    client = make(Limits(max_queue=1), batch_size=1, max_wait_ms=0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client)  # taken by the worker, held at the gate
        assert stub.started.wait(10)
        second = pool.submit(post, client)  # waits in the queue
        deadline = time.monotonic() + 10
        while client.app.state.segmenter.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = post(client)
        one_line_error(busy, 503, "waiting")
        assert int(busy.headers["Retry-After"]) >= 1
        stub.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert post(client).status_code == 200


def test_a_request_past_its_time_limit_answers_504(make, stub):
    stub.gate = threading.Event()
    client = make(Limits(timeout_s=0.3))
    one_line_error(post(client), 504, "0.3 s")
    stub.gate.set()
    assert post(client).status_code == 200


def test_a_failing_forward_answers_that_request_only(make):
    client = make(batch_size=8, max_wait_ms=50)
    jobs = [dict(size=POISON) if i % 3 == 0 else dict(size=(8, 6)) for i in range(9)]
    jobs[4] = dict(size=(8, 6), steps="x")  # a bad request among them
    with ThreadPoolExecutor(9) as pool:
        responses = list(pool.map(lambda job: post(client, **job), jobs))
    for job, response in zip(jobs, responses):
        expected = 500 if job["size"] == POISON else 422 if "steps" in job else 200
        assert response.status_code == expected, response.text
    assert post(client).status_code == 200


def test_segmenter_checks_its_input():
    segmenter = Segmenter(StubPredictor())
    try:
        image = Image.new("RGB", (4, 4))
        with pytest.raises(InputError, match="`classes`"):
            segmenter.segment_sync([image], [ClassRequest("a"), ClassRequest("a")])
        with pytest.raises(InputError, match="`classes`.*mask 0"):
            segmenter.segment_sync([image], [ClassRequest("a", supports=(image,), masks=(np.ones((3, 3)),))])
        with pytest.raises(InputError, match="`keep`"):
            segmenter.segment_sync([image], [ClassRequest("a")], keep=["everything"])
        assert ClassRequest("a").prompt == "a"
    finally:
        segmenter.close()
    with pytest.raises(Busy):
        segmenter.segment_sync([image], [ClassRequest("a")])


def test_the_warm_up_forward_runs_before_the_first_request_and_is_not_one(stub):
    """`warm_up`: one zero-shot forward of a blank picture on the worker, before any
    request; a request sent meanwhile waits for it, then is answered as ever."""
    stub.gate = threading.Event()
    segmenter = Segmenter(stub, warm_up=True)
    try:
        assert stub.started.wait(10)  # the warm-up forward, with no request sent
        assert stub.classes == {"object": None}
        image = Image.new("RGB", (8, 6))
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(segmenter.segment_sync, [image], [ClassRequest("dog")])
            time.sleep(0.2)
            assert not answer.done()  # behind the warm-up
            stub.gate.set()
            (result,) = answer.result(10)
        assert result["dog"].mask.shape == (6, 8)
        assert (segmenter.requests, segmenter.forwards) == (1, 1)
    finally:
        stub.gate.set()
        segmenter.close()
    cold = Segmenter(StubPredictor())
    try:
        assert not cold.predictor.started.wait(0.2)  # no warm-up unless asked
    finally:
        cold.close()


def test_openapi_page_describes_the_routes_answers_and_errors(make):
    schema = make().get("/openapi.json").json()
    segment = schema["paths"]["/v1/segment"]["post"]
    assert {"200", "400", "413", "422", "503", "504"} <= set(segment["responses"])
    assert segment["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "/v1/segment/paths" in schema["paths"] and "/v1/info" in schema["paths"]
    fields = schema["components"]["schemas"]["ClassResult"]["properties"]
    assert all(field.get("description") for field in fields.values())
