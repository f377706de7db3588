"""The embedded model on the CPU: our loop vs onnxruntime-genai's native loop vs llama.cpp (issue #32).

    python bench/cpu_engines.py [--new-tokens 256] [--prompt-tokens 1000] [--repeats 5] [--folder ONNX]
                                [--engines NAME ...] [--also ONNX ...]

Same model (SmolLM2-135M-Instruct: our int4 ONNX conversion, llama.cpp the wheel's Q4_1 GGUF it
was converted from), same token ids, greedy, every engine on all the machine's cores. Measured:

* decode tok/s = (n - 1) / (T(prefill + n tokens) - T(prefill + 1 token)), so prefill cancels;
* prefill: time to the first token of a ``--prompt-tokens`` prompt (our prefix cache off);
* JSON Schema decoding: output tokens per second of a greedy reply held to one schema (ours:
  llguidance with jump-forward; llama.cpp: its GBNF grammar sampler, the schema converted by
  llama-cpp-python), prefill cancelled as above;
* the same for our loop with llama.cpp running the forward pass (``embedded:llamacpp``);
* peak RSS of a fresh process that loads the engine and generates ``--new-tokens`` tokens.

Engines alternate inside every repeat (A B C A B C) so machine noise hits all alike; medians are
reported with the load average before and after, since llama.cpp's threads collapse when other
work holds the cores (compare quietly, or report both). Prints a table and one JSON line.
llama.cpp comes from ``pip install llama-cpp-python`` (it compiles; not a dependency of slmflow).
``--folder`` runs ours and onnxruntime-genai on another conversion of the model (say, int8);
``--also`` adds our loop on further conversions as engines of their own (``ours on NAME``),
alternated with the rest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "Write a long story about a dragon who learns to paint."
JSON_PROMPT = "Describe a fictional person as JSON with their name, age, home city and up to three hobbies."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
FILLER = ("The committee met on Tuesday to review the annual budget, the staffing plan and the new "
          "safety rules for the northern warehouse, and agreed to publish its findings next month. ")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Ours:
    """Our loop on the embedded model's default backend (int4 ONNX on onnxruntime)."""

    name = "ours"
    spec = "embedded"

    def __init__(self, folder: str | None) -> None:
        from slmflow.runtime import load_model

        self.folder = folder
        self.model = load_model(f"onnx:{folder}" if folder and self.spec == "embedded" else self.spec)
        self.model.cache.enabled = False  # every run prefills: no engine reuses a prompt here

    def generate(self, ids: list[int], n: int) -> list[int]:
        # The other loops run to n tokens whatever they produce, so ours must not stop at a loop.
        return self.model.generate(ids, max_tokens=n, stop_on_loops=False).result().token_ids

    def generate_json(self, ids: list[int], n: int) -> list[int]:
        from slmflow.runtime.constraints import JsonSchema

        return self.model.generate(ids, max_tokens=n, constraint=JsonSchema(SCHEMA)).result().token_ids


class OursOnLlamaCpp(Ours):
    """Our loop with llama.cpp running the forward pass on the GGUF (runtime/backends/llama_cpp_backend.py)."""

    name = "ours on llama.cpp"
    spec = "embedded:llamacpp"


