"""The one guard over folders imrseg writes (`OwnedFolder`) and files it reads back
(`Fields`): inside only, no links followed, never over a file it did not write,
every value read back checked."""
from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imrseg.durable import ResultsLog, read_results
from imrseg.errors import ImrsegError, InputError
from imrseg.guard import MANIFEST, Fields, OwnedFolder, plain_relative


def test_writes_inside_and_records_them(tmp_path):
    out = tmp_path / "out"
    with OwnedFolder(out) as folder:
        folder.write("a/b.txt", b"x")
        assert folder.owns("a/b.txt") and folder.owns(out / "a" / "b.txt")
    assert (out / "a" / "b.txt").read_bytes() == b"x"
    assert [row["file"] for row in read_results(out / MANIFEST)] == ["a/b.txt"]
    with OwnedFolder(out) as folder:  # a later run knows the file as imrseg's and may replace it
        folder.write("a/b.txt", b"y")
    assert (out / "a" / "b.txt").read_bytes() == b"y"
    assert len(read_results(out / MANIFEST)) == 1


@pytest.mark.parametrize("overwrite, hint", [(None, False), (False, True)])
def test_never_over_a_file_imrseg_did_not_write(tmp_path, overwrite, hint):
    (tmp_path / "photo.jpg").write_bytes(b"user")
    with OwnedFolder(tmp_path, overwrite=overwrite) as folder:
        with pytest.raises(ImrsegError, match="photo.jpg: exists and was not written by imrseg") as caught:
            folder.write("photo.jpg", b"imrseg")
    assert ("`overwrite`" in str(caught.value)) == hint
    assert (tmp_path / "photo.jpg").read_bytes() == b"user"
    with OwnedFolder(tmp_path, overwrite=True) as folder:
        folder.write("photo.jpg", b"imrseg")
    assert (tmp_path / "photo.jpg").read_bytes() == b"imrseg"


def test_known_files_count_as_imrseg_s(tmp_path):
    (tmp_path / "a.png").write_bytes(b"old")
    with OwnedFolder(tmp_path, known=["a.png"]) as folder:
        folder.write("a.png", b"new")
    assert (tmp_path / "a.png").read_bytes() == b"new"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "./a", "a//b", "", "a/./b", "C:/x"])
def test_only_plain_relative_names(tmp_path, name):
    with OwnedFolder(tmp_path) as folder:
        with pytest.raises(ImrsegError):
            folder.write(name, b"x")
    assert not (tmp_path.parent / "x").exists()


def test_no_link_is_followed_below_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").symlink_to(outside / "README.md")
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with OwnedFolder(out, known=["README.md", "sub/README.md"]) as folder:
        for name in ("README.md", "sub/README.md", "sub/new.txt"):
            with pytest.raises(ImrsegError, match="symbolic link"):
                folder.write(name, b"x")
            with pytest.raises(ImrsegError, match="symbolic link"):
                folder.read_bytes(name)
        assert not folder.is_file("README.md")
    assert (outside / "README.md").read_text() == "mine"
    assert sorted(os.listdir(outside)) == ["README.md"]


def test_the_folder_itself_may_be_reached_through_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with OwnedFolder(tmp_path / "link") as folder:
        folder.write("a.txt", b"x")
        assert folder.relative(tmp_path / "link" / "a.txt") == "a.txt"
    assert (real / "a.txt").read_bytes() == b"x"


@pytest.mark.parametrize("name", [MANIFEST, ".imrseg.lock", "sub/.imrseg-files", ".a.png.imrseg-tmp-0123456789ab"])
def test_imrseg_s_own_names_are_never_claimed(tmp_path, name):
    with OwnedFolder(tmp_path) as folder:
        folder.write("a.txt", b"x")
        with pytest.raises(ImrsegError, match="a name imrseg keeps for itself"):
            folder.write(name, b"{}")
    assert [row["file"] for row in read_results(tmp_path / MANIFEST)] == ["a.txt"]


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImrsegError, match="cannot write"):
        with OwnedFolder(tmp_path / "file" / "sub", lock=False):
            pass


