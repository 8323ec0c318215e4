"""A Label Studio project's labelling config, read for what imrseg can answer: each
`BrushLabels` and `PolygonLabels` control, the `Image` it points at (`toName`) and the
task field that image comes from (`value="$image"`), and its labels.

Label Studio sends the config as XML (`schema` in /setup, `label_config` in /predict);
a config imrseg cannot use is a one-line `InputError` naming that field and the tag at
fault. Labels keep the text Label Studio shows and stores (`alias` when the config gives
one, else `value`); the prompt CLIP reads is the label's `value`, or the word a mapping
gives for it."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InputError, one_line, param

CONTROL_TYPES = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}
MAX_CONFIG_CHARS = 1_000_000


@dataclass(frozen=True)
class Label:
    """One label of a control: `name` as Label Studio stores it in results, `prompt`
    the text CLIP reads for it."""

    name: str
    prompt: str


@dataclass(frozen=True)
class Control:
    """A BrushLabels or PolygonLabels tag: `type` is the result type Label Studio
    expects ("brushlabels" or "polygonlabels"), `from_name` the control's name,
    `to_name` the Image tag's, `field` the task data key holding the image's URL."""

    type: str
    from_name: str
    to_name: str
    field: str
    labels: tuple[Label, ...]


def parse_label_config(text: object, field: str,
                       prompts: Mapping[str, str] | None = None) -> tuple[Control, ...]:
    """The controls imrseg answers in the config `text`, sent as the request's `field`;
    `prompts` maps label names (or values) to the words CLIP reads instead."""
    where = param(field)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: missing; Label Studio sends the project's labelling config (XML) here")
    if len(text) > MAX_CONFIG_CHARS:
        raise InputError(f"{where}: longer than {MAX_CONFIG_CHARS} characters")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise InputError(f"{where}: not a labelling config (XML: {one_line(exc)})") from None
    images = {}
    for tag in root.iter("Image"):
        name, value = tag.get("name"), tag.get("value", "")
        if name and value.startswith("$") and len(value) > 1:
            images[name] = value[1:]
    controls = [_control(tag, images, where, prompts or {}) for tag in root.iter() if tag.tag in CONTROL_TYPES]
    if not controls:
        raise InputError(f"{where}: no BrushLabels or PolygonLabels tag; imrseg answers those two")
    return tuple(controls)


def _control(tag: ElementTree.Element, images: dict[str, str], where: str,
             prompts: Mapping[str, str]) -> Control:
    name, to_name = tag.get("name"), tag.get("toName")
    shown = f"<{tag.tag} name={name!r}>" if name else f"<{tag.tag}>"
    if not name:
        raise InputError(f"{where}: {shown} has no name attribute")
    if not to_name:
        raise InputError(f"{where}: {shown} has no toName attribute")
    if to_name not in images:
        raise InputError(f"{where}: {shown} has toName={to_name!r}, which is no <Image> tag with a "
                         f"value like \"$image\"")
    labels = []
    for child in tag.iter("Label"):
        value = child.get("value")
        if not value:
            raise InputError(f"{where}: a <Label> of {shown} has no value attribute")
        shown_name = child.get("alias") or value
        prompt = prompts.get(shown_name) or prompts.get(value) or value
        labels.append(Label(shown_name, prompt))
    if not labels:
        raise InputError(f"{where}: {shown} has no <Label> tags")
    names = [label.name for label in labels]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{where}: {shown} has the label {repeated[0]!r} more than once")
    return Control(CONTROL_TYPES[tag.tag], name, to_name, images[to_name], tuple(labels))