class OnnxNative:
    """onnxruntime-genai's own loop (its Generator and greedy search) on the same folder."""

    name = "onnxruntime-genai"

    def __init__(self, folder: str | None) -> None:
        import onnxruntime_genai as og
        from slmflow.runtime import embedded

        self.og = og
        self.model = og.Model(folder or str(embedded.ensure_onnx()))

    def generate(self, ids: list[int], n: int) -> list[int]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        return list(generator.get_sequence(0))[len(ids):]


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API: its decode and its own sampler chain."""

    name = "llama.cpp"

    def __init__(self, folder: str | None) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from slmflow.runtime import embedded
        from slmflow.runtime.backends.llama_cpp_backend import load_gguf

        self.lc = llama_cpp
        threads = os.cpu_count() or 1
        # Flash attention as SLMFLOW_LLAMA_FLASH_ATTN sets it for our llama.cpp backend (default off:
        # llama.cpp's auto turns it on for a CPU, where it decodes this model slower).
        flash = os.environ.get("SLMFLOW_LLAMA_FLASH_ATTN") == "1"
        # The backend's model parameters: on a CPU with AMX, llama.cpp's weight repacking crashes
        self.model = load_gguf(llama_cpp, embedded.find_gguf())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch = 4096, 512  # llama_cpp.Llama's defaults, as measured before
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.llm = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.ctx = self.llm.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        self.n_batch = params.n_batch
        self.greedy = self._chain()
        self.json_grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)._grammar

    def _chain(self, grammar: str | None = None):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if grammar is not None:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root"))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain

    def _feed(self, ids: list[int]) -> None:
        for start in range(0, len(ids), self.n_batch):
            part = ids[start:start + self.n_batch]
            tokens = (self.lc.llama_token * len(part))(*part)
            if self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(tokens, len(part))) != 0:
                raise RuntimeError("llama_decode failed")

    def _run(self, ids: list[int], n: int, chain, stop_at_eog: bool) -> list[int]:
        self.lc.llama_memory_clear(self.memory, True)
        self._feed(ids)
        out: list[int] = []
        while len(out) < n:
            token = self.lc.llama_sampler_sample(chain, self.ctx, -1)
            if stop_at_eog and self.lc.llama_vocab_is_eog(self.vocab, token):
                break
            out.append(token)
            self._feed([token])
        return out

    def generate(self, ids: list[int], n: int) -> list[int]:
        return self._run(ids, n, self.greedy, stop_at_eog=False)

    def generate_json(self, ids: list[int], n: int) -> list[int]:
        chain = self._chain(self.json_grammar)  # a grammar sampler holds its parse state: one per reply
        try:
            return self._run(ids, n, chain, stop_at_eog=True)
        finally:
            self.lc.llama_sampler_free(chain)


ENGINES = {engine.name: engine for engine in (Ours, OnnxNative, LlamaCpp, OursOnLlamaCpp)}


def peak_rss(name: str, n: int, folder: str | None) -> dict:
    """Load ``name`` and generate n tokens in a fresh process; its peak RSS and whether it imported torch."""
    child = subprocess.run([sys.executable, __file__, "--rss-child", name, "--new-tokens", str(n),
                            *(["--folder", folder] if folder else [])], capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def rss_child(name: str, n: int, folder: str | None) -> None:
    engine = ENGINES[name](folder)
    ids = _prompt_ids(PROMPT)
    engine.generate(ids, n)
    # VmHWM, not getrusage's ru_maxrss: Linux carries the latter over exec from the parent.
    status = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii"))
    print(json.dumps({"peak_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1),
                      "torch_imported": "torch" in sys.modules}))


@functools.cache
def _tokenizer():
    """The embedded model's tokenizer alone (no model loaded)."""
    from slmflow.runtime import embedded
    from slmflow.runtime.tokenizer import ChatTokenizer

    return ChatTokenizer.from_folder(embedded.ensure_onnx())


