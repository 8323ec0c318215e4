"""`imrseg app`: label a folder in the browser. A page served beside the /v1 API by the
same warm server: try labels and example images, watch each mask arrive and each
refinement step, accept, reject or correct masks, and make a correction an example
for the rest; everything saved as it happens in the layout `imrseg segment` writes.

workspace  the folder's images, the output folder's rows, classes, reviews, corrections
runs       a run of the model over what is not yet accepted, streamed mask by mask
routes     the page and its API under /app, with server-sent events
page/      the page itself: HTML, CSS and plain JavaScript, no build step"""
from .routes import page_hosts, router
from .runs import Runner
from .workspace import Workspace

__all__ = ["Runner", "Workspace", "page_hosts", "router"]
