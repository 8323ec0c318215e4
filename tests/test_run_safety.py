"""What a folder run may write, skip and read: re-runs keep only what the same settings
finished, outputs never replace or become inputs, links are not followed, one run at a
time per output folder. The network is a stand-in (masks from the pictures' own
brightness, so different pictures get different masks): the rules are the runner's,
and a stand-in makes every case a fraction of a second."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from imrseg import durable
from imrseg.cli import _register, app
from imrseg.images import load_image
from imrseg.predictor import HOST_RESULTS, ClassPredictions, Prediction, Predictor
from typer.testing import CliRunner

_register()
WEIGHTS = ["--weights", "w.pt", "--clip-weights", "clip.pt", "--steps", "1", "--json"]


def stub_mask(image: Image.Image, size) -> np.ndarray:
    return np.asarray(image.convert("L").resize(size)) > 127


class StubPredictor:
    def __init__(self, weights: str, clip: str, steps: int | None):
        self.weights_info = SimpleNamespace(spec=weights, name=None, sha256=durable.file_sha256(weights))
        self.clip_info = SimpleNamespace(model_name="stub", path=clip)
        self.device, self.precision, self.steps = "cpu", "fp32", steps or 1
        self.labels = []

    def set_supports(self, classes):
        self.labels = list(classes)

    def prepare(self, image: Image.Image) -> Image.Image:
        return image  # what predict_classes takes: the image itself

    def predict_classes(self, images, steps=None, sizes=None, keep=HOST_RESULTS):
        assert set(keep) <= set(HOST_RESULTS)
        out = []
        for image, size in zip(images, sizes):
            mask = stub_mask(image, size)
            prediction = Prediction(mask, mask.astype(np.float32), np.zeros((50, 50), np.float32), [mask], 1.0)
            out.append(ClassPredictions({label: prediction for label in self.labels}))
        return out


@pytest.fixture()
def loads(tmp_path, monkeypatch):
    """Work in tmp_path with stand-in weights; returns the list of predictors built."""
    monkeypatch.chdir(tmp_path)
    Path("w.pt").write_bytes(b"network weights")
    Path("clip.pt").write_bytes(b"clip weights")
    built = []

    def from_pretrained(weights=None, clip=None, steps=None, **_):
        built.append(StubPredictor(weights, clip, steps))
        return built[-1]

    monkeypatch.setattr(Predictor, "from_pretrained", from_pretrained)
    return built


def segment(*args):
    result = CliRunner().invoke(app, ["segment", "-l", "cat", *map(str, args)], catch_exceptions=False)
    summary = json.loads(result.stdout.splitlines()[-1]) if result.exit_code in (0, 1) else None
    return result, summary


def counts(summary) -> tuple[int, int]:
    return summary["done"], summary["skipped"]


def last_run(out: Path) -> tuple[dict, list[dict]]:
    """The latest header of out/results.jsonl and the query rows after it."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    start = max(i for i, row in enumerate(rows) if row["type"] == "run")
    return rows[start], [row for row in rows[start + 1:] if row["type"] == "query"]


def test_out_as_the_query_folder_reads_no_output_back(loads):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("q/b.jpg"), seed=2)
    write_image(Path("s/sup.png"), seed=3)
    for expected in [(2, 0), (0, 2), (0, 2)]:
        result, summary = segment("-s", "s/sup.png", "-q", "q", "-o", "q", *WEIGHTS)
        assert result.exit_code == 0, result.output
        assert counts(summary) == expected
    assert len(loads) == 1  # nothing to do: no model loaded
    _, rows = last_run(Path("q"))
    assert [(r["query"], r["status"]) for r in rows] == [("q/a.jpg", "skipped"), ("q/b.jpg", "skipped")]
    assert summary["out"] == "q" and "outputs in q, recorded in q/results.jsonl" in result.output


