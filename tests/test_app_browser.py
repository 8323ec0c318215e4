"""`imrseg app` driven in a real browser: headless Chromium (the system's) through Playwright,
against the real server on a folder of four tiny pictures with recipe weights. A person's
whole round is played with the mouse and the keys, and after each action the files on disk
and the rows of results.jsonl are checked: type a label, pick a support, run, see a mask on
every thumbnail, open one, step through the CLIP-CAM and the refinement step, paint a
correction, save it, accept another, use the corrected one as an example, run again (only what
is not accepted or corrected is recomputed), and a label that looks like HTML shows as text.

Set IMRSEG_APP_SCREENSHOT=1 to write the README's picture (docs/app.png) from this run."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import free_port, stop_process, write_image
from imrseg.studio import Workspace
from imrseg.outputs.palette import PALETTE

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium to drive (apt-get install chromium)")

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "app.png"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
SIZES = [(64, 48), (48, 64), (64, 48), (48, 64)]
NAMES = [f"img{i}.png" for i in range(len(SIZES))]
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def app_server(recipe_weight_files, tmp_path_factory):
    """`imrseg app FOLDER` as a person starts it, on a free port; yields (url, folder, out, process)."""
    base = tmp_path_factory.mktemp("app")
    folder, out = base / "photos", base / "labels"
    for seed, (name, size) in enumerate(zip(NAMES, SIZES)):
        write_image(folder / name, size, seed=seed)
    port, log_file = free_port(), base / "server.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "imrseg", "app", str(folder), "--out", str(out),
             "--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"],
             "--steps", "1", "--device", "cpu", "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.monotonic() + 300, False
        while not ready and process.poll() is None and time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
            except httpx.TransportError:
                pass
            if not ready:
                time.sleep(0.2)
        assert ready, log_file.read_text()
        yield url, folder, out, process
    finally:
        stop_process(process)
        print(log_file.read_text()[-4000:])  # shown when a test fails


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, app_server):
    url = app_server[0]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{url}/app/")
    tab.wait_for_selector("body[data-ready='true']")
    yield tab
    print("message line:", tab.text_content("#message"))  # shown when a test fails
    context.close()
    assert errors == [], errors  # no uncaught script error all along


def state(url: str) -> dict:
    return httpx.get(f"{url}/app/api/state", timeout=30).json()


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def reviews(out: Path) -> dict[str, str]:
    """Each query's file name -> its review as the last row about it records it."""
    latest = {}
    for row in rows(out):
        if row.get("type") == "query" and row.get("status") in ("done", "skipped"):
            latest[Path(row["query"]).name] = row.get("review") or "proposed"
    return latest


def mask_file(out: Path, name: str) -> Path:
    return out / name  # the queries are PNGs: the mask has the query's own name


def mask_of(out: Path, name: str) -> np.ndarray:
    return np.array(Image.open(mask_file(out, name)).convert("L"))


def tile(page, index: int):
    return page.locator(f"#grid .tile[data-id='{index}']")


def wait_tile_state(page, index: int, state_: str) -> None:
    page.wait_for_selector(f"#grid .tile[data-id='{index}'][data-state='{state_}']")


def wait_detail_state(page, state_: str) -> None:
    page.wait_for_selector(f"#detail-state[data-state='{state_}']")


def run_and_wait(page) -> None:
    page.evaluate("document.body.dataset.run = ''")
    page.click("#run")
    page.wait_for_selector("body[data-run='finished']")


def canvas_pixels(page) -> str:
    return page.evaluate("document.getElementById('detail-canvas').toDataURL()")


def drag(page, points) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


