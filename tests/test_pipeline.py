"""The run's pipeline: queries decoded and prepared on worker threads, the predictor
handed what they prepared, every query's outputs and row written."""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from imrseg.guard import OwnedFolder
from imrseg.outputs.naming import plan_outputs
from imrseg.durable import read_results
from imrseg.outputs.results import RESULTS_FILE, query_file
from imrseg.predictor import ClassPredictions, Prediction
from imrseg.runner.batches import Job, segment_queries
from imrseg.runner.writing import OutputOptions


def test_queries_are_prepared_on_the_decoding_threads(tmp_path):
    root = tmp_path / "queries"
    root.mkdir()
    queries = []
    for i in range(5):
        queries.append(root / f"q{i}.png")
        Image.fromarray(np.full((12 + i, 20, 3), 40 * i, np.uint8)).save(queries[-1])
    prepared_on = []

    def prepare(image):
        prepared_on.append(threading.current_thread().name)
        return ("prepared", image.size)

    def predict(items, sizes):
        assert all(item == ("prepared", size) for item, size in zip(items, sizes))
        return [ClassPredictions({"cat": Prediction(np.ones((h, w), bool), None, None)}) for w, h in sizes]

    out = tmp_path / "out"
    jobs = [Job(q, stem, query_file(q), None, q.name) for q, stem in plan_outputs([(q, root) for q in queries], out).items()]
    with OwnedFolder(out) as folder, folder.log(RESULTS_FILE) as log:
        summary = segment_queries(predict, jobs, folder=folder, steps=1, options=OutputOptions(), labels=["cat"],
                                  batch_size=2, max_pixels=None, log=log, prepare=prepare)
    assert summary.done == 5
    assert len(prepared_on) == 5 and all(name.startswith("imrseg-decode") for name in prepared_on)
    rows = [row for row in read_results(out / RESULTS_FILE) if row.get("status") == "done"]
    assert len(rows) == 5
    for q in queries:
        mask = np.array(Image.open(out / f"{q.stem}.png"))
        assert mask.shape == np.array(Image.open(q)).shape[:2] and mask.all()
