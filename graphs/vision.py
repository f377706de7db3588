"""Reading an image for the router graph: the vision role when one is configured, else OCR.

The fallback is said in the trace (``fallback: ocr``) so a user sees why a picture was read as
text only.
"""

from __future__ import annotations

from pathlib import Path

from slmflow.runtime.config import load_config
from slmflow.runtime.loop import Usage
from slmflow.runtime.vision import load_images

READ_PROMPT = "Write out all the text in this image, then describe anything else it shows in one sentence."


def read_image(path: str | Path) -> tuple[str, object, Usage | None, str]:
    """(text, model, usage, note) for one image."""
    load_images([path])  # a missing or undecodable image fails here, with its name, in either path
    configured = load_config().roles.vision
    if configured:
        from slmflow.runtime.vision import load_vision_model

        model = load_vision_model(configured)
        response = model.generate(READ_PROMPT, images=[path])
        return response.text(), model, response.result().usage, "vision model"
    from slmflow.tools.rag.ocr import ocr_image

    return ocr_image(Path(path).read_bytes()), None, None, "fallback: ocr (no vision model configured)"
