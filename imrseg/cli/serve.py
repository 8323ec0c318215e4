"""`imrseg serve`: the model kept warm behind HTTP, for annotation tools and scripts."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .options import (BatchSizeOption, ClipWeightsOption, DeviceOption, HubNamespaceOption, Precision,
                      PrecisionOption, StepsOption, WeightsOption)

SERVE_EXAMPLES = """Examples:

  imrseg serve --weights pascal-resnet50-fold0

  IMRSEG_TOKEN=secret imrseg serve --host 0.0.0.0 --root /data/images --weights pascal-resnet50-fold0
"""


@app.command(epilog=SERVE_EXAMPLES)
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback needs --token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 9090,
    weights: WeightsOption = None, clip_weights: ClipWeightsOption = None, hub_namespace: HubNamespaceOption = None,
    device: DeviceOption = "auto", precision: PrecisionOption = Precision.fp32, steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="IMRSEG_TOKEN", show_envvar=True,
        help="Secret every request but /health and /v1/health must bring (Bearer, or the HTTP Basic password).")]
    = None,
    root: Annotated[Optional[Path], typer.Option(
        "--root", metavar="DIR", help="Folder whose images requests may name by path (default: uploads only).")]
    = None,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body.")] = 64 << 20,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest image, in pixels (checked before "
                                                                 "decoding).")] = 40_000_000,
    max_images: Annotated[int, typer.Option("--max-images", help="Most query and support images a request.")] = 32,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Most queries waiting; more are answered 503 "
                                                               "with Retry-After.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="A request's time limit.")] = 90.0,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", help="How long a batch waits for more requests to join it.")] = 5.0,
) -> None:
    """Serve the model over HTTP (imrseg's /v1 API; Label Studio's ML-backend protocol) until Ctrl-C."""
    from ..arguments import check_count
    from ..serve.limits import Limits
    from ..serve.server import check_binding, check_port_free, check_root, serve as run_server

    limits = Limits(max_body_bytes=max_body_bytes, max_pixels=max_pixels, max_images=max_images,
                    max_queue=max_queue, timeout_s=timeout)
    check_binding(host, token, port)
    check_port_free(host, port)
    check_root(root)
    if batch_size is not None:
        check_count("batch_size", batch_size)
    from ..predictor import Predictor  # torch, once the flags are known to be right
    predictor = Predictor.from_pretrained(weights, clip_weights, device=device, precision=precision.value,
                                          steps=steps, hub_namespace=hub_namespace)
    typer.echo(f"imrseg: serving on http://{host}:{port} ({predictor.device}, {predictor.precision})", err=True)
    run_server(predictor, host, port, token=token, root=root, limits=limits,
               batch_size=batch_size or (8 if predictor.device.type == "cuda" else 2), max_wait_ms=max_wait_ms)
