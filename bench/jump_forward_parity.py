"""Does jump-forward change a greedy reply? JSON prompts decoded with it and without it (issue #32).

    python bench/jump_forward_parity.py [embedded embedded:transformers ...]

For each model and prompt, one greedy reply under a JSON Schema with jump-forward and one without;
counts identical texts and identical token sequences, and prints the first differing pair. On a
backend whose one-token and many-token passes agree (``batch_invariant``) the two should always
be identical; elsewhere a forced token's KV is computed by the many-row kernel and may differ in
the last bits. Prints one JSON line per model.
"""

from __future__ import annotations

import json
import sys

from slmflow.runtime import load_model
from slmflow.runtime.constraints import JsonSchema

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                         "city": {"type": "string", "maxLength": 40},
                         "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3}},
          "required": ["name", "age", "city", "hobbies"], "additionalProperties": False}
PROMPTS = ("Describe a fictional person as JSON.", "Give a JSON profile of a famous author.",
           "Invent a character for a novel, as JSON.", "Make up a JSON record for a customer.",
           "A JSON profile of a retired teacher, please.", "Describe your best friend as JSON.")


def main() -> None:
    for spec in sys.argv[1:] or ("embedded", "embedded:transformers"):
        model = load_model(spec)
        model.cache.enabled = False
        same_text = same_tokens = 0
        for prompt in PROMPTS:
            with_jf, without = (model.generate(prompt, max_tokens=120, constraint=JsonSchema(SCHEMA),
                                               jump_forward=flag).result() for flag in (True, False))
            same_text += with_jf.text == without.text
            same_tokens += with_jf.token_ids == without.token_ids
            if with_jf.text != without.text:
                print(f"  {spec}: with    {with_jf.text[:80]!r}\n  {spec}: without {without.text[:80]!r}")
        print(json.dumps({"model": spec, "batch_invariant": model.backend.batch_invariant, "prompts": len(PROMPTS),
                          "same_text": same_text, "same_tokens": same_tokens}))


if __name__ == "__main__":
    main()
