"""Start-up from the converted cache: Python imports, then loading the embedded model.

    python bench/startup.py

Run as a fresh process each time (so imports are cold): prints the import time of the runtime and
its libraries, and the time ``load_model()`` takes once they are imported (the model from the
cache: onnxruntime-genai session + tokenizer).
"""

from __future__ import annotations

import json
import time

start = time.perf_counter()
import onnxruntime_genai  # noqa: E402,F401
import slmflow.runtime as runtime  # noqa: E402
import transformers.models.auto.tokenization_auto  # noqa: E402,F401

imported = time.perf_counter()
runtime.load_model()
loaded = time.perf_counter()
print(json.dumps({"imports_s": round(imported - start, 2), "load_model_s": round(loaded - imported, 2)}))
