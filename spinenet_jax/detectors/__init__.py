"""Detectors: what is specific to one meta-architecture (RetinaNet now; Mask R-CNN next).

`base.Detector` is the interface the training loop, evaluation and tools program against;
`base.build(config)` returns the detector that `config.model.type` names.
"""
