"""A run of the model from the browser app: every image of the workspace not yet
accepted or corrected, segmented for the workspace's classes through the server's
warm `Segmenter` (batched with whatever else the server is asked), its files written
as `imrseg segment --save-cam --save-steps` writes them (`runner.batches`), each
mask announced as soon as it is on disk: the first image goes alone, so the first
mask shows after one forward, the rest in batches. One run at a time."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from .. import __version__
from ..durable import file_sha256
from ..errors import InputError, one_line
from ..images import LoadedImage, check_drawn_mask, load_image, load_mask
from ..outputs.naming import file_tags, plan_outputs
from ..outputs.results import RESULTS_FILE, Outcome, query_file, relative_outputs
from ..runner.batches import Job, segment_queries
from ..runner.identity import fingerprint_of
from ..runner.writing import OutputOptions
from ..clip.vocabulary import class_vocabulary
from ..serve.service import ClassRequest, Segmenter
from .workspace import KEPT, Conflict, Workspace

OPTIONS = OutputOptions(save_cam=True, save_steps=True)  # the page shows the CAM and every step


class Running(Conflict):
    """A run is going: one at a time."""


class _LockedLog:
    """results.jsonl as `segment_queries` writes it, under the workspace's lock, so a
    person's review never lands inside a batch's rows."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def write(self, row) -> None:
        with self.workspace.lock:
            self.workspace.log().write(row)

    def write_many(self, rows) -> None:
        rows = list(rows)
        with self.workspace.lock:
            self.workspace.log().write_many(rows)


