"""One router per resource: health, models, metrics, OCR."""
