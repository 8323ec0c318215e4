"""The real round trip with Label Studio: start it on 127.0.0.1 (SQLite in a temporary
folder, a user and a legacy token enabled for its organisation), create a BrushLabels
project through label-studio-sdk, upload three small images, connect `imrseg serve`
(recipe weights, one step, a support image inside its --root given as the connection's
extra parameter) as the ML backend, retrieve predictions, and check that each decodes
to the mask `imrseg segment` writes for that image.

Label Studio refuses backends on loopback addresses unless told (USE_DEFAULT_BANNED_SUBNETS,
SSRF_PROTECTION_ENABLED). Label Studio lives in its own virtual environment: IMRSEG_LABEL_STUDIO is the path to
its `label-studio` executable (.ci/run installs it there when it can); without it this
test is skipped."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import free_port, stop_process, write_image

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLE = os.environ.get("IMRSEG_LABEL_STUDIO")
USER, PASSWORD, TOKEN = "imrseg@example.com", "imrseg-test-password", "imrseg0test0token0123456789"
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""
SIZES = {"a.png": (64, 48), "b.png": (40, 56), "c.png": (72, 72)}

pytestmark = pytest.mark.skipif(
    not EXECUTABLE or not Path(EXECUTABLE).is_file(),
    reason="no Label Studio: set IMRSEG_LABEL_STUDIO to the `label-studio` executable of its own venv "
           "(pip install label-studio==1.23.2 there), or run .ci/run with IMRSEG_CI_LABEL_STUDIO=1")


def wait_for(url: str, process: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer in {seconds} s: {log.read_text(errors='replace')[-3000:]}")


def started(command: list, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_label_studio_predictions_are_the_masks_segment_writes(tmp_path, recipe_weight_files):
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.converter.brush import decode_rle

    images = tmp_path / "images"
    for i, (name, size) in enumerate(SIZES.items()):
        write_image(images / name, size, seed=i)
    root = tmp_path / "root"
    write_image(root / "support.png", (60, 50), seed=7)

    ls_port, serve_port = free_port(), free_port()
    ls_url, serve_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{serve_port}"
    ls_env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
              "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
              "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
              "SSRF_PROTECTION_ENABLED": "false", "USE_DEFAULT_BANNED_SUBNETS": "false"}
    ls_log = tmp_path / "label-studio.log"
    label_studio = started([EXECUTABLE, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(ls_port),
                            "--data-dir", str(tmp_path / "ls-data"), "--username", USER, "--password", PASSWORD,
                            "--user-token", TOKEN, "--enable-legacy-api-token"], ls_env, ls_log)
    serve_log = tmp_path / "serve.log"
    serve = started([sys.executable, "-m", "imrseg", "serve", "--port", str(serve_port),
                     "--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"],
                     "--device", "cpu", "--steps", "1", "--root", str(root)],
                    {**os.environ, "PYTHONPATH": str(ROOT), "LABEL_STUDIO_URL": ls_url,
                     "LABEL_STUDIO_API_KEY": TOKEN}, serve_log)
    try:
        wait_for(f"{ls_url}/health", label_studio, 600, ls_log)  # its first start migrates the database
        wait_for(f"{serve_url}/health", serve, 240, serve_log)
        ls = LabelStudio(base_url=ls_url, api_key=TOKEN)
        project = ls.projects.create(title="imrseg round trip", label_config=CONFIG)
        auth = {"Authorization": f"Token {TOKEN}"}
        files = [(name, (name, (images / name).read_bytes(), "image/png")) for name in SIZES]  # a key each
        answer = httpx.post(f"{ls_url}/api/projects/{project.id}/import", headers=auth, files=files, timeout=60)
        assert answer.status_code == 201, answer.text
        ls.ml.create(url=serve_url, project=project.id, title="imrseg",
                     extra_params={"supports": {"cat": ["support.png"]}})
        tasks = list(ls.tasks.list(project=project.id))
        assert len(tasks) == len(SIZES)
        answer = httpx.post(f"{ls_url}/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                                 "project": project.id},
                            json={"selectedItems": {"all": True, "excluded": []}}, headers=auth, timeout=120)
        assert answer.status_code == 200, answer.text

        out = tmp_path / "segment"
        subprocess.run([sys.executable, "-m", "imrseg", "segment", "--label", "cat", "--support",
                        str(root / "support.png"), "--query", str(images), "--out", str(out), "--steps", "1",
                        "--device", "cpu", "--weights", recipe_weight_files["weights"],
                        "--clip-weights", recipe_weight_files["clip"], "--quiet"],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=300)
        for task in tasks:
            name = next(n for n in SIZES if task.data["image"].endswith(n))
            expected = np.array(Image.open(out / name)) > 0
            predictions = ls.predictions.list(task=task.id)
            assert len(predictions) == 1, serve_log.read_text(errors="replace")[-3000:]
            prediction = predictions[0]
            assert prediction.model_version and prediction.model_version.startswith("imrseg-")
            regions = [r for r in prediction.result if r["type"] == "brushlabels"]
            drawn = np.zeros(expected.shape, bool)
            for region in regions:
                assert region["value"]["brushlabels"] == ["cat"] and 0 <= region["score"] <= 1
                h, w = region["original_height"], region["original_width"]
                drawn |= decode_rle(bytes(region["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0
            np.testing.assert_array_equal(drawn, expected, err_msg=name)
    finally:
        stop_process(serve)
        stop_process(label_studio)
