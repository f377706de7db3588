"""How close the embedded int4 ONNX conversion decodes to the fp32 transformers model (issue #32).

    python bench/greedy_agreement.py [--new-tokens 64] [--model SPEC]

Over 20 fixed prompts, the fp32 model (the GGUF dequantized, ``embedded:transformers``) decodes
greedily; the int4 model then reads the same tokens and, at every generated position, is asked
for its own greedy choice. Reported: the share of positions where the two agree (teacher-forced,
so one early difference does not count every later token against it), and for free-running
greedy decoding of both, where their outputs first differ. ``--model`` compares another model
instead of the embedded default: another conversion (``onnx:FOLDER``, say one built with other
model-builder options) or another engine on the same weights (``embedded:llamacpp``).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "List three uses of a paperclip.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Write a short email asking for a day off.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What does a CPU do?",
    "Name the planets of the solar system.",
    "How do I reverse a list in Python?",
    "Suggest a name for a black cat.",
    "What are the benefits of regular exercise?",
    "Describe a rainy day in a city.",
    "Who wrote Pride and Prejudice?",
    "Write a limerick about a programmer.",
    "What is the difference between weather and climate?",
    "Give two tips for learning a new language.",
)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--model", default="embedded", help="the model spec to compare with the fp32 one")
    args = parser.parse_args()
    from slmflow.runtime import load_model

    reference = load_model("embedded:transformers")
    quantized = load_model(args.model)
    for model in (reference, quantized):
        model.cache.enabled = False
    rows = []
    for prompt in PROMPTS:
        ids = reference.prompt_ids(prompt)
        ref_out = reference.generate(ids, max_tokens=args.new_tokens, stop_on_loops=False).result().token_ids
        q_out = quantized.generate(ids, max_tokens=args.new_tokens, stop_on_loops=False).result().token_ids
        # Teacher-forced: the int4 model's argmax after each prefix of the reference's reply.
        seq = quantized.backend.new_sequence(len(ids) + len(ref_out) + 1)
        logits = np.asarray(seq.extend_all(ids + ref_out[:-1]))[len(ids) - 1:]
        picks = logits.argmax(-1).tolist()
        agree = sum(p == r for p, r in zip(picks, ref_out))
        rows.append({"prompt": prompt, "tokens": len(ref_out), "agree": agree,
                     "first_difference": first_difference(ref_out, q_out)})
        getattr(seq, "park", lambda: None)()
    tokens = sum(r["tokens"] for r in rows)
    agreed = sum(r["agree"] for r in rows)
    diffs = [r["first_difference"] for r in rows if r["first_difference"] is not None]
    print(f"{'prompt':<60}{'agree':>8}{'first diff':>12}")
    for r in rows:
        print(f"{r['prompt'][:58]:<60}{r['agree']:>4}/{r['tokens']:<3}{str(r['first_difference']):>12}")
    print(f"teacher-forced agreement {agreed}/{tokens} = {agreed / tokens:.3f}; free-running outputs identical "
          f"on {len(rows) - len(diffs)} of {len(rows)} prompts"
          + (f", median first difference at token {statistics.median(diffs):.0f}" if diffs else ""))
    print(json.dumps({"new_tokens": args.new_tokens, "model": args.model,
                      "agreement": round(agreed / tokens, 4), "agreed": agreed, "tokens": tokens,
                      "identical_outputs": len(rows) - len(diffs),
                      "first_differences": [r["first_difference"] for r in rows]}))


if __name__ == "__main__":
    main()
