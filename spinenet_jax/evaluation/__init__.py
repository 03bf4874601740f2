"""Evaluation: COCO box metrics with pycocotools, and drawing of detections."""
