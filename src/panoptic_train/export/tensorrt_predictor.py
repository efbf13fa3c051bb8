"""Run a TensorRT engine written by `export_tensorrt`.

Only the network runs in TensorRT: images are prepared by `data.transforms.resize_and_pad` and
the logits merged by `runtime.postprocess`, on the GPU, exactly as `predict` does, so results
differ from PyTorch only by the engine's arithmetic. Buffers are torch CUDA tensors (torch is a
dependency anyway), handed to TensorRT by address.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from panoptic_train._types import PathLike
from panoptic_train.data.transforms import resize_and_pad
from panoptic_train.errors import ConfigError, PanopticTrainError, WeightsError, require
from panoptic_train.export.metadata import INPUT_NAME, LOGIT_OUTPUTS, read_sidecar
from panoptic_train.export.predictor import ExportedModelPredictor, to_category_ids
from panoptic_train.runtime.inputs import to_image_tensor
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_postprocess


class GPUUnavailableError(PanopticTrainError, RuntimeError):
    """TensorRT was asked for on a machine where PyTorch sees no CUDA GPU."""


def require_tensorrt(purpose: str) -> Any:
    """The tensorrt module, on a machine with a CUDA GPU; clear errors otherwise."""
    trt = require("tensorrt", "tensorrt", purpose)
    if not torch.cuda.is_available():
        raise GPUUnavailableError(
            f"{purpose} needs an NVIDIA GPU with CUDA, but PyTorch sees none here "
            "(torch.cuda.is_available() is False). Build and run engines on the machine (and GPU "
            "model) that will use them; without a GPU, use export_onnx and OnnxPredictor."
        )
    return trt


class TensorRTEngine:
    """A deserialized engine with one execution context: (B, 3, H, W) images -> logits.

    min_batch_size / max_batch_size: the engine's optimisation profile; smaller batches are
    padded up to min_batch_size.
    """

    def __init__(self, engine: bytes, device: torch.device) -> None:
        trt = require_tensorrt("Running a TensorRT engine")
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):  # engines and contexts belong to the current device
            self._engine = self._runtime.deserialize_cuda_engine(engine)
        if self._engine is None:
            raise WeightsError(
                "TensorRT cannot load this engine (its log above says why): engines only run "
                "with the TensorRT version and GPU model they were built with. Rebuild it with "
                "export_tensorrt on this machine."
            )
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        missing = {INPUT_NAME, *LOGIT_OUTPUTS} - names
        if missing:
            raise WeightsError(
                f"The engine lacks the tensors {sorted(missing)}: it was not built by "
                "export_tensorrt from a logits graph."
            )
        for name in LOGIT_OUTPUTS:
            if self._engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise WeightsError(f"Engine output {name!r} is not float32.")
        smallest, _, largest = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch_size, self.max_batch_size = int(smallest[0]), int(largest[0])
        with torch.cuda.device(device):
            self._context = self._engine.create_execution_context()

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of `images` (at most max_batch_size of them), as float32 CUDA tensors."""
        count = images.shape[0]
        if count > self.max_batch_size:
            raise ConfigError(
                f"The engine takes at most {self.max_batch_size} images at once, got {count}; "
                "rebuild it with a larger max_batch_size or predict with a smaller batch_size."
            )
        images = images.to(self.device, torch.float32).contiguous()
        if count < self.min_batch_size:
            padding = images.new_zeros((self.min_batch_size - count, *images.shape[1:]))
            images = torch.cat((images, padding))
        if not self._context.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise ConfigError(
                f"The engine does not accept input of shape {tuple(images.shape)}; it was built "
                f"for batches {self.min_batch_size}..{self.max_batch_size} at "
                f"{tuple(self._engine.get_tensor_shape(INPUT_NAME))[1:]}."
            )
        self._context.set_tensor_address(INPUT_NAME, images.data_ptr())
        outputs = []
        for name in LOGIT_OUTPUTS:
            shape = tuple(self._context.get_tensor_shape(name))
            output = torch.empty(shape, dtype=torch.float32, device=self.device)
            self._context.set_tensor_address(name, output.data_ptr())
            outputs.append(output)
        # Enqueued on torch's current stream, so the torch ops that read the outputs wait for it.
        stream = torch.cuda.current_stream(self.device)
        with torch.cuda.device(self.device):
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the engine (its log above says why).")
        class_logits, mask_logits = outputs
        return class_logits[:count], mask_logits[:count]


class TensorRTPredictor(ExportedModelPredictor):
    """`predict` on a TensorRT engine written by `export_tensorrt` (metadata in `<engine>.json`).

    Inputs and outputs as `PanopticSegmentationModel.predict` (torch CPU tensors). Batches are
    capped at the engine's max_batch_size.
    """

    def __init__(self, path: PathLike, device: str | torch.device = "cuda") -> None:
        require_tensorrt("Running a TensorRT engine")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine '{path}' does not exist.")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"TensorRT engines run on CUDA devices, not {device!r}.")
        metadata = read_sidecar(path)
        self.engine = TensorRTEngine(path.read_bytes(), self.device)
        super().__init__(metadata)
        self.max_batch_size = self.engine.max_batch_size
        classes = metadata.classes
        self._category_ids = torch.tensor(classes.class_ids, device=self.device)
        self._thing_flags = torch.tensor(classes.is_thing, device=self.device)

    @torch.inference_mode()
    def _predict_batch(
        self, images: Sequence[Any], config: PostprocessConfig, max_image_pixels: int
    ) -> list[dict[str, Tensor]]:
        metadata = self.metadata
        tensors = [to_image_tensor(image, max_image_pixels) for image in images]
        prepared = [
            resize_and_pad(tensor, metadata.image_size, metadata.mean, metadata.std)
            for tensor in tensors
        ]
        batch = torch.stack([inputs for inputs, _ in prepared]).to(self.device)
        class_logits, mask_logits = self.engine(batch)
        predictions = panoptic_postprocess(
            class_logits,
            mask_logits,
            self._thing_flags,
            input_size=metadata.image_size,
            resized_sizes=[resized for _, resized in prepared],
            orig_sizes=[(tensor.shape[-2], tensor.shape[-1]) for tensor in tensors],
            config=config,
        )
        return [
            {key: value.cpu() for key, value in to_category_ids(p, self._category_ids).items()}
            for p in predictions
        ]
