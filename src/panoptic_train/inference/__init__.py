"""Inference: `load_model` and the model it returns (`predict`), prediction files and folders,
visualisation, `panoptic-train predict`. The panoptic merge it shares with validation and the
exported-model runners lives in `runtime`.
"""
