"""ocrloop: fine-tune OCR vision-language models on your own business documents."""

__version__ = "0.1.0"
