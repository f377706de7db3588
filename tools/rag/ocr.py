"""Text from images with RapidOCR (ONNX models shipped in its wheel, so nothing is downloaded).

Used for image files and for PDF pages without a text layer; the vision role replaces it when a
vision model is configured.
"""

from __future__ import annotations

import threading
from functools import lru_cache

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _engine():
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def ocr_image(data: bytes) -> str:
    """The text found in an encoded image (PNG, JPEG, ...), one detected line per line, top to bottom."""
    with _lock:
        found, _ = _engine()(data)
    if not found:
        return ""
    # Reading order: boxes whose vertical centres are within half a line height share a line, left
    # to right; lines top to bottom.
    boxes = sorted(found, key=lambda b: (b[0][0][1] + b[0][2][1]) / 2)
    lines: list[list] = []
    for box in boxes:
        centre = (box[0][0][1] + box[0][2][1]) / 2
        height = max(box[0][2][1] - box[0][0][1], 1)
        if lines and abs(centre - lines[-1][0]) <= height / 2:
            lines[-1][1].append(box)
        else:
            lines.append([centre, [box]])
    return "\n".join(" ".join(b[1] for b in sorted(line, key=lambda b: b[0][0][0])) for _, line in lines)
