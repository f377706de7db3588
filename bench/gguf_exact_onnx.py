"""An ONNX model holding the GGUF's own quantized weights, block for block (issue #32 experiment).

    python bench/gguf_exact_onnx.py OUT_FOLDER [--layer-accuracy 4|1]
    python bench/greedy_agreement.py --model onnx:OUT_FOLDER

The embedded conversion (GGUF → fp32 → the model builder's int4) quantizes twice: a Q4_1 block's
16 levels ``d*q + m`` land on another 16-level grid, and greedy decoding agrees with the fp32 model
(the GGUF dequantized) on ~69% of tokens. This writes the builder's graph with every Q4_1 weight
copied instead: MatMulNBits gets the block's codes and scale ``d`` with zero points 0, and the
block minimums ``m`` come back as ``y += blocksum(x) @ M^T`` (a matmul 1/32 the size: per block,
``sum_k (d*q_k + m) x_k = d * sum_k q_k x_k + m * sum_k x_k``). The tied embedding / lm_head is the
GGUF's Q8_0, copied as 8-bit blocks. The dequantized weights equal transformers' fp32 weights
exactly (checked here). ``--layer-accuracy 1`` runs the layers' int4 matmuls on fp32
activations instead of MatMulNBits' int8 ones (accuracy level 4, llama.cpp's q8 way).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

Q4_1_BLOCK, Q8_0_BLOCK, BLOCK = 20, 34, 32
PROJECTIONS = {"o_proj": ("attn_output", "self_attn.o_proj"), "gate_proj": ("ffn_gate", "mlp.gate_proj"),
               "up_proj": ("ffn_up", "mlp.up_proj"), "down_proj": ("ffn_down", "mlp.down_proj")}


def q4_1(tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes ``[rows, blocks, 32]`` (in k order), scales and minimums ``[rows, blocks]``."""
    raw = np.asarray(tensor.data)
    blocks = raw.reshape(raw.shape[0], -1, Q4_1_BLOCK)
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[:, :, 4:]
    return np.concatenate([qs & 15, qs >> 4], axis=-1), d, m  # byte j holds k=j (low) and k=j+16 (high)


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """The row order transformers undoes for Q and K (llama.cpp stores them permuted for RoPE)."""
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(2, 1).reshape(rows)


def main() -> None:
    import gguf
    import onnx
    from onnx import helper, numpy_helper
    from safetensors.numpy import load_file
    from slmflow.runtime import embedded

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--layer-accuracy", type=int, default=4, choices=(1, 4))
    args = parser.parse_args()
    source, hf_dir = embedded.ensure_onnx(), embedded.ensure_hf()
    reference = load_file(str(hf_dir / "model.safetensors"))
    config = json.loads((hf_dir / "config.json").read_text())
    tensors = {t.name: t for t in gguf.GGUFReader(str(embedded.find_gguf())).tensors}
    model = onnx.load(str(source / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, worst = [], 0.0

    def weights(gguf_name: str, hf_name: str, heads: int | None = None):
        nonlocal worst
        q, d, m = q4_1(tensors[gguf_name])
        if heads:
            order = unpermute_rows(q.shape[0], heads)
            q, d, m = q[order], d[order], m[order]
        dequantized = (q * d[..., None] + m[..., None]).reshape(q.shape[0], -1)
        worst = max(worst, float(np.abs(dequantized - reference[hf_name]).max()))
        return q, d, m

    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or not node.name.startswith("/model/layers."):
            nodes.append(node)
            continue
        layer, kind = int(node.name.split("/")[2].split(".")[1]), node.name.split("/")[4]
        g, h = f"blk.{layer}.", f"model.layers.{layer}."
        if kind == "qkv_proj":
            parts = [weights(g + "attn_q.weight", h + "self_attn.q_proj.weight", config["num_attention_heads"]),
                     weights(g + "attn_k.weight", h + "self_attn.k_proj.weight", config["num_key_value_heads"]),
                     weights(g + "attn_v.weight", h + "self_attn.v_proj.weight")]
        else:
            gguf_part, hf_part = PROJECTIONS[kind]
            parts = [weights(f"{g}{gguf_part}.weight", f"{h}{hf_part}.weight")]
        q, d, m = (np.concatenate([p[i] for p in parts]) for i in range(3))
        rows, blocks, _ = q.shape
        packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
        zero = np.zeros((rows, (blocks + 1) // 2), np.uint8)
        for name, array in zip(node.input[1:4], (packed, d, zero)):
            inits[name].CopyFrom(numpy_helper.from_array(array.reshape(tuple(inits[name].dims)), name))
        for a in node.attribute:
            if a.name == "accuracy_level":
                a.i = args.layer_accuracy
        x, y, base = node.input[0], node.output[0], node.name
        model.graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(m.T), base + "/minimums"),
            numpy_helper.from_array(np.array([0, 0, blocks, BLOCK], np.int64), base + "/block_shape"),
            numpy_helper.from_array(np.array([-1], np.int64), base + "/last_axis")])
        node.output[0] = y + "_codes"
        nodes += [node,
                  helper.make_node("Reshape", [x, base + "/block_shape"], [base + "/blocks"]),
                  helper.make_node("ReduceSum", [base + "/blocks", base + "/last_axis"], [base + "/block_sums"],
                                   keepdims=0),
                  helper.make_node("MatMul", [base + "/block_sums", base + "/minimums"], [base + "/minimum_part"]),
                  helper.make_node("Add", [y + "_codes", base + "/minimum_part"], [y])]

    raw = np.asarray(tensors["token_embd.weight"].data)  # Q8_0: f16 scale + 32 int8 per block
    blocks8 = raw.reshape(raw.shape[0], -1, Q8_0_BLOCK)
    d8 = blocks8[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q8 = blocks8[:, :, 2:].copy().view(np.int8)
    embed = (q8.astype(np.float32) * d8[..., None]).reshape(raw.shape[0], -1)
    worst = max(worst, float(np.abs(embed - reference["model.embed_tokens.weight"]).max()))
    codes = (q8.astype(np.int16) + 128).astype(np.uint8)
    model.graph.initializer.extend([
        numpy_helper.from_array(codes, "head8.codes"), numpy_helper.from_array(d8, "head8.scales"),
        numpy_helper.from_array(np.full(d8.shape, 128, np.uint8), "head8.zero"),
        numpy_helper.from_array(codes.reshape(raw.shape[0], -1), "embed8.codes")])
    for node in nodes:
        if node.name == "/lm_head/MatMul_Q4" or node.op_type == "GatherBlockQuantized":
            gather = node.op_type == "GatherBlockQuantized"
            node.input[0 if gather else 1] = "embed8.codes" if gather else "head8.codes"
            node.input[2], node.input[3] = "head8.scales", "head8.zero"
            for a in node.attribute:
                if a.name == "bits":
                    a.i = 8
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "Reshape" or n.output[0] in used]
    used = {i for n in nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept)
    print(f"largest |GGUF dequantized - transformers fp32| over every weight: {worst}")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for f in source.iterdir():
        if f.suffix in (".json", ".jinja") and f.name != "slmflow-complete.json":
            shutil.copy(f, args.out / f.name)
    onnx.save(model, str(args.out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