def test_a_new_or_changed_file_is_never_skipped_with_an_old_mask(loads):
    write_image(Path("q/a.png"), seed=1)
    write_image(Path("s.png"), seed=3)
    args = ["-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS]
    assert counts(segment(*args)[1]) == (1, 0)
    write_image(Path("q/a.jpg"), seed=2)  # sorts first, so it takes the name `a`
    assert counts(segment(*args)[1]) == (2, 0)
    for query, mask in [("q/a.jpg", "out/a.png"), ("q/a.png", "out/a_png.png")]:
        picture = load_image(query).image
        assert np.array_equal(np.asarray(Image.open(mask)) > 0, stub_mask(picture, picture.size)), query
    write_image(Path("q/a.png"), seed=4)  # same name, another picture
    result, summary = segment(*args)
    assert counts(summary) == (1, 1)
    assert [(r["query"], r["status"]) for r in last_run(Path("out"))[1]] == [("q/a.jpg", "skipped"),
                                                                             ("q/a.png", "done")]


@pytest.mark.parametrize("change, differs", [
    (["-l", "dog"], "label"),
    (["--steps", "2"], "steps"),
    (["--weights", "w2.pt"], "weights"),
    (["--support", "s2.png"], "supports"),
])
def test_other_settings_stop_before_loading_until_overwrite(loads, change, differs):
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("s.png"), seed=3)
    write_image(Path("s2.png"), seed=4)
    Path("w2.pt").write_bytes(b"other network weights")
    args = ["-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS]
    assert counts(segment(*args)[1]) == (1, 0)
    masks = Path("out/a.png").read_bytes()

    result, _ = segment(*args, *change)
    assert result.exit_code == 2
    message = result.output.removeprefix("imrseg: error: out: holds outputs made with other ")
    assert message.endswith("; pass --overwrite to redo them with these settings, or choose another --out\n")
    assert differs in message.split(";")[0].split(", ") and message.count("\n") == 1
    assert len(loads) == 1 and Path("out/a.png").read_bytes() == masks

    assert counts(segment(*args, *change, "--overwrite")[1]) == (1, 0)
    assert counts(segment(*args, *change)[1]) == (0, 1)  # the folder now holds the new settings
    assert segment(*args)[0].exit_code == 2


def test_an_output_never_replaces_a_support(loads):
    support = write_image(Path("s_dir/a.png"), seed=1)
    before = support.read_bytes()
    write_image(Path("qq/a.jpg"), seed=2)
    result, summary = segment("-s", support, "-q", "qq", "-o", "s_dir", *WEIGHTS)
    assert result.exit_code == 0 and counts(summary) == (1, 0)
    assert support.read_bytes() == before
    assert last_run(Path("s_dir"))[1][0]["mask"] == "s_dir/a_jpg.png"


def test_the_support_folder_as_out_adds_no_supports(loads):
    write_image(Path("s/sup.png"), seed=1)
    write_image(Path("q/a.jpg"), seed=2)
    args = ["-s", "s", "-q", "q", "-o", "s", *WEIGHTS]
    assert counts(segment(*args)[1]) == (1, 0)
    result, summary = segment(*args)  # with the outputs as supports the fingerprint would differ
    assert result.exit_code == 0 and counts(summary) == (0, 1)
    assert last_run(Path("s"))[0]["supports"] == ["s/sup.png"]


def test_a_symlinked_log_is_not_followed(loads):
    outside = Path("elsewhere.jsonl")
    outside.write_bytes(b'{"mine": 1}\n{"torn')
    Path("out").mkdir()
    (Path("out") / "results.jsonl").symlink_to(outside.resolve())
    write_image(Path("q.jpg"))
    result, _ = segment("-s", "q.jpg", "-q", "q.jpg", "-o", "out", *WEIGHTS)
    assert result.exit_code == 2 and "out/results.jsonl: is a symbolic link" in result.output
    assert outside.read_bytes() == b'{"mine": 1}\n{"torn' and not loads


def test_temporary_files_and_the_folder_lock(loads):
    write_image(Path("q.jpg"))
    args = ["-s", "q.jpg", "-q", "q.jpg", "-o", "out", *WEIGHTS]
    assert segment(*args)[0].exit_code == 0
    users = Path("out/.notes.txt.tmp-0123456789ab")  # looks like a temporary file, is not imrseg's
    users.write_text("mine")
    assert segment(*args)[0].exit_code == 0 and users.read_text() == "mine"
    stale = Path(f"out/.q.png{durable.TEMPORARY_MARK}0123456789ab")
    stale.write_bytes(b"half a mask")
    with durable.FolderLock("out"):  # another run is writing: its temporary file is live
        result, _ = segment(*args)
        assert result.exit_code == 2
        assert "out: another imrseg run is writing into this folder" in result.output
        assert stale.exists()
    assert segment(*args)[0].exit_code == 0 and not stale.exists()


def test_a_read_only_out_stops_before_loading(loads, monkeypatch):
    write_image(Path("q.jpg"))
    Path("out").mkdir()
    real_open = os.open

    def read_only(path, flags, *rest):
        if Path(path).parent == Path("out") and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *rest)

    monkeypatch.setattr(durable.os, "open", read_only)
    result, _ = segment("-s", "q.jpg", "-q", "q.jpg", "-o", "out", *WEIGHTS)
    assert result.exit_code == 2 and "out: cannot write (Permission denied)" in result.output
    assert not loads


def test_rows_follow_the_query_order(loads):
    for i, name in enumerate("abc"):
        write_image(Path(f"q/{name}.jpg"), seed=i)
    args = ["-s", "q/a.jpg", "-q", "q", "-o", "out", "--batch-size", "2", *WEIGHTS]
    assert counts(segment(*args)[1]) == (3, 0)
    Path("out/a.png").unlink()
    Path("out/c_overlay.jpg").unlink()
    assert counts(segment(*args)[1]) == (2, 1)
    assert [(r["query"], r["status"]) for r in last_run(Path("out"))[1]] == [
        ("q/a.jpg", "done"), ("q/b.jpg", "skipped"), ("q/c.jpg", "done")]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_imported_weights_follow_the_umask(recipe_weight_files, tmp_path):
    from imrseg.hub.publish import import_official

    old = os.umask(0o022)
    try:
        import_official(recipe_weight_files["weights"], tmp_path / "converted")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "converted").iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644,
        ".imrseg-files": 0o644, ".imrseg.lock": 0o644}  # the guard's manifest and lock too


def test_settings_errors_name_the_parameters(tmp_path):
    """Called directly, the settings name their parameters (the commands print their flags instead)."""
    from imrseg.errors import InputError
    from imrseg.runner import ClassSpec, RunSettings

    one = {"queries": (tmp_path,), "label": "cat", "supports": (tmp_path,)}
    cases = [
        (dict(one, steps=0), "^`steps` must be 1 or more, not 0$"),
        (dict(one, coco_polygons=True), "^`coco_polygons` and `min_area` shape the COCO annotations: add `coco`$"),
        (dict(one, queries=()), "^no queries: pass at least one `queries` image or folder$"),
        ({"queries": (tmp_path,), "classes": (ClassSpec("dog"),)}, "^no supports for 'dog'"),
    ]
    for settings, message in cases:
        with pytest.raises(InputError, match=message):
            RunSettings(**settings).check()
    with pytest.raises(InputError, match="^give `label` \\(with `supports`\\) or `classes`, not both$"):
        RunSettings(**one, classes=(ClassSpec("dog", (tmp_path,)),))
    with pytest.raises(InputError, match="^`supports` and `support_masks` go with `label`"):
        RunSettings(supports=(tmp_path,))
