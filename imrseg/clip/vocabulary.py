"""The words CLIP sees: the prompt template, and the competitors a free-text
label's CLIP softmax is taken against.

Grad-CAM differentiates the label's softmax probability, which needs other
classes to compete with: alone, the label's probability is 1 whatever the image,
its gradient 0 and the CAM flat. By default the competitors are the PASCAL VOC
and COCO class names; any list is used without the label itself and its exact
synonyms (a synonym would split the label's own probability), and a list that
leaves nothing is refused."""
from __future__ import annotations

from collections.abc import Sequence
from string import Formatter

from ..arguments import check_text
from ..errors import InputError

DEFAULT_TEMPLATE = "a photo of a {c}"  # the authors' prompt

SYNONYMS = [
    {"aeroplane", "airplane", "plane", "aircraft"},
    {"bicycle", "bike"},
    {"car", "automobile"},
    {"diningtable", "table"},
    {"motorbike", "motorcycle"},
    {"person", "people", "human", "man", "woman"},
    {"pottedplant", "plant", "houseplant"},
    {"sofa", "couch"},
    {"tvmonitor", "tv", "television", "monitor"},
    {"cow", "cattle"},
]


def _norm(name: str) -> str:
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return key[:-1] if key.endswith("s") and len(key) > 3 else key


def _same_thing(a: str, b: str) -> bool:
    na, nb = _norm(a), _norm(b)
    return na == nb or any(na in group and nb in group for group in SYNONYMS)


def check_template(template: str) -> None:
    """InputError unless `template` is a prompt with the class name as `{c}` and no other
    field (literal braces are written `{{` and `}}`), so `template.format(c=name)` works.
    The name goes in as it is: a format spec or conversion (`{c:>9999}`, `{c!r}`) is
    refused, as it could make the prompt any length."""
    hint = "write the class name as {c} and literal braces as {{ and }}"
    check_text("template", template)
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:  # a lone brace
        raise InputError(f"`template` {template!r} is not a template ({exc}); {hint}") from None
    fields = [name for name, _, _ in parsed]
    shaped = [f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
              for name, spec, conversion in parsed if spec or conversion]
    if shaped:
        raise InputError(f"`template` {template!r} has {', '.join(shaped)}: the class name goes in as it is, "
                         f"with no format spec or conversion; {hint}")
    others = sorted({"{" + name + "}" for name in fields if name != "c"})
    if others:
        raise InputError(f"`template` {template!r} has {', '.join(others)}, which nothing fills in; {hint}")
    if not fields:
        raise InputError(f"`template` {template!r} has no {{c}} for the class name; {hint}")


def background_vocabulary(label: str, background: Sequence[str] | None = None,
                          first: Sequence[str] = ()) -> list[str]:
    """[label, competitors...]: `first` (the other classes of a run), then `background`,
    which replaces the default PASCAL + COCO names. InputError when they leave the label
    no competitor (blank names do not count)."""
    from ..data.classes import COCO_CLASSES, PASCAL_CLASSES

    given = list(background) if background is not None else list(PASCAL_CLASSES) + list(COCO_CLASSES)
    names = [*first, *given]
    out, seen = [label], {_norm(label)}
    for name in (n.strip() for n in names):
        if name and not _same_thing(name, label) and _norm(name) not in seen:
            out.append(name)
            seen.add(_norm(name))
    if len(out) == 1:
        given = ", ".join(repr(n) for n in names) or "nothing"
        raise InputError(f"`background` leaves the label {label!r} nothing to compete with in CLIP (given: "
                         f"{given}; the label and its synonyms are left out), so its CAM would be flat; name "
                         "other classes in `background`, or leave it out for the PASCAL and COCO names")
    return out


def class_vocabulary(label: str, labels: Sequence[str], background: Sequence[str] | None = None) -> list[str]:
    """[label, the other labels, the background competitors...] (synonyms of the
    label and repeats left out): the names the label's CLIP softmax is taken over,
    so that each class's CAM is drawn away from the other classes asked for. With
    one label it is `background_vocabulary(label, background)`."""
    return background_vocabulary(label, background, first=[other for other in labels if other != label])


def folder_vocabulary(class_names) -> list[str]:
    """What CLIP sees: the class names (underscores as spaces), then the PASCAL and
    COCO names that are none of them, so that even a folder of one class has
    competitors for its CLIP softmax."""
    names = [n.replace("_", " ") for n in class_names]
    common = None
    for name in names:
        others = set(background_vocabulary(name)[1:])
        common = others if common is None else common & others
    return names + [n for n in background_vocabulary(names[0])[1:] if n in common]