def _prompt_ids(text: str) -> list[int]:
    """The chat-templated prompt as token ids."""
    from slmflow.runtime.messages import prompt_messages

    return _tokenizer().apply_chat_template(prompt_messages(text))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=sorted(ENGINES),
                        help="a subset (llama.cpp ran slower beside the ONNX engines in one process: report both)")
    parser.add_argument("--folder", help="an onnxruntime-genai folder for ours and its native loop")
    parser.add_argument("--also", nargs="*", default=[], help="more ONNX folders, each run by our loop")
    parser.add_argument("--rss-child", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.new_tokens
    if args.rss_child:
        return rss_child(args.rss_child, n, args.folder)
    load_before = os.getloadavg()
    engines = [make(args.folder) for name, make in ENGINES.items() if name in args.engines]
    for folder in args.also:
        extra = Ours(folder)
        extra.name = f"ours on {Path(folder).name}"  # the class keeps "ours" for its RSS child
        engines.append(extra)
    ids, json_ids = _prompt_ids(PROMPT), _prompt_ids(JSON_PROMPT)
    long_ids = _prompt_ids(FILLER * (args.prompt_tokens // 30 + 1))[: args.prompt_tokens]
    outputs = {e.name: e.generate(ids, n) for e in engines}  # also warms every engine up
    if "ours" in outputs and len(outputs["ours"]) != n:
        raise SystemExit(f"our greedy output ended after {len(outputs['ours'])} tokens; pick a longer prompt")
    json_out = {e.name: e.generate_json(json_ids, n) for e in engines if hasattr(e, "generate_json")}
    times: dict[str, dict[str, list[float]]] = {e.name: {} for e in engines}

    def record(engine, key: str, fn) -> None:
        times[engine.name].setdefault(key, []).append(timed(fn))

    for _ in range(args.repeats):
        for e in engines:
            record(e, "one", lambda: e.generate(ids, 1))
            record(e, "full", lambda: e.generate(ids, n))
            record(e, "prefill", lambda: e.generate(long_ids, 1))
            if e.name in json_out:
                record(e, "json_one", lambda: e.generate_json(json_ids, 1))
                record(e, "json_full", lambda: e.generate_json(json_ids, n))
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    rows = []
    for e in engines:
        m = med[e.name]
        row = {"engine": e.name, "decode_tok_s": round((n - 1) / (m["full"] - m["one"]), 1),
               "prefill_s": round(m["prefill"], 3)}
        if e.name in json_out:
            produced = len(json_out[e.name])
            row["json_tokens"] = produced
            row["json_tok_s"] = round((produced - 1) / (m["json_full"] - m["json_one"]), 1)
        row.update(peak_rss(type(e).name, n, getattr(e, "folder", args.folder)))
        rows.append(row)
    by = {r["engine"]: r for r in rows}

    def ratio(a: str, b: str, key: str, inverse: bool = False) -> float | None:
        if a not in by or b not in by or key not in by[a] or key not in by[b]:
            return None
        x, y = by[a][key], by[b][key]
        return round(y / x if inverse else x / y, 3)

    ratios = {
        "decode_ours_vs_llama_cpp": ratio("ours", "llama.cpp", "decode_tok_s"),
        "decode_ours_vs_native": ratio("ours", "onnxruntime-genai", "decode_tok_s"),
        "decode_ours_on_llama_cpp_vs_llama_cpp": ratio("ours on llama.cpp", "llama.cpp", "decode_tok_s"),
        "prefill_speedup_vs_llama_cpp": ratio("ours", "llama.cpp", "prefill_s", inverse=True),
        "json_ours_vs_llama_cpp": ratio("ours", "llama.cpp", "json_tok_s"),
    }

    def agreement(a: str, b: str) -> int | None:
        return sum(int(x) == int(y) for x, y in zip(outputs[a], outputs[b])) if a in outputs and b in outputs else None

    agree, agree_lc = agreement("ours", "onnxruntime-genai"), agreement("ours on llama.cpp", "llama.cpp")
    print(f"{'engine':<24}{'decode tok/s':>13}{'prefill s':>11}{'json tok/s':>12}{'peak MB':>9}")
    for r in rows:
        print(f"{r['engine']:<24}{r['decode_tok_s']:>13}{r['prefill_s']:>11}{r.get('json_tok_s', '-'):>12}"
              f"{r['peak_mb']:>9}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"ours = onnxruntime-genai on {agree} of {n} greedy tokens, ours on llama.cpp = llama.cpp on {agree_lc}")
    for name, toks in json_out.items():
        print(f"json reply ({name}): {_tokenizer().decode(toks)!r}")
    print(json.dumps({"folder": args.folder or "embedded", "new_tokens": n, "prompt_tokens": len(ids),
                      "prefill_tokens": len(long_ids), "repeats": args.repeats, "cores": os.cpu_count(),
                      "load_before": load_before[0], "load_after": os.getloadavg()[0], "rows": rows, "ratios": ratios,
                      "greedy_agreement_with_native": agree, "greedy_agreement_on_llama_cpp": agree_lc}))


if __name__ == "__main__":
    main()
