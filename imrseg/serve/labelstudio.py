"""Label Studio's ML-backend protocol, served by the same process as imrseg's own API.

Label Studio (1.2x) calls: `GET /health` and `GET /` (is the backend up: 1 s),
`POST /setup` (the project's config and the connection's extra parameters: 3 s; answers
the model version), `POST /predict` (a batch of tasks: 100 s; answers one prediction per
task, in order), `POST /webhook` (annotations made, changed or deleted) and
`GET /metrics`. /health and /setup never wait on the model. Each project's supports are
the connection's extra `supports` and the masks people drew in its annotated tasks (read
from Label Studio on the first prediction, then kept current by /predict's tasks and the
webhook); a label with none is segmented zero-shot from its name. Auth is the app's.
See `labelstudio_config`, `labelstudio_projects`, `labelstudio_fetch`, `labelstudio_results`."""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from ..errors import InputError, param
from ..images import load_image
from .api import inside_root
from .app import error
from .labelstudio_config import Control, parse_label_config
from .labelstudio_fetch import FetchError, LabelStudioFiles
from .labelstudio_projects import Project, Projects, drawn_supports, parse_extra_params
from .labelstudio_results import task_prediction
from .limits import Limits
from .service import ClassRequest, Segmenter, decode_image

LOG = logging.getLogger("uvicorn.error")
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")
SUPPORT_BYTES_KEPT = 64 * 1024 * 1024  # fetched support images kept, in bytes
TASK_PAGES = 10  # pages of 100 tasks read when looking for a project's annotations


def router(segmenter: Segmenter, limits: Limits, label_studio_url: str | None = None,
           api_key: str | None = None) -> APIRouter:
    """The ML-backend routes for `segmenter`. Label Studio's address and key default to
    LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (else what /setup sends)."""
    backend = _Backend(segmenter, limits, label_studio_url or os.environ.get("LABEL_STUDIO_URL"),
                       api_key or os.environ.get("LABEL_STUDIO_API_KEY"))
    routes = APIRouter(tags=["Label Studio ML backend"])

    @routes.get("/", summary="Label Studio: is the backend up")
    @routes.get("/health", summary="Label Studio: is the backend up")
    async def health() -> dict:
        return {"status": "UP", "model_class": "imrseg"}

    @routes.post("/setup", summary="Label Studio: a project connects (its config and extra params)")
    async def setup(body: dict = Body(...)) -> dict:
        return backend.setup(body)

    @routes.post("/predict", summary="Label Studio: one prediction per task, in order")
    def predict(request: Request, body: dict = Body(...)):
        try:
            return backend.predict(body, getattr(request.app.state, "root", None))
        except FetchError as exc:
            LOG.warning("Label Studio /predict: %s", exc)
            return error(502, str(exc))
        except InputError as exc:
            LOG.warning("Label Studio /predict: %s", exc)
            raise

    @routes.post("/webhook", summary="Label Studio: annotations made, changed or deleted")
    def webhook(body: dict = Body(...)):
        return JSONResponse(backend.webhook(body), status_code=201)

    @routes.get("/metrics", summary="Label Studio: the backend's counters")
    async def metrics() -> dict:
        return {"projects": len(backend.projects), "requests": segmenter.requests,
                "forwards": segmenter.forwards, "waiting": segmenter.waiting}

    return routes


