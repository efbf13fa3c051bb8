"""Panoptic quality identical to COCO's panopticapi: in memory during validation (`pq`), from
COCO panoptic files for any system's predictions (`files`), and terminal tables (`report`).

Nothing is imported here, so the `evaluate` subcommand's help stays instant; import the modules.
"""
