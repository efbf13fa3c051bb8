"""`panoptic-train serve`: a model behind an HTTP API (FastAPI on uvicorn) with dynamic batching,
and a page at `/` to try it in a browser.

`model` loads what is served (a PyTorch model or an ONNX file), `batching` gathers concurrent
requests into batches for one worker thread, `uploads` reads and checks the images, `app` has
the routes, `static/index.html` is the page. Needs the `serve` extra.
"""