class Runner:
    """Starts and stops runs of `segmenter` over `workspace`."""

    def __init__(self, workspace: Workspace, segmenter: Segmenter, batch_size: int):
        self.workspace, self.segmenter, self.batch_size = workspace, segmenter, batch_size
        self.number = 0
        self.progress: dict | None = None
        self.requested = False  # the stop sign `segment_queries` reads
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> bool:
        self.requested = self.running
        return self.requested

    def start(self, steps: int | None = None) -> dict:
        """Check everything and start the run in the background: {"run", "total"}.
        InputError naming the field; `Running` while one goes."""
        with self._lock:
            if self.running:
                raise Running("a run is going; wait for it, or stop it")
            plan = self._plan(steps)
            self.number += 1
            self.requested = False
            self.progress = {"run": self.number, "done": 0, "total": len(plan["jobs"])}
            self.workspace.busy = {i for i, _ in plan["jobs"]}
            self._thread = threading.Thread(target=self._run, args=(self.number, plan), name="imrseg-app-run",
                                             daemon=True)
            self._thread.start()
            return {"run": self.number, "total": len(plan["jobs"])}

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ planning
    def _plan(self, steps: int | None) -> dict:
        ws, predictor = self.workspace, self.segmenter.predictor
        with ws.lock:
            classes = list(ws.classes)
            todo = [i for i in range(len(ws.images)) if ws.state_of(i) not in KEPT]
        if not classes:
            raise InputError("classes: no class yet; type a label first")
        steps = predictor.steps if steps is None else steps
        if not 1 <= steps <= self.segmenter.max_steps:
            raise InputError(f"steps must be 1 to {self.segmenter.max_steps}, not {steps}")
        labels = [c.label for c in classes]
        requests, identity_classes, header_classes, protect = [], [], [], []
        for k, setting in enumerate(classes):
            files = ws.support_files(setting)
            images, masks = [], []
            for j, (image_file, mask_file) in enumerate(files):
                image = load_image(image_file, max_pixels=ws.max_pixels, draft_size=0)
                images.append(image.image)
                masks.append(None if mask_file is None else check_drawn_mask(
                    f"classes[{k}].supports[{j}] mask", load_mask(mask_file, max_pixels=ws.max_pixels),
                    image.size, str(image_file)))
            protect += [p for pair in files for p in pair if p is not None]
            requests.append(ClassRequest(setting.label, setting.prompt, tuple(images),
                                         tuple(masks) if any(m is not None for m in masks) else None))
            identity_classes.append({
                "label": setting.label, "prompt": setting.prompt,
                "supports": [file_sha256(p) for p, _ in files],
                "support_masks": [file_sha256(m) if m is not None else None for _, m in files],
                "vocabulary": class_vocabulary(setting.prompt, [c.prompt for c in classes], None)})
            header_classes.append({"label": setting.label, "supports": [str(p) for p, _ in files],
                                   "support_masks": [str(m) if m is not None else None for _, m in files]})
        info = self.segmenter.info()
        identity = {"weights": info["weights"], "clip": info["clip"], "classes": identity_classes,
                    "steps": steps, "precision": info["precision"], "app": True}
        fingerprint = fingerprint_of(identity)
        stems = plan_outputs(((image, ws.folder) for image in ws.images), ws.out, protect=protect,
                             tags=file_tags(labels))
        suffixes = OPTIONS.suffixes(steps, labels)
        jobs = [(i, Job(ws.images[i], stems[ws.images[i]], query_file(ws.images[i]), None, ws.names[i]))
                for i in todo]
        ws.guard.check([RESULTS_FILE] + [name for _, job in jobs
                                         for name in relative_outputs(job.stem, suffixes, ws.out)])
        one = header_classes[0] if len(classes) == 1 else {"label": None, "supports": [], "support_masks": []}
        header = {"type": "run", "imrseg": __version__, "fingerprint": fingerprint, "identity": identity, **one,
                  "classes": header_classes, "zero_shot": not any(r.supports for r in requests),
                  "weights": {key: (info["weights"] or {}).get(key) for key in ("spec", "name", "sha256")},
                  "clip": (info["clip"] or {}).get("model_name"), "precision": info["precision"], "steps": steps,
                  "device": info["device"], "rank": 0, "world": 1, "app": True}
        return {"jobs": jobs, "requests": requests, "labels": labels, "steps": steps, "header": header}

    # ------------------------------------------------------------------ running
    def _run(self, number: int, plan: dict) -> None:
        ws = self.workspace
        ids = {job.query: i for i, job in plan["jobs"]}
        jobs = [job for _, job in plan["jobs"]]
        started = time.monotonic()
        ws.emit("run", {"run": number, "status": "started", "error": None, "seconds": None})

        def predict(images, sizes):
            loaded = [LoadedImage(image, size, Path()) for image, size in zip(images, sizes)]
            return self.segmenter.segment_sync(loaded, plan["requests"], steps=plan["steps"], keep=OPTIONS.kept)

        def reported(outcome: Outcome) -> None:
            i = ids[outcome.query]
            ws.busy.discard(i)
            ws.record(i, outcome.row())
            self.progress = {**self.progress, "done": self.progress["done"] + 1}
            ws.emit("progress", dict(self.progress))

        status, error = "finished", None
        try:
            with ws.lock:
                ws.log().write(plan["header"])
                ws.labels = list(plan["labels"])
            for part in (jobs[:1], jobs[1:]):  # the first alone: its mask shows after one forward
                if part and not self.requested:
                    segment_queries(predict, part, folder=ws.guard, steps=plan["steps"], options=OPTIONS,
                                    labels=plan["labels"], batch_size=self.batch_size, max_pixels=ws.max_pixels,
                                    log=_LockedLog(ws), device_name=str(self.segmenter.predictor.device),
                                    on_outcome=reported, stop=self, review="proposed")
            if self.requested:
                status = "stopped"
        except Exception as exc:  # the run ends, the server and the finished masks stay
            status, error = "failed", f"{type(exc).__name__}: {one_line(exc)}" if not isinstance(
                exc, InputError) else one_line(exc)
        finally:
            ws.busy = set()
        ws.emit("run", {"run": number, "status": status, "error": error,
                        "seconds": round(time.monotonic() - started, 3)})