def stroke_region(shape, start, end, radius):
    """Pixels of an image of `shape` within `radius` of the segment start-end (pixel centres)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))


def test_the_page_reads_masks_as_the_server_writes_them(page):
    """Several classes: an indexed PNG in the VOC palette is class indices; one class: 0/255."""
    indexed = np.arange(24, dtype=np.uint8).reshape(4, 6)
    picture = Image.fromarray(indexed, mode="P")
    picture.putpalette(PALETTE)
    binary = np.where(indexed % 2 == 1, 255, 0).astype(np.uint8)
    decoded = []
    for mask in (picture, Image.fromarray(binary)):
        data = io.BytesIO()
        mask.save(data, "PNG")
        decoded.append(page.evaluate("""async ([bytes, w, h]) => {
            const options = {colorSpaceConversion: "none", premultiplyAlpha: "none"};
            const source = await createImageBitmap(new Blob([new Uint8Array(bytes)]), options);
            return Array.from(decodeMask(source, w, h));
        }""", [list(data.getvalue()), 6, 4]))
    assert decoded[0] == indexed.ravel().tolist()
    assert decoded[1] == (binary.ravel() // 255).tolist()


def test_labels_file_names_and_errors_show_as_text(page, app_server, tmp_path):
    """Runs first: a class with an HTML-like label gets files as supports, then goes."""
    url = app_server[0]
    hostile = "<img src=x onerror=\"document.body.dataset.owned='yes'\">"
    page.fill("#new-label", hostile)
    page.press("#new-label", "Enter")
    page.wait_for_selector("#classes .class[data-index='0']")
    assert [c["label"] for c in state(url)["classes"]] == [hostile]
    hostile_class = page.locator("#classes .class").nth(0)
    assert hostile_class.locator(".label-input").input_value() == hostile
    hostile_class.locator(".pick").click()
    assert hostile in page.text_content("#pick-hint")
    hostile_class.locator(".pick").click()

    # Files dropped on a class: an image and NAME_mask.png, its drawn mask.
    write_image(tmp_path / "dog.png", (40, 30), seed=9)
    drawn = np.zeros((30, 40), np.uint8)
    drawn[5:20, 10:30] = 255
    Image.fromarray(drawn).save(tmp_path / "dog_mask.png")
    dropped = page.evaluate_handle("""files => {
        const data = new DataTransfer();
        for (const [name, bytes] of files) data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
        return data;
    }""", [[name, list((tmp_path / name).read_bytes())] for name in ("dog.png", "dog_mask.png")])
    hostile_class.dispatch_event("drop", {"dataTransfer": dropped})
    page.wait_for_selector("#classes .class[data-index='0'] .chip[data-kind='upload'][data-drawn='true']")
    (upload,) = state(url)["classes"][0]["supports"]
    assert upload["kind"] == "upload" and upload["drawn"] is True and upload["name"] == "dog.png"

    # A file chosen with "files…" that the server refuses: its error, naming the file, shown as text.
    bad = {"name": "<b>bad</b>.png", "mimeType": "image/png", "buffer": b"not a picture"}
    expected = httpx.post(f"{url}/app/api/upload", files={"file": (bad["name"], bad["buffer"], bad["mimeType"])},
                          timeout=30)
    assert expected.status_code == 400
    with page.expect_file_chooser() as chooser:
        hostile_class.locator(".upload").click()
    chooser.value.set_files(bad)
    page.wait_for_selector("#message[data-kind='error']:not([hidden])")
    assert page.text_content("#message") == expected.json()["error"]
    assert page.locator("#message *").count() == 0
    assert len(state(url)["classes"][0]["supports"]) == 1

    page.wait_for_timeout(300)
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("document.body.dataset.owned") is None

    hostile_class.locator(".class-head .remove").click()
    page.wait_for_selector("#classes [data-testid='no-class']")
    assert state(url)["classes"] == []


def test_a_person_labels_a_folder_in_the_browser(page, app_server, tmp_path):
    url, folder, out, _ = app_server
    assert page.locator("#grid .tile").count() == 4
    assert page.locator("#grid .tile[data-state='none']").count() == 4
    assert page.text_content("#folder") == str(folder)

    # A label, typed.
    page.fill("#new-label", "cat")
    page.press("#new-label", "Enter")
    page.wait_for_selector("#classes .class[data-label='cat']")
    assert [c["label"] for c in state(url)["classes"]] == ["cat"]
    colour = state(url)["classes"][0]["color"]
    assert page.eval_on_selector("#classes .swatch", "e => getComputedStyle(e).backgroundColor") == \
        "rgb({}, {}, {})".format(*(int(colour[k:k + 2], 16) for k in (1, 3, 5)))

    # A support, picked in the grid.
    page.click("#classes .class[data-label='cat'] .pick")
    tile(page, 0).click()
    page.wait_for_selector("#classes .chip[data-kind='image'][data-ref='0']")
    page.click("#classes .class[data-label='cat'] .pick")
    assert [(s["kind"], s["ref"]) for s in state(url)["classes"][0]["supports"]] == [("image", 0)]
    assert page.is_hidden("#detail")  # picking did not open the image

    # Run: a mask on every tile, streamed to the page; on disk and in results.jsonl.
    thumbs = [tile(page, i).locator("img").get_attribute("src") for i in range(4)]
    run_and_wait(page)
    for i in range(4):
        wait_tile_state(page, i, "proposed")
    page.wait_for_selector("[data-testid='count-proposed'][data-count='4']")
    for name, (w, h) in zip(NAMES, SIZES):
        assert Image.open(mask_file(out, name)).size == (w, h)
    assert reviews(out) == {name: "proposed" for name in NAMES}
    assert [r for r in rows(out) if r.get("type") == "run"]
    # Each thumbnail was fetched again, its mask tinted in (a new rev), and shows.
    for i in range(4):
        src = tile(page, i).locator("img").get_attribute("src")
        assert src != thumbs[i] and src.endswith(f"rev={tile(page, i).get_attribute('data-rev')}")
    page.wait_for_function("() => [...document.querySelectorAll('#grid .tile img')].every(i => i.complete && i.naturalWidth)")

    # Open one: the CLIP-CAM, refinement step 1, then the mask, on the canvas.
    tile(page, 1).click()
    wait_detail_state(page, "proposed")
    assert page.text_content("#detail-name") == NAMES[1]
    slider = page.locator("#step-slider")
    slider.focus()
    seen = {}
    page.keyboard.press("Home")
    page.wait_for_selector("#step-label[data-kind='cam']")
    seen["cam"] = canvas_pixels(page)
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#step-label[data-kind='step']")
    assert page.text_content("#step-label") == "step 1 of 1"
    seen["step"] = canvas_pixels(page)
    page.keyboard.press("End")
    page.wait_for_selector("#step-label[data-kind='mask']")
    seen["mask"] = canvas_pixels(page)
    assert seen["cam"] != seen["step"]
    assert seen["step"] == seen["mask"]  # one refinement step: its mask is the final one
    stem = NAMES[1][:-4]
    assert list(out.glob(f"{stem}*cam.png")) and list(out.glob(f"{stem}*step1.png"))

    # Paint a correction with the mouse: an eraser stroke, a brush stroke, and one undone.
    before = mask_of(out, NAMES[1])
    h, w = before.shape
    box = page.locator("#detail-canvas").bounding_box()
    scale = w / box["width"]
    assert abs(h / box["height"] - scale) < 0.05  # the canvas keeps the image's shape
    page.keyboard.press("]")
    assert page.text_content("#brush-size-text") == "30 px"
    page.keyboard.press("[")
    assert page.text_content("#brush-size-text") == "24 px"
    page.eval_on_selector("#brush-size", "e => { e.value = 40; e.dispatchEvent(new Event('input')); }")
    radius = 40 / 2 * scale

    def at(fx, fy):
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    def image_point(point):
        return (point[0] - box["x"]) * scale, (point[1] - box["y"]) * scale

    page.keyboard.press("x")  # eraser
    erase = [at(0.1, 0.25), at(0.9, 0.25)]
    drag(page, erase)
    page.keyboard.press("b")  # brush
    paint = [at(0.1, 0.75), at(0.9, 0.75)]
    drag(page, paint)
    undone = canvas_pixels(page)
    drag(page, [at(0.5, 0.05), at(0.5, 0.95)])  # a stroke across both, then taken back
    assert canvas_pixels(page) != undone
    page.keyboard.press("Control+z")
    assert canvas_pixels(page) == undone
    page.click("#save")
    wait_detail_state(page, "corrected")
    wait_tile_state(page, 1, "corrected")
    after = mask_of(out, NAMES[1])
    assert set(np.unique(after)) <= {0, 255}
    erased = stroke_region(after.shape, *map(image_point, erase), radius)
    painted = stroke_region(after.shape, *map(image_point, paint), radius)
    assert (after[erased < radius - 1] == 0).all()
    assert (after[painted < radius - 1] == 255).all()
    untouched = (erased > radius + 1) & (painted > radius + 1)
    assert untouched.any() and (after[untouched] == before[untouched]).all()
    assert (after != before).any()
    assert reviews(out)[NAMES[1]] == "corrected"

    # Accept the next one with the key.
    page.keyboard.press("n")
    page.wait_for_selector("#detail[data-id='2']")
    page.locator("#new-label").press_sequentially("nap")  # keys typed into a field are text, not commands
    assert page.input_value("#new-label") == "nap"
    page.wait_for_timeout(300)  # time for a key taken as a command to show
    assert page.get_attribute("#detail", "data-id") == "2" and tile(page, 2).get_attribute("data-state") == "proposed"
    page.fill("#new-label", "")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("a")
    wait_detail_state(page, "accepted")
    wait_tile_state(page, 2, "accepted")
    assert reviews(out)[NAMES[2]] == "accepted"

    # Reject the last one; the arrow keys go back.
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#detail[data-id='3']")
    page.keyboard.press("r")
    wait_detail_state(page, "rejected")
    wait_tile_state(page, 3, "rejected")
    assert reviews(out)[NAMES[3]] == "rejected"
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector("#detail[data-id='2']")

    # The corrected one becomes an example: a support with its drawn mask.
    page.keyboard.press("p")
    page.wait_for_selector("#detail[data-id='1']")
    page.keyboard.press("e")
    page.wait_for_selector("#classes .chip[data-drawn='true']")
    supports = state(url)["classes"][0]["supports"]
    assert len(supports) == 2 and [s["drawn"] for s in supports] == [False, True]

    # Run again: only what is neither accepted nor corrected is computed.
    kept = {name: mask_file(out, name).read_bytes() for name in NAMES[1:3]}
    headers = len([r for r in rows(out) if r.get("type") == "run"])
    run_and_wait(page)
    all_rows = rows(out)
    starts = [k for k, r in enumerate(all_rows) if r.get("type") == "run"]
    assert len(starts) == headers + 1
    computed = sorted(Path(r["query"]).name for r in all_rows[starts[-1]:]
                      if r.get("type") == "query" and r.get("status") == "done")
    assert computed == [NAMES[0], NAMES[3]]
    assert {name: mask_file(out, name).read_bytes() for name in NAMES[1:3]} == kept
    assert reviews(out) == {NAMES[0]: "proposed", NAMES[1]: "corrected", NAMES[2]: "accepted", NAMES[3]: "proposed"}
    assert [tile(page, i).get_attribute("data-state") for i in range(4)] == \
        ["proposed", "corrected", "accepted", "proposed"]
    page.wait_for_selector("[data-testid='count-corrected'][data-count='1']")
    page.wait_for_selector("[data-testid='count-accepted'][data-count='1']")

    # Sorted by score, the doubtful first; filtered by state.
    page.select_option("#order", "score")
    page.wait_for_selector("#grid[data-order='score'][data-filter='all']")
    scores = [float(tile.get_attribute("data-score")) for tile in page.locator("#grid .tile").all()]
    assert len(scores) == 4 and scores == sorted(scores)
    page.select_option("#state-filter", "accepted")
    page.wait_for_selector("#grid[data-order='score'][data-filter='accepted']")
    assert [t.get_attribute("data-id") for t in page.locator("#grid .tile").all()] == ["2"]
    assert page.text_content("#page-info") == "1–1 of 1"
    page.select_option("#state-filter", "all")
    page.wait_for_selector("#grid[data-order='score'][data-filter='all']")
    page.select_option("#order", "name")
    page.wait_for_selector("#grid[data-order='name'][data-filter='all']")
    assert [t.get_attribute("data-id") for t in page.locator("#grid .tile").all()] == ["0", "1", "2", "3"]

    # The page as the README shows it: masks in the grid, one image open.
    tile(page, 3).click()
    page.wait_for_selector("#detail[data-id='3']")
    page.wait_for_selector("#step-label[data-kind='mask']")
    page.wait_for_function("() => [...document.querySelectorAll('#grid .tile img')].every(i => i.complete)")
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot))
    assert Image.open(shot).size == (1280, 800)
    if os.environ.get("IMRSEG_APP_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
    page.keyboard.press("Escape")
    assert page.is_hidden("#detail")


def test_a_killed_server_keeps_the_work_it_saved(app_server):
    """After the round above, SIGKILL: reopening the folder shows every review and
    correction the page saved, and the classes with their example."""
    _, folder, out, process = app_server
    before = reviews(out)
    corrected = mask_file(out, NAMES[1]).read_bytes()
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    workspace = Workspace(folder, out).open()  # the lock died with the server
    try:
        assert {name: workspace.state_of(i) for i, name in enumerate(workspace.names)} == before
        assert [(s.kind, s.ref) for s in workspace.classes[0].supports][-1][0] == "example"
        assert mask_file(out, NAMES[1]).read_bytes() == corrected
    finally:
        workspace.close()
