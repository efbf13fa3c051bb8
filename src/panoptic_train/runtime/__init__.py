"""What running a trained model needs, shared by validation (`train`), `predict` (`inference`),
the exported-model runners (`export`) and `serve`: the panoptic merge and its numpy/torch array
backends, the image inputs `predict` accepts and their numpy preprocessing, the exported-model
file format. It sits below those four and imports none of them.

Nothing is imported here; import the modules.
"""