def test_one_writer_at_a_time(tmp_path):
    with OwnedFolder(tmp_path):
        with pytest.raises(ImrsegError, match="another imrseg run"):
            with OwnedFolder(tmp_path):
                pass


def test_a_file_in_the_folder_s_place_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ImrsegError, match="exists and is not a folder"):
        with OwnedFolder(tmp_path / "out"):
            pass


def test_a_crafted_manifest_is_a_one_line_error(tmp_path):
    (tmp_path / MANIFEST).write_text('{"file": "../../etc/passwd"}\n')
    with pytest.raises(InputError, match=r"\.imrseg-files:1: field \"file\" must be a plain relative path"):
        with OwnedFolder(tmp_path):
            pass


def test_no_non_finite_number_is_written(tmp_path):
    with ResultsLog(tmp_path / "log.jsonl") as log:
        with pytest.raises(ImrsegError, match="not finite"):
            log.write({"loss": float("nan")})
        log.write_many([{"a": 1}, {"a": 2}])
    assert read_results(tmp_path / "log.jsonl") == [{"a": 1}, {"a": 2}]
    (tmp_path / "bad.jsonl").write_text('{"loss": NaN}\n')
    with pytest.raises(InputError, match="bad.jsonl:1: not a JSON row"):
        read_results(tmp_path / "bad.jsonl")


def test_fields_name_file_line_and_field(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"query": 5, "score": "high", "outputs": ["a.png", "../b.png"], "n": -1}\n')
    [row] = Fields.rows(path)
    for call, what in [(lambda: row.text("query"), "text"), (lambda: row.number("score"), "a finite number"),
                       (lambda: row.relatives("outputs"), "plain relative path"),
                       (lambda: row.integer("n", 0), "a whole number of 0 or more"),
                       (lambda: row.text("missing"), "text")]:
        with pytest.raises(InputError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"{path}:1: field") and what in message and "\n" not in message


# Any JSON value, as a crafted file might hold it.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                 max_size=3),
                    max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON)
def test_every_accessor_gives_a_checked_value_or_a_one_line_error(value):
    row = Fields({"key": value}, "f.jsonl:1")
    for read, good in [
        (lambda: row.text("key"), lambda v: isinstance(v, str)),
        (lambda: row.number("key", 0, 1), lambda v: isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1),
        (lambda: row.integer("key", 0), lambda v: isinstance(v, int) and v >= 0),
        (lambda: row.flag("key"), lambda v: isinstance(v, bool)),
        (lambda: row.relative("key"), lambda v: not v.startswith("/") and ".." not in v.split("/")),
        (lambda: row.texts("key", optional=True), lambda v: all(isinstance(x, str) for x in v)),
        (lambda: row.relatives("key", optional=True), lambda v: all(".." not in x.split("/") for x in v)),
        (lambda: row.items("key", optional=True), lambda v: all(isinstance(x, Fields) for x in v)),
        (lambda: row.mapping("key", optional=True), lambda v: all(isinstance(x, Fields) for x in v.values())),
    ]:
        try:
            got = read()
        except InputError as exc:
            assert str(exc).startswith("f.jsonl:1: ") and "\n" not in str(exc)
        else:
            assert good(got)


@given(name=st.text(max_size=12))
def test_plain_relative_never_leaves_the_folder(name):
    try:
        rel = plain_relative(name, "x")
    except InputError:
        return
    assert os.path.normpath(os.path.join("/root/out", rel)).startswith("/root/out/")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(JSON, max_size=4))
def test_a_crafted_manifest_never_lets_a_write_out(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("m")
    out = root / "out"
    out.mkdir()
    (out / MANIFEST).write_text("".join(json.dumps({"file": r}) + "\n" for r in rows))
    try:
        with OwnedFolder(out) as folder:
            for name in folder.owned:
                folder.write(name, b"x")
    except ImrsegError as exc:
        assert "\n" not in str(exc)
    written = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
    assert all(p.startswith("out" + os.sep) for p in written)
