"""The output folder of `segment` and the commands that read it back (`export`,
`gallery`) through the one guard: nothing read or written outside the folder or
through a link, never a user's file replaced, every row of results.jsonl checked
(a crafted or damaged one is a one-line error naming the file), queries known by
where they are, and names shown as they are (HTML, Rich markup). The network is
test_run_safety's stand-in, so each case takes a fraction of a second."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import test_run_safety as safety
from conftest import write_image
from imrseg import guard
from imrseg.cli import app
from imrseg.errors import ImrsegError, InputError
from imrseg.outputs.coco import export_coco
from imrseg.outputs.gallery import build_gallery
from imrseg.outputs.masks import save_mask_png
from test_labelling import labelled_folder

loads = safety.loads  # the fixture: stand-in weights and network, in tmp_path
WEIGHTS = safety.WEIGHTS
segment = safety.segment


def weights_from(folder: Path) -> list:
    """WEIGHTS for a command run in another folder than the stand-in weights."""
    return [folder / arg if arg.endswith(".pt") else arg for arg in WEIGHTS]


def command(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def gallery_data(out: Path) -> dict:
    """The JSON the page embeds, parsed back out of it."""
    page = (out / "gallery.html").read_text()
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1])


def edit_rows(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ------------------------------------------------------------ defect 2: paths out of the folder
def test_crafted_outputs_outside_the_folder_are_never_read_or_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    save_mask_png(tmp_path / "x.png", np.ones((48, 64), bool))  # beside the folder
    Image.new("RGB", (64, 48), "red").save(tmp_path / "x_overlay.jpg")
    photo = write_image(out / "x.jpg", seed=5)  # the user's, inside it
    before = photo.read_bytes()
    (out / "results.jsonl").write_text(
        json.dumps({"type": "run", "label": "cat"}) + "\n"
        + json.dumps({"type": "query", "query": str(photo), "status": "done",
                      "outputs": ["../x_overlay.jpg", "../x.png"]}) + "\n")
    for args in (["gallery", out], ["export", out, "--coco"]):
        message = one_line_error(command(*args))
        assert "results.jsonl:2: field \"outputs\" must be a plain relative path" in message
    assert photo.read_bytes() == before
    assert sorted(os.listdir(out)) == [".imrseg.lock", "results.jsonl", "x.jpg"]


def test_segment_reads_no_crafted_path_back(loads):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("s.png"), seed=3)
    Path("out").mkdir()
    Path("out/results.jsonl").write_text(json.dumps({"type": "writing", "outputs": ["../q/a.jpg"]}) + "\n")
    message = one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0])
    assert "out/results.jsonl:1: field \"outputs\" must be a plain relative path inside the folder" in message
    assert not loads


# ------------------------------------------------------- defect 13: crafted or damaged rows
def _drop(key):
    return lambda rows: rows[1].pop(key)


def _set(line, key, value):
    return lambda rows: rows[line - 1].__setitem__(key, value)


@pytest.mark.parametrize("edit, message", [
    (_drop("query"), 'results.jsonl:2: field "query" must be text, not None'),
    (_set(2, "outputs", 5), 'results.jsonl:2: field "outputs" must be a list of relative paths, not 5'),
    (_set(3, "classes", [1, 2]), 'results.jsonl:3: field "classes" must be an object, not [1, 2]'),
    (lambda rows: rows.__setitem__(0, {"type": "run"}), 'results.jsonl:1: field "label" must be text, not None'),
    (_set(2, "score", "high"), 'results.jsonl:2: field "score" must be a finite number'),
    (_set(1, "classes", [{"label": f"c{i}"} for i in range(300)]),
     "results.jsonl:1: 300 classes: one indexed mask holds at most 254"),
    (_set(1, "classes", [{"label": "dog"}, {"label": "Dog"}]), "results.jsonl:1: the labels 'dog' and 'Dog'"),
    (_set(2, "outputs", ["sub/a_overlay.jpg"]), 'results.jsonl:2: field "outputs" must list the query\'s mask'),
    (_set(2, "file_name", "/etc/passwd"), 'results.jsonl:2: field "file_name" must be a plain relative path'),
    (_set(3, "query_file", {"size": "big"}), 'results.jsonl:3: field "query_file": field "size" must be a whole'),
])
def test_damaged_rows_are_one_line_errors_in_gallery_and_export(tmp_path, edit, message):
    out = labelled_folder(tmp_path)
    edit_rows(out / "results.jsonl", edit)
    for args in (["gallery", out], ["export", out, "--coco"]):
        assert message in one_line_error(command(*args))
    assert not (out / "gallery.html").exists() and not (out / "annotations.json").exists()


def test_a_deleted_overlay_or_mask_is_named(tmp_path):
    out = labelled_folder(tmp_path)
    (out / "sub" / "a_overlay.jpg").unlink()
    message = one_line_error(command("gallery", out))
    assert f"{out}/sub/a_overlay.jpg: the overlay of" in message and "run the segment command again" in message
    assert command("export", out, "--coco").exit_code == 0  # annotations need no overlay
    (out / "b.png").unlink()
    for args in (["gallery", out], ["export", out, "--coco"]):
        assert f"{out}/b.png: the mask of" in one_line_error(command(*args))


def test_an_undecodable_or_huge_mask_is_named(tmp_path, monkeypatch):
    out = labelled_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a decompression bomb, as Pillow sees one
    with pytest.raises(InputError, match=r"sub/a\.png: cannot read the mask \(Image size"):
        export_coco(out)
    monkeypatch.undo()
    (out / "b_overlay.jpg").write_bytes(b"not a picture")
    with pytest.raises(InputError, match=r"b_overlay\.jpg: cannot read the overlay"):
        build_gallery(out)


# --------------------------------------------------- defect 4: the page's data stays data
def test_names_and_labels_cannot_end_the_page_s_data(loads):
    hostile = "<!--<script>"
    write_image(Path(f"q/{hostile}x.jpg"), seed=1)
    write_image(Path("s.png"), seed=2)
    result = command("segment", "-l", f"cat {hostile}&</script>", "-s", "s.png", "-q", "q", "-o", "out",
                     "--gallery", *WEIGHTS)
    assert result.exit_code == 0, result.output
    page = (Path("out") / "gallery.html").read_text()
    embedded = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1]
    assert not set("<>&") & set(embedded)  # escaped as \u003c, \u003e, \u0026
    data = json.loads(embedded)
    assert [q["name"] for q in data["queries"]] == [f"{hostile}x.jpg"]
    assert [c["label"] for c in data["classes"]] == [f"cat {hostile}&</script>"]
    if shutil.which("chromium") is None:
        return
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          Path("out/gallery.html").resolve().as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "1 of 1 shown" in dom and "&lt;!--&lt;script&gt;x.jpg" in dom


# ------------------------------------------------------- defect 5: the name each row stores
def test_renamed_outputs_keep_their_query_s_file_name(loads):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("q/a.png"), seed=2)
    write_image(Path("s.png"), seed=3)
    result, _ = segment("-s", "s.png", "-q", "q", "-o", "out", "--coco", "--gallery", *WEIGHTS)
    assert result.exit_code == 0, result.output
    assert Path("out/a_png.png").is_file()  # a.png's outputs are renamed, not its name
    images = json.loads(Path("out/annotations.json").read_text())["images"]
    assert sorted(image["file_name"] for image in images) == ["a.jpg", "a.png"]
    assert sorted(q["name"] for q in gallery_data(Path("out"))["queries"]) == ["a.jpg", "a.png"]


# ------------------------------------------- defect 6: a query is where it is, not how it is typed
def test_the_same_run_from_elsewhere_or_by_absolute_paths_keeps_finished_queries(loads, tmp_path, monkeypatch):
    for name in ("a.jpg", "sub/b.jpg"):
        write_image(Path("q") / name, seed=len(name))
    write_image(Path("s.png"), seed=3)
    result, summary = segment("-s", "s.png", "-q", "q", "-o", "out", "--coco", "--gallery", *WEIGHTS)
    assert result.exit_code == 0 and safety.counts(summary) == (2, 0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for args in (["-s", tmp_path / "s.png", "-q", tmp_path / "q", "-o", tmp_path / "out"],
                 ["-s", "../s.png", "-q", "../q/a.jpg", "-q", "../q", "-o", "../out"]):
        result, summary = segment(*args, "--coco", "--gallery", *weights_from(tmp_path))
        assert result.exit_code == 0, result.output
        assert safety.counts(summary) == (0, 2)
    assert len(loads) == 1  # nothing redone: no model loaded again
    images = json.loads((tmp_path / "out" / "annotations.json").read_text())["images"]
    assert sorted(image["file_name"] for image in images) == ["a.jpg", "sub/b.jpg"]
    assert len(gallery_data(tmp_path / "out")["queries"]) == 2


def test_rows_of_an_older_imrseg_are_redone_once_and_never_exported_twice(loads, tmp_path, monkeypatch):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("s.png"), seed=3)
    assert segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0].exit_code == 0
    edit_rows(Path("out/results.jsonl"), lambda rows: [row.pop("resolved", None) for row in rows])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = ["-s", tmp_path / "s.png", "-q", tmp_path / "q", "-o", tmp_path / "out", "--coco", "--gallery",
            *weights_from(tmp_path)]
    assert safety.counts(segment(*args)[1]) == (1, 0)  # `q/a.jpg` from here is another file
    assert safety.counts(segment(*args)[1]) == (0, 1)
    images = json.loads((tmp_path / "out" / "annotations.json").read_text())["images"]
    assert [image["file_name"] for image in images] == ["a.jpg"]
    assert len(gallery_data(tmp_path / "out")["queries"]) == 1


# -------------------------------------------------------------- defect 12: names are not markup
def test_markup_in_query_names_is_shown_as_it_is(loads):
    names = ["[bold]x[/bold].jpg", "[/]y.jpg"]
    for i, name in enumerate(names):
        write_image(Path("q") / name, seed=i)
    bad = Path("q/[red]bad[/red].jpg")  # a folder `[red]bad[` and a file in it
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a picture")
    write_image(Path("s.png"), seed=3)
    result, summary = segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)
    assert result.exit_code == 1 and safety.counts(summary) == (2, 0), result.output
    for name in names:
        assert f"q/{name}" in result.output  # in the table of the lowest scores
    assert "imrseg: error: q/[red]bad[/red].jpg: " in result.output


# --------------------------------------------------------------------- the run's own writes
def test_a_batch_claims_its_files_once_and_a_user_file_is_never_replaced(loads, monkeypatch):
    for name in "abc":
        write_image(Path(f"q/{name}.jpg"), seed=ord(name))
    write_image(Path("s.png"), seed=3)
    Path("out").mkdir()
    Path("out/b_overlay.jpg").write_bytes(b"the user's")
    args = ["-s", "s.png", "-q", "q", "-o", "out", "--batch-size", "2", *WEIGHTS]
    message = one_line_error(segment(*args)[0])
    assert "out/b_overlay.jpg: exists and was not written by imrseg; pass --overwrite to replace it" in message
    assert not loads and Path("out/b_overlay.jpg").read_bytes() == b"the user's"

    manifest_writes = []
    real = guard.ResultsLog

    class Counted(real):
        def write_many(self, rows):
            rows = list(rows)
            if self.path.name == guard.MANIFEST:
                manifest_writes.append([row["file"] for row in rows])
            super().write_many(rows)

    monkeypatch.setattr(guard, "ResultsLog", Counted)
    result, summary = segment(*args, "--overwrite")
    assert result.exit_code == 0 and safety.counts(summary) == (3, 0)
    assert manifest_writes == [["results.jsonl"], ["a_overlay.jpg", "a.png", "b_overlay.jpg", "b.png"],
                               ["c_overlay.jpg", "c.png"]]  # the log, then one write per batch
    writing = [row["outputs"] for row in map(json.loads, Path("out/results.jsonl").read_text().splitlines())
               if row["type"] == "writing"]
    assert writing == manifest_writes[1:]
    manifest_writes.clear()
    assert safety.counts(segment(*args)[1]) == (0, 3) and manifest_writes == []


def test_a_symlinked_subfolder_of_out_is_refused_before_loading(loads):
    write_image(Path("q/sub/a.jpg"), seed=1)
    write_image(Path("s.png"), seed=3)
    Path("out/elsewhere").mkdir(parents=True)
    Path("out/sub").symlink_to(Path("out/elsewhere").resolve(), target_is_directory=True)
    message = one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0])
    assert "out/sub: is a symbolic link inside --out" in message
    assert not loads and os.listdir("out/elsewhere") == []


def test_a_symlinked_rank_log_is_not_merged(loads):
    outside = Path("outside.jsonl")
    outside.write_text(json.dumps({"type": "run", "label": "dog"}) + "\n")
    Path("out").mkdir()
    Path("out/.results.rank1.jsonl").symlink_to(outside.resolve())
    write_image(Path("q.jpg"))
    message = one_line_error(segment("-s", "q.jpg", "-q", "q.jpg", "-o", "out", *WEIGHTS)[0])
    assert "out/.results.rank1.jsonl: is a symbolic link" in message
    assert outside.read_text() == json.dumps({"type": "run", "label": "dog"}) + "\n"
    assert not Path("out/results.jsonl").exists() and not loads


def test_exports_never_replace_a_user_s_file_or_read_through_a_link(loads):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("s.png"), seed=3)
    Path("out").mkdir()
    Path("out/annotations.json").write_text("mine")
    args = ["-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS]
    message = one_line_error(segment(*args, "--coco")[0])
    assert "out/annotations.json: exists and was not written by imrseg; pass --overwrite" in message and not loads
    assert segment(*args)[0].exit_code == 0
    Path("out/gallery.html").write_text("mine too")
    assert "out/annotations.json: exists and was not written by imrseg; move it" in one_line_error(
        command("export", "out", "--coco"))
    assert "out/gallery.html: exists and was not written by imrseg; move it" in one_line_error(
        command("gallery", "out"))
    assert Path("out/annotations.json").read_text() == "mine" and Path("out/gallery.html").read_text() == "mine too"

    outside = Path("outside.png")
    Path("out/a.png").rename(outside)
    Path("out/a.png").symlink_to(outside.resolve())  # an outside picture read as the mask
    Path("out/annotations.json").unlink()
    assert "out/a.png: is a symbolic link" in one_line_error(command("export", "out", "--coco"))
    assert not Path("out/annotations.json").exists()


def test_thumbnails_stay_in_the_folder(tmp_path):
    out = labelled_folder(tmp_path)
    (out / "elsewhere").mkdir()
    (out / ".gallery").mkdir()
    (out / ".gallery" / "sub").symlink_to(out / "elsewhere", target_is_directory=True)
    with pytest.raises(ImrsegError, match=r"\.gallery/sub: is a symbolic link"):
        build_gallery(out)
    assert os.listdir(out / "elsewhere") == [] and not (out / "gallery.html").exists()
