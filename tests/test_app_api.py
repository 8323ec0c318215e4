"""`imrseg app`'s back end through its HTTP routes, with recipe weights and one step:
a run writes what `imrseg segment` writes (the same masks, bit for bit), each image
announced as it is done; reviews, corrections and examples become rows and files as
they happen; a second run recomputes only what is not accepted; export and gallery read
the folder; reopening shows the work; and every bad request is a 4xx naming its field.
(The page itself, and a server killed after it saved the work: test_app_browser.)"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from conftest import write_image
from imrseg.cli import main
from imrseg.errors import ImrsegError, InputError
from imrseg.outputs.coco import export_coco
from imrseg.outputs.gallery import build_gallery
from imrseg.predictor import Predictor
from imrseg.runner import OutputOptions, RunSettings, run_folder
from imrseg.serve.app import create_app
from imrseg.serve.limits import Limits
from imrseg.serve.service import Segmenter
from imrseg.studio import Runner, Workspace, page_hosts, router

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(64, 48), (48, 64), (56, 40), (40, 56)]
HOST = "127.0.0.1:9999"


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, size in enumerate(SIZES):
        write_image(root / f"img{i}.png", size, seed=i)
    return root


@pytest.fixture(scope="module")
def predictor(recipe_weight_files):
    return Predictor.from_pretrained(recipe_weight_files["weights"], recipe_weight_files["clip"], device="cpu",
                                     steps=1)


@pytest.fixture(scope="module")
def segmenter(predictor):
    segmenter = Segmenter(predictor, batch_size=2, max_wait_ms=5, timeout_s=600)
    yield segmenter
    segmenter.close()


class App:
    """A workspace served in-process (TestClient), as `imrseg app` serves it."""

    def __init__(self, folder: Path, out: Path, segmenter: Segmenter, token: str | None = None, batch_size: int = 2):
        self.workspace = Workspace(folder, out).open()
        self.runner = Runner(self.workspace, segmenter, batch_size=batch_size)
        limits = Limits(timeout_s=600)
        app: FastAPI = create_app(segmenter, limits, token=token)
        app.include_router(router(self.workspace, self.runner, segmenter, limits, frozenset({HOST})))
        self.client = TestClient(app, base_url=f"http://{HOST}")
        self.events: list[tuple[str, dict]] = []
        self.workspace.listeners.append(lambda event, data: self.events.append((event, data)))

    def run(self, **body) -> dict:
        answer = self.client.post("/app/api/run", json=body or None)
        assert answer.status_code == 202, answer.text
        self.runner.join(600)
        return answer.json()

    def close(self) -> None:
        self.runner.join(600)
        self.workspace.close()


@pytest.fixture(scope="module")
def labelled(folder, segmenter, tmp_path_factory):
    """One app session: a class with image 0 as support, one run, one query a forward
    (as the segment run it is compared with: batches of other sizes agree to 1e-4 only)."""
    out = tmp_path_factory.mktemp("labels") / "out"
    app = App(folder, out, segmenter, batch_size=1)
    answer = app.client.put("/app/api/classes", json={"classes": [
        {"label": "dog", "supports": [{"kind": "image", "ref": 0}]}]})
    assert answer.status_code == 200, answer.text
    assert app.run() == {"run": 1, "total": 4}
    yield app, out
    app.close()


def test_a_run_writes_what_segment_writes_streamed_image_by_image(labelled, folder, recipe_weight_files, tmp_path):
    app, out = labelled
    results = [data for event, data in app.events if event == "result"]
    assert sorted(r["id"] for r in results) == [0, 1, 2, 3] and all(r["state"] == "proposed" for r in results)
    progress = [data["done"] for event, data in app.events if event == "progress"]
    assert progress == [1, 2, 3, 4]  # one event per mask as it is written, not one at the end
    assert [data["status"] for event, data in app.events if event == "run"] == ["started", "finished"]
    listing = app.client.get("/app/api/images", params={"order": "score"}).json()
    assert listing["total"] == 4 and [it["state"] for it in listing["items"]] == ["proposed"] * 4
    scores = [it["score"] for it in listing["items"]]
    assert scores == sorted(scores)  # the doubtful first
    written = [r for r in rows(out) if r["type"] == "query"]
    assert len(written) == 4 and {r["review"] for r in written} == {"proposed"}

    # `imrseg segment` with the same support, steps and files: the same masks, byte for byte.
    reference = tmp_path / "segment"
    run_folder(RunSettings(queries=(folder,), out=reference, label="dog", supports=(folder / "img0.png",),
                           weights=recipe_weight_files["weights"], clip_weights=recipe_weight_files["clip"],
                           steps=1, device="cpu", batch_size=1,
                           outputs=OutputOptions(save_cam=True, save_steps=True)))
    for i in range(4):
        for suffix in (".png", "_cam.png", "_step1.png"):
            assert (out / f"img{i}{suffix}").read_bytes() == (reference / f"img{i}{suffix}").read_bytes()
        assert (out / f"img{i}_overlay.jpg").is_file()
        detail = app.client.get(f"/app/api/detail/{i}").json()
        assert (detail["width"], detail["height"]) == SIZES[i]
        assert detail["steps"] == 1 and detail["cam"] is True and detail["classes"][0]["label"] == "dog"
        assert app.client.get(f"/app/api/mask/{i}").content == (out / f"img{i}.png").read_bytes()
        assert app.client.get(f"/app/api/step/{i}/1").content == (out / f"img{i}_step1.png").read_bytes()
        assert app.client.get(f"/app/api/cam/{i}").content == (out / f"img{i}_cam.png").read_bytes()
        thumb = Image.open(io.BytesIO(app.client.get(f"/app/api/thumb/{i}").content))
        assert thumb.format == "JPEG" and thumb.size == SIZES[i]  # under 256 px: as large as the image
    image = Image.open(io.BytesIO(app.client.get("/app/api/image/1").content))
    assert image.size == SIZES[1]


def test_reviews_corrections_and_examples_are_saved_and_teach_the_next_run(labelled, folder):
    app, out = labelled
    client = app.client
    assert client.post("/app/api/review/1", json={"state": "accepted"}).json()["state"] == "accepted"
    assert client.post("/app/api/review/2", json={"state": "rejected"}).json()["state"] == "rejected"
    painted = np.zeros((48, 64), np.uint8)
    painted[10:30, 8:40] = 255
    before = (out / "img0_overlay.jpg").read_bytes()
    answer = client.post("/app/api/correct/0", files={"mask": ("m.png", png(painted), "image/png")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "corrected"
    assert answer.json()["fraction"] == pytest.approx((painted > 0).mean())
    assert np.array_equal(np.asarray(Image.open(out / "img0.png")) > 0, painted > 0)
    assert (out / "img0_overlay.jpg").read_bytes() != before
    latest = {r["file_name"]: r for r in rows(out) if r["type"] == "query"}
    assert [latest[f"img{i}.png"]["review"] for i in range(4)] == ["corrected", "accepted", "rejected", "proposed"]

    with pytest.raises(ImrsegError, match="another imrseg run"):  # the app holds the folder: exports wait for it to close
        export_coco(out)

    state = client.post("/app/api/example/0").json()
    (dog,) = state["classes"]
    assert [(s["kind"], s["drawn"]) for s in dog["supports"]] == [("example", True)]  # it replaced the plain pick
    (example,) = list((out / ".examples").iterdir())
    assert np.array_equal(np.asarray(Image.open(example)) > 0, painted > 0)

    count = len(rows(out))
    assert app.run() == {"run": 2, "total": 2}  # the rejected and the proposed: not the accepted, not the corrected
    new = [r for r in rows(out)[count:] if r["type"] == "query"]
    assert sorted(r["file_name"] for r in new) == ["img2.png", "img3.png"]
    header = next(r for r in rows(out)[count:] if r["type"] == "run")
    assert header["classes"][0]["support_masks"] == [str(out / ".examples" / example.name)]
    assert np.array_equal(np.asarray(Image.open(out / "img0.png")) > 0, painted > 0)  # kept


def test_reopening_shows_the_work_and_the_exports_read_it(labelled, folder, segmenter):
    app, out = labelled
    app.client.post("/app/api/review/3", json={"state": "rejected"})
    app.close()
    try:
        document = json.loads(export_coco(out).read_text())
        assert sorted(im["file_name"] for im in document["images"]) == ["img0.png", "img1.png", "img2.png"]
        page = build_gallery(out).read_text()
        for review in ("corrected", "accepted", "rejected", "proposed"):  # each card shows its review
            assert f'"review": "{review}"' in page
        again = App(folder, out, segmenter)
        try:
            state = again.client.get("/app/api/state").json()
            assert state["counts"] == {"none": 0, "proposed": 1, "accepted": 1, "corrected": 1, "rejected": 1}
            assert [s["kind"] for s in state["classes"][0]["supports"]] == ["example"]
            assert again.client.get("/app/api/detail/0").json()["state"] == "corrected"
        finally:
            again.close()
    finally:
        app.workspace = Workspace(folder, out).open()  # the fixture closes it


def test_bad_requests_are_answered_4xx_naming_the_field(folder, segmenter, tmp_path):
    app = App(folder, tmp_path / "out", segmenter)
    client = app.client
    try:
        def error(answer, status: int, *words: str) -> None:
            assert answer.status_code == status, answer.text
            message = answer.json()["error"]
            assert "\n" not in message and all(w in message for w in words), message

        error(client.get("/app/api/detail/9"), 404, "id")
        error(client.get("/app/api/mask/0"), 404, "no mask")
        error(client.get("/app/api/images", params={"limit": 100000}), 422, "limit")
        error(client.post("/app/api/run"), 400, "classes")
        error(client.put("/app/api/classes", json={"classes": [
            {"label": "dog", "supports": [{"kind": "image", "ref": 7}]}]}), 400, "classes[0].supports[0].ref")
        error(client.put("/app/api/classes", json={"classes": [
            {"label": "dog", "supports": [{"kind": "upload", "ref": "../../etc/passwd"}]}]}), 400, "ref")
        error(client.put("/app/api/classes", json={"classes": [{"label": "a"}, {"label": "a"}]}), 400, "classes", "same class")
        error(client.put("/app/api/classes", json={"classes": [{"label": ""}]}), 422, "label")
        error(client.post("/app/api/review/0", json={"state": "accepted"}), 400, "no mask yet")
        error(client.post("/app/api/review/0", json={"state": "great"}), 422, "state")
        error(client.post("/app/api/upload", files={"file": ("x.png", b"not an image")}), 400, "file", "x.png")
        error(client.get("/app/api/state", headers={"host": "evil.example:9999"}), 403, "host")
        error(client.post("/app/api/stop", headers={"origin": "http://evil.example"}), 403, "origin")
        error(client.get("/app/static/../workspace.py"), 404)

        support = (folder / "img1.png").read_bytes()
        upload = client.post("/app/api/upload", files={"file": ("s.png", support)}).json()
        assert upload["kind"] == "upload" and not upload["drawn"]
        error(client.post("/app/api/upload", files={"file": ("s.png", support),
                                                      "mask": ("m.png", png(np.ones((5, 5)) * 255))}), 400, "mask")
        assert client.put("/app/api/classes", json={"classes": [
            {"label": "dog", "supports": [upload]}]}).status_code == 200
        started = client.post("/app/api/run")
        assert started.status_code == 202, started.text
        error(client.post("/app/api/run"), 409, "run")
        app.runner.join(600)
        assert client.get("/app/api/state").json()["counts"]["proposed"] == 4
        error(client.post("/app/api/correct/0", files={"mask": ("m.png", png(np.ones((5, 5))))}), 400, "mask")
        error(client.post("/app/api/correct/0", files={"mask": ("m.png", b"junk")}), 400, "mask")
        assert client.post("/app/api/review/0", json={"state": "accepted"}).status_code == 200
        error(client.put("/app/api/classes", json={"classes": [{"label": "cat"}]}), 400, "accepted")
        error(client.get("/app/api/step/0/2"), 404, "step 2")
        error(client.get("/app/api/cam/0", params={"label": "cat"}), 400, "label")
    finally:
        app.close()


def test_a_page_opened_with_the_token_gets_a_cookie_and_nothing_else_gets_in(folder, segmenter, tmp_path):
    app = App(folder, tmp_path / "out", segmenter, token="s3cret;=x")
    client = app.client
    try:
        assert client.get("/app/api/state").status_code == 401
        assert client.get("/app/", params={"token": "wrong"}).status_code == 401
        opened = client.get("/app/", params={"token": "s3cret;=x"}, follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/app/"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        assert client.get("/app/api/state").status_code == 200  # the client keeps the cookie
        client.cookies.clear()
        assert client.get("/app/api/state").status_code == 401
        assert client.get("/app/api/state", headers={"authorization": "Bearer s3cret;=x"}).status_code == 200
    finally:
        app.close()


def test_only_this_machines_names_on_loopback_any_name_behind_a_token():
    assert page_hosts("127.0.0.1", 9090) == {"127.0.0.1:9090", "localhost:9090", "[::1]:9090"}
    assert "localhost:8000" in page_hosts("localhost", 8000)
    assert page_hosts("0.0.0.0", 9090) is None  # reached by names not known here; the token guards it


def test_one_app_per_output_folder(folder, segmenter, tmp_path):
    app = App(folder, tmp_path / "out", segmenter)
    try:
        with pytest.raises(ImrsegError, match="another imrseg run"):
            Workspace(folder, tmp_path / "out").open()
    finally:
        app.close()
    with pytest.raises(InputError, match="not a folder"):
        Workspace(tmp_path / "missing", tmp_path / "out2").open()


def test_odd_names_an_out_inside_the_folder_and_a_changed_image(segmenter, tmp_path):
    """A name that is not UTF-8 is shown escaped, never a failed answer; the output
    folder inside FOLDER is not read as images; an image changed after its mask was
    made has no mask until it is run again (a stale mask is never shown as its own)."""
    folder = tmp_path / "photos"
    write_image(folder / "a.png", (40, 30), seed=1)
    odd = write_image(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), (30, 40), seed=2)
    app = App(folder, folder / "labels", segmenter)
    try:
        client = app.client
        assert client.put("/app/api/classes", json={"classes": [{"label": "cup"}]}).status_code == 200
        assert app.run() == {"run": 1, "total": 2}
        listing = client.get("/app/api/images").json()
        assert [it["name"] for it in listing["items"]] == ["a.png", "caf\\udce9.png"]
        assert [it["state"] for it in listing["items"]] == ["proposed", "proposed"]
        assert client.get("/app/api/detail/1").status_code == 200
        assert client.post("/app/api/review/0", json={"state": "accepted"}).status_code == 200
        assert client.post("/app/api/review/1", json={"state": "accepted"}).status_code == 200
    finally:
        app.close()
    write_image(odd, (30, 40), seed=3)  # another picture under the same name
    os.utime(odd, ns=(1, 1))
    app = App(folder, folder / "labels", segmenter)
    try:
        assert [it["state"] for it in app.client.get("/app/api/images").json()["items"]] == ["accepted", None]
        assert app.client.get("/app/api/mask/1").status_code == 404
        assert app.run() == {"run": 1, "total": 1}  # the changed one only: accepted before, but of another picture
        assert [app.workspace.state_of(i) for i in range(2)] == ["accepted", "proposed"]
    finally:
        app.close()


def test_the_command_refuses_bad_flags_in_one_line_before_any_model_loads(folder, tmp_path, monkeypatch, capsys):
    """Each a one-line error naming the flag, exit 2, and no output folder made; the
    weights named do not exist, so a command that got as far as loading would say so."""
    monkeypatch.delenv("IMRSEG_TOKEN", raising=False)
    (tmp_path / "empty").mkdir()
    with socket_listening() as port:
        cases = (([folder, "--host", "0.0.0.0"], "--token"), ([folder, "--port", "0"], "--port"),
                 ([folder, "--port", port], "--port"), ([tmp_path / "missing"], "FOLDER"),
                 ([tmp_path / "empty"], "no images"), ([folder, "--batch-size", "0"], "--batch-size"))
        for flags, named in cases:
            out = tmp_path / "out"
            monkeypatch.setattr(sys, "argv", ["imrseg", "app", *map(str, flags), "--out", str(out),
                                              "--weights", str(tmp_path / "no-such.pt")])
            with pytest.raises(SystemExit) as exit_:
                main()
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and err.count("\n") == 1 and named in err, (flags, err)
            assert not out.exists()


@contextlib.contextmanager
def socket_listening():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]
