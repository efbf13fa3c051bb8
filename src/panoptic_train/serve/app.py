"""The HTTP API and the page of `panoptic-train serve`: FastAPI routes around one `MicroBatcher`.

A request is read and decoded in the thread pool, queued for the model's worker thread, and its
answer (PNG encoding, overlay drawing) is built in the thread pool again, so the event loop only
moves bytes and the worker only runs the network. Segments and the segment-id PNG come from
`inference.predict_files.panoptic_record`, which `panoptic-train predict` writes its files with.
Every error is a JSON object `{"detail": "<what went wrong and how to fix it>"}`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from panoptic_train._version import __version__
from panoptic_train.errors import ConfigError
from panoptic_train.inference.predict_files import encode_png, panoptic_record
from panoptic_train.inference.visualize import instance_color, visualize
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.serve.batching import BatchTimeoutError, MicroBatcher, QueueFullError
from panoptic_train.serve.config import ServeConfig
from panoptic_train.serve.model import ServedModel
from panoptic_train.serve.uploads import (
    FIELD,
    UploadError,
    decode_upload,
    max_upload_bytes,
    read_upload,
)

THRESHOLDS = ("threshold", "mask_threshold", "overlap_threshold")

ThresholdQuery = Annotated[
    float | None,
    Query(ge=0, le=1, description="Override the model's default (see GET /info)."),
]


def _request_thresholds(
    request: Request,
    threshold: ThresholdQuery = None,
    mask_threshold: ThresholdQuery = None,
    overlap_threshold: ThresholdQuery = None,
) -> PostprocessConfig:
    """The model's default thresholds with this request's overrides."""
    defaults: PostprocessConfig = request.app.state.default_thresholds
    return defaults.replace(threshold, mask_threshold, overlap_threshold)


Thresholds = Annotated[PostprocessConfig, Depends(_request_thresholds)]
_IMAGE_BODY = {
    "required": True,
    "description": f"The image: raw bytes as the body, or the multipart field '{FIELD}'.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {FIELD: {"type": "string", "format": "binary"}},
                "required": [FIELD],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ImageSize(BaseModel):
    width: int
    height: int


class Segment(BaseModel):
    id: int = Field(description="The segment's id in the PNG (R + 256·G + 256²·B; 0 = void)")
    category_id: int
    name: str
    isthing: bool
    score: float = Field(description="Class probability of the query that founded the segment")
    area: int = Field(description="Pixels")
    bbox: list[int] = Field(description="COCO box [x, y, width, height]")
    iscrowd: int = 0


class Prediction(BaseModel):
    image: ImageSize
    segments: list[Segment]
    panoptic_png: str = Field(
        description="Base64 COCO panoptic PNG of segment ids, as `panoptic-train predict` writes"
    )
    overlay_png: str | None = Field(None, description="Base64 overlay PNG, with ?overlay=true")


class ClassInfo(BaseModel):
    id: int
    name: str
    isthing: bool
    color: str = Field(description="Overlay colour of the class's first instance, #rrggbb")


class BatchingInfo(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_queue: int
    timeout_s: float


class Info(BaseModel):
    model: str
    runtime: str
    version: str
    classes: list[ClassInfo]
    input_size: ImageSize
    device: str
    precision: str
    thresholds: dict[str, float]
    batching: BatchingInfo
    max_image_pixels: int


class BatchStats(BaseModel):
    queued: int
    batches: int
    images: int
    largest_batch: int
    batch_sizes: dict[str, int] = Field(description="Batch size -> number of batches run")
    rejected: int = Field(description="Requests refused with 503 because the queue was full")
    timed_out: int
    failed: int
    mean_batch_ms: float


class Health(BaseModel):
    status: str
    batching: BatchStats


class Error(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error, "description": description}
    for status, description in (
        (400, "Empty body, malformed multipart, wrong field name or unknown query parameter"),
        (413, "Body or image larger than the server's --max-image-pixels allows"),
        (415, "The body is not an image"),
        (422, "Truncated or corrupt image, or a threshold outside [0, 1]"),
        (503, "The queue is full (see Retry-After)"),
        (504, "No result within the server's --timeout"),
    )
}


def create_app(model: ServedModel, config: ServeConfig | None = None) -> FastAPI:
    """The server's ASGI app; its model worker thread runs from startup to shutdown."""
    config = config or ServeConfig()
    batcher: MicroBatcher[np.ndarray, PostprocessConfig, Mapping[str, Any]] = MicroBatcher(
        model.predict_batch, config
    )
    predictor = model.predictor
    max_pixels = config.max_image_pixels
    max_bytes = max_upload_bytes(max_pixels)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    height, width = predictor.image_size
    info = Info(
        model=predictor.model_name,
        runtime=model.runtime,
        version=__version__,
        classes=[
            ClassInfo(
                id=class_id,
                name=name,
                isthing=predictor.is_thing[class_id],
                color=_hex(instance_color(class_id)),
            )
            for class_id, name in predictor.classes.items()
        ],
        input_size=ImageSize(width=width, height=height),
        device=model.device,
        precision=model.precision,
        thresholds={name: getattr(predictor.postprocess, name) for name in THRESHOLDS},
        batching=BatchingInfo(
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            timeout_s=config.timeout_s,
        ),
        max_image_pixels=max_pixels,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="panoptic-train serve",
        version=__version__,
        summary=f"Panoptic segmentation with {predictor.model_name}",
        description=(
            f"POST an image to /predict (segments and the COCO panoptic PNG) or /overlay (a "
            f"picture), as the raw body or the multipart field '{FIELD}'. Requests arriving "
            "together run as one batch. The page at / tries the model in a browser."
        ),
        lifespan=lifespan,
    )
    app.state.default_thresholds = predictor.postprocess
    _add_error_handlers(app)

    async def infer(
        request: Request, thresholds: PostprocessConfig
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        batcher.ensure_room()  # refuse before reading and decoding the body
        upload = await read_upload(request, max_bytes)
        image = await run_in_threadpool(decode_upload, upload, max_pixels)
        return image, await batcher.submit(image, thresholds)

    def prediction(image: np.ndarray, result: Mapping[str, Any], overlay: bool) -> Prediction:
        record = panoptic_record(result)
        segments = [
            Segment(
                **entry,
                name=predictor.classes[entry["category_id"]],
                isthing=predictor.is_thing[entry["category_id"]],
            )
            for entry in record.segments_info
        ]
        return Prediction(
            image=ImageSize(width=record.width, height=record.height),
            segments=segments,
            panoptic_png=_base64(record.png),
            overlay_png=_base64(draw_overlay(image, result)) if overlay else None,
        )

    def draw_overlay(image: np.ndarray, result: Mapping[str, Any]) -> bytes:
        return encode_png(visualize(image, result, predictor.classes))

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get(
        "/health",
        summary="Liveness, queue length and batching counters",
        responses={503: {"model": Health, "description": "The model worker is not running"}},
    )
    async def health(response: Response) -> Health:
        if not batcher.alive:
            response.status_code = 503
        status = "ok" if batcher.alive else "model worker stopped"
        return Health(status=status, batching=BatchStats(**batcher.stats()))

    @app.get("/info", summary="The model: name, classes, input size, device, precision, limits")
    async def model_info() -> Info:
        return info

    @app.post(
        "/predict",
        summary="Segments and the COCO panoptic PNG of an image",
        openapi_extra={"requestBody": _IMAGE_BODY},
        responses=_ERRORS,
    )
    async def predict(
        request: Request,
        thresholds: Thresholds,
        overlay: Annotated[bool, Query(description="Also return the overlay PNG")] = False,
    ) -> Prediction:
        _check_query(request, (*THRESHOLDS, "overlay"))
        image, result = await infer(request, thresholds)
        return await run_in_threadpool(prediction, image, result, overlay)

    @app.post(
        "/overlay",
        summary="The image with its segments drawn over it (PNG)",
        openapi_extra={"requestBody": _IMAGE_BODY},
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **_ERRORS},
    )
    async def overlay(request: Request, thresholds: Thresholds) -> Response:
        _check_query(request, THRESHOLDS)
        image, result = await infer(request, thresholds)
        png = await run_in_threadpool(draw_overlay, image, result)
        return Response(png, media_type="image/png")

    return app


def _check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse misspelt parameters (`?treshold=0.5`) instead of silently using the default."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise HTTPException(
            400,
            f"Unknown query parameter(s) {', '.join(map(repr, unknown))} for "
            f"{request.url.path}; it takes {', '.join(allowed)}.",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"detail": str} with the status that says what kind it is."""

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, error.status)

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, error: QueueFullError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return JSONResponse({"detail": str(error)}, 503, headers=headers)

    @app.exception_handler(BatchTimeoutError)
    async def timed_out(_: Request, error: BatchTimeoutError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 504)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(map(str, problem['loc'][1:]))}={problem.get('input')!r}: {problem['msg']}"
            for problem in error.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, 422)

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, error: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 422)

    @app.exception_handler(Exception)
    async def internal(_: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the error after this response, so uvicorn logs its traceback.
        return JSONResponse({"detail": f"Internal error: {type(error).__name__}: {error}"}, 500)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(channel):02x}" for channel in rgb)
