"""Fine-tuning: the ``train`` recipe."""
