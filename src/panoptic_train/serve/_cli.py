"""`panoptic-train serve`: an HTTP API with dynamic batching, and a page to try a model in."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import get_args

from panoptic_train._types import InferencePrecision
from panoptic_train.errors import ConfigError

HELP = "Serve a model over HTTP: JSON/PNG API with dynamic batching and a page to try it in."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="exported model (exported_*.pt), training checkpoint (.ckpt), fine-tuned model name, "
        "or an exported .onnx file (run with onnxruntime)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (8000; 0 = any free port)"
    )
    parser.add_argument("--device", help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=get_args(InferencePrecision),
        help="(auto; an ONNX file runs in the precision it was exported with)",
    )
    from panoptic_train.serve.config import ServeConfig  # pydantic: only for this command

    defaults = ServeConfig()
    for flag, kind, default, meaning in (
        ("--max-batch", int, defaults.max_batch, "most images run through the model at once"),
        (
            "--max-wait-ms",
            float,
            defaults.max_wait_ms,
            "how long the first request of a batch waits for others to join it",
        ),
        (
            "--max-queue",
            int,
            defaults.max_queue,
            "requests waiting for the model beyond which new ones get 503 + Retry-After",
        ),
        (
            "--max-image-pixels",
            int,
            defaults.max_image_pixels,
            "larger images get 413, from their header, before they are decoded",
        ),
        (
            "--timeout",
            float,
            defaults.timeout_s,
            "seconds a request may wait for its result (queue + inference) before 504",
        ),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{meaning} ({default})")


def run(args: argparse.Namespace) -> int:
    from panoptic_train._validate import parse_config
    from panoptic_train.errors import require
    from panoptic_train.serve.config import ServeConfig

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "panoptic-train serve")
    import uvicorn

    from panoptic_train.serve.app import create_app
    from panoptic_train.serve.model import load_served_model

    options = {
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_queue": args.max_queue,
        "timeout_s": args.timeout,
        "max_image_pixels": args.max_image_pixels,
    }
    config = parse_config(ServeConfig, options, "", "serve options")
    listener = _listen(args.host, args.port)  # a taken port fails now, not after the model loads
    try:
        print(f"Loading {args.model} ...", file=sys.stderr)
        model = load_served_model(args.model, args.device, args.precision)
        app = create_app(model, config)
        model.warm_up()
        host, port = listener.getsockname()[:2]
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        print(
            f"Serving {model.predictor.model_name} ({model.runtime}, {model.device}, "
            f"{model.precision}) at {url} (API docs: {url}docs)",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[listener])
    finally:
        listener.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number: use 0..65535 (0 = any free port).")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise ConfigError(
            f"Cannot listen on {host}:{port}: {error}. Pick another --port (0 = any free port) "
            "or stop the program using it."
        ) from error
