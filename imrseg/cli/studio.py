"""`imrseg app`: label a folder in the browser, on the server `imrseg serve` runs."""
from __future__ import annotations

import threading
import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .options import (BatchSizeOption, ClipWeightsOption, DeviceOption, HubNamespaceOption, MaxPixelsOption,
                      Precision, PrecisionOption, StepsOption, WeightsOption, flag)

APP_EXAMPLES = """Examples:

  imrseg app photos/ --out photos-labels --open

  IMRSEG_TOKEN=secret imrseg app photos/ --host 0.0.0.0 --port 8080
"""


@app.command("app", epilog=APP_EXAMPLES)
def app_command(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="The folder of images to label.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where masks, overlays and results.jsonl go, as "
                                                          "`imrseg segment` writes them.")] = Path("imrseg-out"),
    weights: WeightsOption = None, clip_weights: ClipWeightsOption = None, hub_namespace: HubNamespaceOption = None,
    device: DeviceOption = "auto", precision: PrecisionOption = Precision.fp32, steps: StepsOption = None,
    batch_size: BatchSizeOption = None, max_pixels: MaxPixelsOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback needs --token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 9090,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="IMRSEG_TOKEN", show_envvar=True,
        help="Secret the page must be opened with once (/app/?token=...), and API clients must bring.")] = None,
    open_browser: Annotated[bool, flag("--open", "Open the page in the browser once the server answers.")] = False,
) -> None:
    """Label FOLDER in the browser: try labels and examples, watch the masks arrive, correct them, teach by correction."""
    from ..arguments import check_count
    from ..serve.limits import Limits
    from ..serve.server import check_binding, check_port_free, serve
    from ..studio import Runner, Workspace, page_hosts, router

    check_binding(host, token, port)
    check_port_free(host, port)
    if batch_size is not None:
        check_count("batch_size", batch_size)
    if max_pixels is not None:
        check_count("max_pixels", max_pixels, minimum=0)
    workspace = Workspace(folder, out, max_pixels).open()  # its lock: one app or run on `out` at a time
    try:
        from ..predictor import Predictor  # torch, once the folder is known to be right

        predictor = Predictor.from_pretrained(weights, clip_weights, device=device, precision=precision.value,
                                              steps=steps, hub_namespace=hub_namespace)
        batch = batch_size or (8 if predictor.device.type == "cuda" else 2)
        limits = Limits(**({"max_pixels": max_pixels} if max_pixels else {}))
        hosts = page_hosts(host, port)
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/app/"
        typer.echo(f"imrseg: {len(workspace.images)} images of {folder}; open {url}"
                   + ("?token=<your token>" if token else ""), err=True)
        if open_browser:
            threading.Timer(1.0, webbrowser.open, [url + (f"?token={token}" if token else "")]).start()
        runner = None

        def routers(segmenter):
            nonlocal runner
            runner = Runner(workspace, segmenter, batch)
            return [router(workspace, runner, segmenter, limits, hosts)]

        serve(predictor, host, port, token=token, limits=limits, batch_size=batch, routers=routers)
        if runner is not None:
            runner.stop()
            runner.join(60)
    finally:
        workspace.close()
