"""Evaluation: CER/WER and their aggregation by category and business."""
