"""Personal data in OCR output: found by ``find_pii``, handled by ``apply_pii_policy`` (allow, redact, reject).

Every reader applies it through ``OCRAgent``, so the CLI and the service hand out the same text.
"""

from ocrloop.pii.detect import PII_KINDS, PiiFinding, PiiPolicy, PiiRejected, apply_pii_policy, find_pii, redact

__all__ = ["PII_KINDS", "PiiFinding", "PiiPolicy", "PiiRejected", "apply_pii_policy", "find_pii", "redact"]
