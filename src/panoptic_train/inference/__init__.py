"""Inference: `load_model` and the model it returns (`predict`), the panoptic post-processing
shared with validation and the exported-model runners, visualisation, `panoptic-train predict`.
"""