class _Backend:
    def __init__(self, segmenter: Segmenter, limits: Limits, url: str | None, api_key: str | None):
        self.segmenter, self.limits = segmenter, limits
        self.projects = Projects()
        self.default_url, self.default_key = url, api_key
        self._files: dict[tuple, LabelStudioFiles] = {}
        self._support_bytes: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ routes
    def setup(self, body: dict) -> dict:
        project_id = _project_id(body.get("project"), "project")
        params = parse_extra_params(body.get("extra_params"))
        parse_label_config(body.get("schema"), "schema", params.prompts)
        with self.projects.lock:
            project = self.projects.get(project_id)
            project.config, project.params = body["schema"], params
            for name in ("hostname", "access_token"):
                value = body.get(name)
                setattr(project, name, value if isinstance(value, str) and value else None)
        return {"model_version": self.model_version(project)}

    def predict(self, body: dict, root) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise InputError(f"{param('tasks')}: expected a list of tasks")
        project_id = _project_id(body.get("project"), "project")
        project = self.projects.get(project_id)
        config = body.get("label_config") or project.config
        config_field = "schema" if config is project.config and config else "label_config"
        controls = parse_label_config(config, config_field, project.params.prompts)
        files = self.files(project)
        if project.params.annotations:
            self.learn(project, project_id, controls, tasks, files)
        version = self.model_version(project)
        if not tasks:
            return {"results": [], "model_version": version}
        made: list[list[dict]] = [[] for _ in tasks]
        chunk = max(1, min(self.limits.max_images, self.limits.max_queue))
        for image_field, group in _by_field(controls).items():
            classes = self.classes(project, group, files, root)
            for first in range(0, len(tasks), chunk):
                images = [decode_image(self.task_image(task, first + i, image_field, files),
                                       f"tasks[{first + i}].data.{image_field}", self.limits)
                          for i, task in enumerate(tasks[first:first + chunk])]
                results = self.segmenter.segment_sync(images, classes, steps=project.params.steps)
                for i, result in enumerate(results):
                    made[first + i].append(task_prediction(group, result, version))
        predictions = [parts[0] if len(parts) == 1 else
                       {"result": [r for p in parts for r in p["result"]], "score": min(p["score"] for p in parts),
                        "model_version": version} for parts in made]
        return {"results": predictions, "model_version": version}

    def webhook(self, body: dict) -> dict:
        action = body.get("action")
        if action not in ANNOTATION_EVENTS:
            return {"status": "ignored", "action": action if isinstance(action, str) else None}
        project_info = body.get("project")
        if not isinstance(project_info, dict):
            raise InputError(f"{param('project')}: expected the project object Label Studio sends")
        project_id = _project_id(project_info.get("id"), "project.id")
        annotation, task = body.get("annotation"), body.get("task")
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise InputError(f"{param('annotation')}: expected the annotation object Label Studio sends")
        with self.projects.lock:
            project = self.projects.get(project_id)
            if project_info.get("label_config"):
                project.config = project_info["label_config"]
            if action == "ANNOTATION_DELETED" or not project.params.annotations:
                project.annotated(annotation["id"], [])
            else:
                controls = parse_label_config(project.config, "project.label_config", project.params.prompts)
                project.annotated(annotation["id"], drawn_supports(annotation, task or {}, controls,
                                                                   self.limits.max_pixels, "annotation"))
        return {"status": "ok", "model_version": self.model_version(project)}

    # ------------------------------------------------------------------ helpers
    def model_version(self, project: Project) -> str:
        base = self.segmenter.info()["model_version"]
        with self.projects.lock:
            has_supports = bool(project.params.supports or project.drawn)
            return f"{base}-{project.digest()}" if has_supports else base

    def files(self, project: Project) -> LabelStudioFiles:
        url = self.default_url or project.hostname
        key = self.default_key or project.access_token
        with self._lock:
            if (url, key) not in self._files:
                if len(self._files) >= 8:
                    self._files.pop(next(iter(self._files))).close()
                self._files[(url, key)] = LabelStudioFiles(url, key, self.limits.max_body_bytes)
            return self._files[(url, key)]

    def learn(self, project: Project, project_id: str, controls: tuple[Control, ...], tasks: list,
              files: LabelStudioFiles) -> None:
        """Annotated tasks become supports: those in this request, and on a project's
        first prediction those Label Studio holds (when it can be read)."""
        if not project.scanned:
            project.scanned = True
            try:
                tasks = self.annotated_tasks(project_id, files) + tasks
            except (FetchError, InputError) as exc:
                LOG.warning("Label Studio project %s: its annotated tasks were not read (%s)", project_id, exc)
        for task in tasks:
            for annotation in task.get("annotations") or ():
                if not isinstance(annotation, dict) or "id" not in annotation:
                    continue
                try:
                    made = drawn_supports(annotation, task, controls, self.limits.max_pixels,
                                          f"annotation {annotation['id']}")
                except InputError as exc:  # one odd annotation does not stop the project's predictions
                    LOG.warning("Label Studio project %s: task %s left out of the supports: %s", project_id,
                                task.get("id"), exc)
                    continue
                with self.projects.lock:
                    project.annotated(annotation["id"], made)

    def annotated_tasks(self, project_id: str, files: LabelStudioFiles) -> list:
        out = []
        for page in range(1, TASK_PAGES + 1):
            answer = files.json(f"api/tasks/?project={project_id}&fields=all&page_size=100&page={page}",
                                "project")
            tasks = answer.get("tasks") if isinstance(answer, dict) else answer
            if not isinstance(tasks, list) or not tasks:
                break
            out += [t for t in tasks if isinstance(t, dict) and t.get("annotations")]
            if isinstance(answer, dict) and len(tasks) < 100:
                break
        return out

    def classes(self, project: Project, controls: list[Control], files: LabelStudioFiles, root) -> list[ClassRequest]:
        drawn = project.supports_by_label() if project.params.annotations else {}
        out, seen = [], set()
        for control in controls:
            for label in control.labels:
                if label.name in seen:
                    continue
                seen.add(label.name)
                mine = [s for s in drawn.get(label.name, ()) if s.image]
                refs = project.params.supports.get(label.name, ())
                if mine:
                    images, masks = [], []
                    for k, s in enumerate(mine):
                        image = self.support(s.image, f"support of {label.name!r} (task {s.task_id})", files,
                                             root, s.task_id)
                        if image.size[::-1] != s.shape:
                            LOG.warning("Label Studio: task %s's %r mask is %s, its image %s: left out", s.task_id,
                                        label.name, s.shape, image.size[::-1])
                            continue
                        images.append(image)
                        masks.append(s.mask())
                    if images:
                        out.append(ClassRequest(label.name, label.prompt, tuple(images), tuple(masks)))
                        continue
                images = tuple(self.support(ref, f"extra_params.supports.{label.name}[{k}]", files, root)
                               for k, ref in enumerate(refs))
                out.append(ClassRequest(label.name, label.prompt, images))
        return out

    def support(self, ref: str, field: str, files: LabelStudioFiles, root, task_id=None):
        """A support image at full size: a path inside the server's root, or fetched (the
        bytes kept, up to SUPPORT_BYTES_KEPT, so each prediction does not fetch it again)."""
        if _is_local(ref):
            try:
                return load_image(inside_root(ref, field, root), max_pixels=self.limits.max_pixels,
                                  draft_size=0).image
            except InputError as exc:
                raise InputError(f"{field}: {str(exc)}") from None
        with self._lock:
            data = self._support_bytes.get(ref)
            if data is not None:
                self._support_bytes.move_to_end(ref)
        if data is None:
            data = files.fetch(ref, field, task_id)
            with self._lock:
                self._support_bytes[ref] = data
                while sum(len(v) for v in self._support_bytes.values()) > SUPPORT_BYTES_KEPT:
                    self._support_bytes.popitem(last=False)
        return decode_image(data, field, self.limits, full_size=True).image

    def task_image(self, task: dict, index: int, image_field: str, files: LabelStudioFiles) -> bytes:
        data = task.get("data")
        field = f"tasks[{index}].data.{image_field}"
        if not isinstance(data, Mapping) or image_field not in data:
            raise InputError(f"{param(field)}: missing; the labelling config reads the image from "
                             f"${image_field}")
        return files.fetch(data[image_field], field, task.get("id"))


def _project_id(value: object, field: str) -> str:
    """Label Studio names a project "ID.CREATED" in /setup and /predict, by its id elsewhere."""
    text = str(value).split(".", 1)[0] if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise InputError(f"{param(field)}: expected the project's id, got {value!r:.40}")
    return text


def _by_field(controls: tuple[Control, ...]) -> dict[str, list[Control]]:
    out: dict[str, list[Control]] = {}
    for control in controls:
        out.setdefault(control.field, []).append(control)
    return out


def _is_local(ref: str) -> bool:
    return "://" not in ref and not ref.startswith(("/", "data:", "upload/"))
