"""Label Studio's ML-backend protocol: the shapes Label Studio sends and expects, checked
with label-studio-sdk's own validator and brush decoder; the brush RLE both ways;
polygons back to the mask; bad configs named; task images fetched the ways Label Studio
stores them from a fake Label Studio on 127.0.0.1 (legacy token, personal access token,
presigned redirect to a bucket that never sees the key, wrong or missing key); supports
from the connection's extra parameters, from annotated tasks and from the webhook.
The model is a stand-in that draws a known rectangle per class, so this runs in seconds."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from imrseg.predictor import ClassPredictions, Prediction
from imrseg.serve.app import create_app
from imrseg.serve.labelstudio_results import brush_mask, brush_rle
from imrseg.serve.limits import Limits

BRUSH_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog" alias="Dog"/></BrushLabels></View>"""
BOTH_CONFIG = """<View><Image name="img" value="$picture"/>
<BrushLabels name="brush" toName="img"><Label value="cat"/><Label value="dog"/></BrushLabels>
<PolygonLabels name="poly" toName="img"><Label value="cat"/><Label value="dog"/></PolygonLabels></View>"""
LEGACY = "legacy-token-123"
SIZES = {"q1.png": (64, 48), "q2.png": (40, 56)}


def jwt(claims: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


REFRESH = jwt({"token_type": "refresh", "exp": time.time() + 3600})
ACCESS = jwt({"token_type": "access", "exp": time.time() + 3600})


def png(size, seed) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Serves files as Label Studio does (uploads, local files, presign redirects) to
    the legacy token or the access token a refresh gives; `bucket` is another origin."""

    files = {"/data/upload/1/q1.png": png(SIZES["q1.png"], 1), "dir/q2.png": png(SIZES["q2.png"], 2),
             "s3://bucket/q1.png": png(SIZES["q1.png"], 1), "/support.png": png((30, 20), 3)}
    bucket = ""
    seen: list = []
    tasks: list = []

    def log_message(self, *args):
        pass

    def answer(self, status, body: bytes, kind="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/token/refresh/" and body.get("refresh") == REFRESH:
            return self.answer(200, json.dumps({"access": ACCESS}).encode())
        return self.answer(401, b'{"detail": "Token is invalid or expired"}')

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.seen.append((url.path, self.headers.get("Authorization")))
        if url.path.startswith("/bucket/"):  # the cloud: a signed URL, no Label Studio key
            return self.answer(200, self.files["s3://bucket/" + url.path[len("/bucket/"):]], "image/png")
        if self.headers.get("Authorization") not in (f"Token {LEGACY}", f"Bearer {ACCESS}"):
            return self.answer(401, b'{"detail": "legacy token authentication has been disabled"}')
        if url.path == "/api/tasks/":
            return self.answer(200, json.dumps({"tasks": self.tasks, "total": len(self.tasks)}).encode())
        if url.path == "/data/local-files/":
            return self.answer(200, self.files[query["d"][0]], "image/png")
        if url.path.startswith("/tasks/") and url.path.endswith("/presign/"):
            uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
            target = f"{self.bucket}/bucket/{uri.split('/', 3)[3]}?X-Amz-Signature=secret"
            return self.answer(303, b"", headers=[("Location", target)])
        if url.path in self.files:
            return self.answer(200, self.files[url.path], "image/png")
        return self.answer(404, b'{"detail": "Not found"}')


@pytest.fixture(scope="module")
def label_studio():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    ls, bucket = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    FakeLabelStudio.bucket = bucket
    yield ls
    for s in servers:
        s.shutdown()


def rectangle(shape, k) -> np.ndarray:
    """The stand-in model's mask of class k: a rectangle of the image, different per class."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    mask[h * k // 4: h * (k + 2) // 4, w // 8: w * (k + 5) // 8] = True
    return mask


class StandIn:
    """What the router uses of a Segmenter, drawing class k's `rectangle`; it records
    the classes each call asked for."""

    batch_size, requests, forwards, waiting = 4, 0, 0, 0

    def __init__(self):
        self.calls = []

    def info(self):
        return {"model_version": "imrseg-test"}

    def segment_sync(self, images, classes, *, steps=None, keep=()):
        self.calls.append((len(images), list(classes), steps))
        out = []
        for image in images:
            w, h = image.size
            out.append(ClassPredictions({c.name: Prediction(rectangle((h, w), k), np.full((h, w), 0.75, np.float32),
                                                            None, score=0.5 + k / 10)
                                         for k, c in enumerate(classes)}))
        return out


def client(ls_url, key, monkeypatch) -> tuple[TestClient, StandIn]:
    for name, value in (("LABEL_STUDIO_URL", ls_url), ("LABEL_STUDIO_API_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    stand_in = StandIn()
    return TestClient(create_app(stand_in, Limits())), stand_in


def predict(http, tasks, config=BRUSH_CONFIG, project="1.1700000000"):
    return http.post("/predict", json={"tasks": tasks, "project": project, "label_config": config,
                                       "params": {"login": None, "password": None, "context": None}})


def test_health_setup_and_metrics_answer_without_the_model(label_studio, monkeypatch):
    http, stand_in = client(label_studio, LEGACY, monkeypatch)
    for path in ("/", "/health"):
        assert http.get(path).json() == {"status": "UP", "model_class": "imrseg"}
    answer = http.post("/setup", json={"project": "1.1700000000", "schema": BRUSH_CONFIG,
                                       "hostname": "http://localhost:8080", "access_token": "x", "extra_params": None})
    assert answer.status_code == 200 and answer.json() == {"model_version": "imrseg-test"}
    assert http.get("/metrics").json()["projects"] == 1
    assert stand_in.calls == []


@pytest.mark.parametrize("shape, kind", [(shape, kind) for shape in [(1, 1), (5, 7), (48, 64)]
                                          for kind in ("noise", "blob", "empty", "full")]
                         + [((300, 300), kind) for kind in ("blob", "empty", "full")])  # runs over 65536 values
def test_brush_rle_decodes_with_the_sdk_and_equals_its_encoder(shape, kind):
    rng = np.random.default_rng(0)
    mask = {"noise": rng.random(shape) > 0.5, "blob": rectangle(shape, 1),
            "empty": np.zeros(shape, bool), "full": np.ones(shape, bool)}[kind]
    ours = brush_rle(mask)
    decoded = decode_rle(bytes(ours)).reshape(shape + (4,))
    np.testing.assert_array_equal(decoded, np.repeat(mask[..., None], 4, axis=2) * 255)
    sdk = mask2rle(mask.astype(np.uint8) * 255)  # the sdk pads with a byte more at times
    assert sdk[:len(ours)] == ours and not any(sdk[len(ours):])
    np.testing.assert_array_equal(brush_mask(ours, shape[1], shape[0], "rle"), mask)


def test_brush_mask_reads_single_values_and_refuses_a_wrong_size():
    mask = np.zeros((3, 5), np.uint8)
    mask[1, 2] = 255
    sdk = mask2rle(np.repeat(mask, 1, axis=0))
    np.testing.assert_array_equal(brush_mask(sdk, 5, 3, "rle"), mask > 0)
    with pytest.raises(Exception, match=r"`rle`: holds 60 values, not 4 per pixel of 5x4"):
        brush_mask(sdk, 5, 4, "rle")


def test_predict_answers_brush_and_polygons_that_label_studio_validates(label_studio, monkeypatch):
    http, stand_in = client(label_studio, LEGACY, monkeypatch)
    tasks = [{"id": 3, "data": {"picture": "/data/upload/1/q1.png"}, "annotations": [], "predictions": []},
             {"id": 4, "data": {"picture": "/data/local-files/?d=dir/q2.png"}}]
    answer = predict(http, tasks, BOTH_CONFIG)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["results"]) == 2
    interface = LabelInterface(BOTH_CONFIG)
    for prediction, (w, h) in zip(body["results"], SIZES.values()):
        assert prediction["model_version"] == "imrseg-test" and prediction["score"] > 0
        assert interface.validate_prediction(prediction, return_errors=True) in (True, [])
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        assert [r["value"]["brushlabels"] for r in brushes] == [["cat"], ["dog"]]
        for k, region in enumerate(brushes):
            assert (region["original_width"], region["original_height"]) == (w, h)
            assert region["score"] == pytest.approx(0.5 + k / 10)
            drawn = decode_rle(bytes(region["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0
            # where the rectangles overlap the pixel goes to one class (the index mask)
            expected = rectangle((h, w), k) & ~(rectangle((h, w), 0) if k else np.zeros((h, w), bool))
            np.testing.assert_array_equal(drawn, expected)
        polygons = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
        for k, label in enumerate(["cat", "dog"]):
            canvas = np.zeros((h, w), np.uint8)
            for region in polygons:
                if region["value"]["polygonlabels"] == [label]:
                    xy = np.array(region["value"]["points"]) / 100 * (w, h)
                    cv2.fillPoly(canvas, [np.round(xy - 0.5).astype(np.int32)], 1)
            brush = decode_rle(bytes(brushes[k]["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0
            np.testing.assert_array_equal(canvas > 0, brush)
    # zero-shot: no supports configured, one call for both tasks, classes named by the labels
    (count, classes, steps), = stand_in.calls
    assert count == 2 and [(c.name, c.prompt, c.supports) for c in classes] == [("cat", "cat", ()), ("dog", "dog", ())]


def test_labels_alias_and_prompt_mapping(label_studio, monkeypatch):
    http, stand_in = client(label_studio, LEGACY, monkeypatch)
    http.post("/setup", json={"project": "2.1", "schema": BRUSH_CONFIG,
                              "extra_params": json.dumps({"prompts": {"Dog": "puppy"}})})
    answer = predict(http, [{"id": 1, "data": {"image": "/data/upload/1/q1.png"}}], project="2.1")
    labels = [r["value"]["brushlabels"] for r in answer.json()["results"][0]["result"]]
    assert labels == [["cat"], ["Dog"]]
    assert [(c.name, c.prompt) for c in stand_in.calls[0][1]] == [("cat", "cat"), ("Dog", "puppy")]


@pytest.mark.parametrize("config, message", [
    ("", "`label_config`: missing"),
    ("<View><Image", "`label_config`: not a labelling config (XML"),
    ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"/></View>', "no BrushLabels or PolygonLabels"),
    ('<View><Image name="i" value="$i"/><BrushLabels toName="i"><Label value="a"/></BrushLabels></View>',
     "<BrushLabels> has no name"),
    ('<View><Image name="i" value="$i"/><BrushLabels name="b"><Label value="a"/></BrushLabels></View>',
     "<BrushLabels name='b'> has no toName"),
    ('<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="x"><Label value="a"/></PolygonLabels>'
     '</View>', "toName='x', which is no <Image>"),
    ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"></BrushLabels></View>', "no <Label>"),
    ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"><Label/></BrushLabels></View>',
     "<Label> of <BrushLabels name='b'> has no value"),
])
def test_bad_configs_are_4xx_naming_the_field(label_studio, monkeypatch, config, message):
    http, _ = client(label_studio, LEGACY, monkeypatch)
    answer = predict(http, [{"id": 1, "data": {"image": "/data/upload/1/q1.png"}}], config)
    assert answer.status_code == 400 and message in answer.json()["error"]
    assert "\n" not in answer.json()["error"]
    answer = http.post("/setup", json={"project": "1.1", "schema": config})
    assert answer.status_code == 400 and answer.json()["error"].startswith("`schema`")


def test_bad_tasks_and_extra_params_are_named(label_studio, monkeypatch):
    http, _ = client(label_studio, LEGACY, monkeypatch)
    answer = predict(http, [{"id": 1, "data": {"photo": "x"}}])
    assert answer.status_code == 400 and answer.json()["error"].startswith("`tasks[0].data.image`: missing")
    answer = predict(http, [{"id": 1, "data": {"image": "/data/upload/1/nothing.png"}}])
    assert answer.status_code == 502 and "`tasks[0].data.image`" in answer.json()["error"]
    assert "404" in answer.json()["error"]
    answer = http.post("/setup", json={"project": "1.1", "schema": BRUSH_CONFIG, "extra_params": {"suports": {}}})
    assert answer.status_code == 400 and answer.json()["error"].startswith("`extra_params`: unknown key 'suports'")


@pytest.mark.parametrize("key", [LEGACY, REFRESH, ACCESS], ids=["legacy", "personal", "access"])
def test_images_fetched_every_way_label_studio_stores_them(label_studio, monkeypatch, key):
    http, _ = client(label_studio, key, monkeypatch)
    FakeLabelStudio.seen.clear()
    q1 = FakeLabelStudio.files["/data/upload/1/q1.png"]
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/q1.png"}},
             {"id": 2, "data": {"image": "upload/1/q1.png"}},
             {"id": 3, "data": {"image": "/data/local-files/?d=dir/q2.png"}},
             {"id": 4, "data": {"image": "s3://bucket/q1.png"}},
             {"id": 5, "data": {"image": f"{label_studio}/data/upload/1/q1.png"}},
             {"id": 6, "data": {"image": "data:image/png;base64," + base64.b64encode(q1).decode()}}]
    answer = predict(http, tasks)
    assert answer.status_code == 200, answer.text
    sizes = [(r["result"][0]["original_width"], r["result"][0]["original_height"]) for r in answer.json()["results"]]
    assert sizes == [SIZES["q1.png"]] * 2 + [SIZES["q2.png"]] + [SIZES["q1.png"]] * 3
    header = f"Token {LEGACY}" if key == LEGACY else f"Bearer {ACCESS}"
    assert ("/bucket/q1.png", None) in FakeLabelStudio.seen  # the bucket never sees the key
    assert all(auth == header for path, auth in FakeLabelStudio.seen if not path.startswith("/bucket/"))


@pytest.mark.parametrize("key, expected", [
    (None, "LABEL_STUDIO_API_KEY is not set"),
    ("wrong", "Label Studio refused LABEL_STUDIO_API_KEY (401 for http"),
    (jwt({"token_type": "refresh", "exp": time.time() + 60, "x": 1}), "refused the personal access token (401"),
], ids=["missing", "wrong", "wrong-personal"])
def test_a_missing_or_wrong_key_is_one_line_in_the_answer_and_the_log(label_studio, monkeypatch, caplog, key,
                                                                      expected):
    http, _ = client(label_studio, key, monkeypatch)
    answer = predict(http, [{"id": 1, "data": {"image": "/data/upload/1/q1.png"}}])
    assert answer.status_code == 502 and expected in answer.json()["error"]
    assert "\n" not in answer.json()["error"] and "Traceback" not in caplog.text
    assert any(expected in r.getMessage() for r in caplog.records)


def brush_annotation(annotation_id, label, mask) -> dict:
    h, w = mask.shape
    return {"id": annotation_id, "was_cancelled": False, "result": [
        {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": w, "original_height": h,
         "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}]}


def test_supports_from_extra_params_annotated_tasks_and_the_webhook(label_studio, monkeypatch):
    http, stand_in = client(label_studio, LEGACY, monkeypatch)
    drawn = rectangle((48, 64), 2)
    FakeLabelStudio.tasks = [{"id": 9, "data": {"image": "/data/upload/1/q1.png"},
                              "annotations": [brush_annotation(90, "cat", drawn)]}]
    setup = http.post("/setup", json={"project": "5.1", "schema": BRUSH_CONFIG,
                                      "extra_params": {"supports": {"Dog": ["/support.png"]}}}).json()
    task = {"id": 1, "data": {"image": "/data/local-files/?d=dir/q2.png"}}
    first = predict(http, [task], project="5.1").json()
    cat, dog = stand_in.calls[-1][1]
    # the annotated task Label Studio holds is cat's support with its drawn mask
    assert cat.name == "cat" and len(cat.supports) == 1 and cat.supports[0].size == (64, 48)
    np.testing.assert_array_equal(cat.masks[0], drawn)
    # Dog's support is the extra parameter's image, its CAM (no mask)
    assert dog.name == "Dog" and dog.supports[0].size == (30, 20) and dog.masks is None
    assert first["results"][0]["model_version"] == first["model_version"] != setup["model_version"]

    # a new annotation through the webhook: a second support; deleting it takes it away
    other = rectangle((56, 40), 0)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 5, "label_config": BRUSH_CONFIG},
             "task": {"id": 11, "data": {"image": "/data/local-files/?d=dir/q2.png"}},
             "annotation": brush_annotation(91, "cat", other)}
    answer = http.post("/webhook", json=event)
    assert answer.status_code == 201 and answer.json()["status"] == "ok"
    predict(http, [task], project="5.1")
    cat = stand_in.calls[-1][1][0]
    assert [s.size for s in cat.supports] == [(64, 48), (40, 56)]
    np.testing.assert_array_equal(cat.masks[1], other)
    http.post("/webhook", json={**event, "action": "ANNOTATION_DELETED"})
    predict(http, [task], project="5.1")
    assert len(stand_in.calls[-1][1][0].supports) == 1
    assert http.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == "ignored"
    FakeLabelStudio.tasks = []


def test_an_odd_annotation_is_left_out_of_the_supports_not_the_predictions(label_studio, monkeypatch, caplog):
    http, stand_in = client(label_studio, LEGACY, monkeypatch)
    odd = brush_annotation(70, "cat", rectangle((48, 64), 1))
    odd["result"][0]["original_width"] = 65  # the RLE holds 64 x 48 pixels
    task = {"id": 7, "data": {"image": "/data/upload/1/q1.png"}, "annotations": [odd]}
    answer = predict(http, [task], project="6.1")
    assert answer.status_code == 200 and len(answer.json()["results"]) == 1
    assert stand_in.calls[-1][1][0].supports == ()
    assert any("task 7 left out of the supports: `annotation 70.result[0].value`: holds 12288 values" in r.getMessage()
               for r in caplog.records)
