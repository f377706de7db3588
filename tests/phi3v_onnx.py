"""A tiny random-weight model in Phi-3.5-vision's onnxruntime-genai layout, built offline.

Phi-3.5-vision's ONNX folders hold three sessions that onnxruntime-genai chains (genai_config type
``phi3v``): a vision session (pixel_values [images, 17 crops, 3, 336, 336], image_sizes -> one
feature row per image token), an embedding session (input_ids, where image N's positions hold -N,
plus those features -> inputs_embeds) and a text decoder that takes inputs_embeds. The real vision
and embedding sessions are exported from the model's remote code, which is not available offline,
so this fixture writes small ones by hand with the same inputs, outputs and token counts:

* text: a tiny Phi-3 built by onnxruntime-genai's own model builder (``exclude_embeds``);
* embedding: that Phi-3's embedding table, with image features written at the negative ids;
* vision: the global crop pooled to a 4x4 grid and projected by random weights, repeated for as
  many tokens as Phi-3.5-vision's HD layout gives the image: (rows * cols + 1) * 144 + 1 +
  (rows + 1) * 12 for an image resized to rows x cols crops of 336 pixels.

Everything onnxruntime-genai does with such a folder (its image processor, the three sessions, the
KV cache) is the real thing; only the weights and the vision tower are stand-ins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CROP, TOKENS_PER_CROP, TOKENS_PER_ROW = 336, 144, 12


def _constants(**arrays) -> list:
    return [numpy_helper.from_array(np.asarray(value), name) for name, value in arrays.items()]


def _save(nodes, name, inputs, outputs, initializers, path: Path) -> None:
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def vision_model(hidden: int, path: Path, seed: int = 0) -> None:
    node = helper.make_node
    nodes = [
        node("Gather", ["pixel_values", "zero"], ["global_crop"], axis=1),
        node("AveragePool", ["global_crop"], ["pooled"], kernel_shape=[84, 84], strides=[84, 84]),
        node("Reshape", ["pooled", "flat"], ["pooled_flat"]),
        node("MatMul", ["pooled_flat", "projection"], ["projected"]),
        node("Tanh", ["projected"], ["per_image"]),
        # tokens per image from its resized size, as Phi-3.5-vision lays them out
        node("Div", ["image_sizes", "crop"], ["grid"]),
        node("Gather", ["grid", "zero"], ["rows"], axis=1),
        node("Gather", ["grid", "one"], ["cols"], axis=1),
        node("Mul", ["rows", "cols"], ["crops"]),
        node("Add", ["crops", "one"], ["crops_and_global"]),
        node("Mul", ["crops_and_global", "per_crop"], ["crop_tokens"]),
        node("Add", ["rows", "one"], ["row_breaks"]),
        node("Mul", ["row_breaks", "per_row"], ["break_tokens"]),
        node("Add", ["crop_tokens", "break_tokens"], ["tokens_no_sep"]),
        node("Add", ["tokens_no_sep", "one"], ["tokens"]),
        # row r of the output belongs to the image whose running token count first exceeds r
        node("CumSum", ["tokens", "zero"], ["ends"]),
        node("ReduceSum", ["tokens"], ["total"], keepdims=0),
        node("Range", ["zero", "total", "one"], ["rows_out"]),
        node("Unsqueeze", ["rows_out", "axis1"], ["rows_col"]),
        node("GreaterOrEqual", ["rows_col", "ends"], ["past_image"]),
        node("Cast", ["past_image"], ["past_count"], to=TensorProto.INT64),
        node("ReduceSum", ["past_count", "axis1"], ["owner"], keepdims=0),
        node("Gather", ["per_image", "owner"], ["image_features"], axis=0),
    ]
    rng = np.random.default_rng(seed)
    constants = _constants(zero=np.int64(0), one=np.int64(1), axis1=np.array([1], np.int64),
                           flat=np.array([-1, 48], np.int64), crop=np.int64(CROP), per_crop=np.int64(TOKENS_PER_CROP),
                           per_row=np.int64(TOKENS_PER_ROW),
                           projection=rng.standard_normal((48, hidden)).astype(np.float32))
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["images", "crops", 3, CROP, CROP]),
              helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["images", 2])]
    outputs = [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["image_tokens", hidden])]
    _save(nodes, "vision", inputs, outputs, constants, path)


def embedding_model(table: np.ndarray, path: Path) -> None:
    node = helper.make_node
    hidden = table.shape[1]
    nodes = [
        node("Less", ["input_ids", "zero"], ["is_image"]),
        node("Max", ["input_ids", "zero"], ["text_ids"]),
        node("Gather", ["table", "text_ids"], ["text_embeds"], axis=0),
        # the k-th image position (over all images, in order) takes feature row k
        node("Cast", ["is_image"], ["is_image_count"], to=TensorProto.INT64),
        node("CumSum", ["is_image_count", "one"], ["image_rank"]),
        node("Sub", ["image_rank", "one"], ["image_row_or_minus1"]),
        node("Max", ["image_row_or_minus1", "zero"], ["image_row"]),
        node("Concat", ["image_features", "zero_row"], ["features"], axis=0),  # text-only: no rows
        node("Gather", ["features", "image_row"], ["image_embeds"], axis=0),
        node("Unsqueeze", ["is_image", "last_axis"], ["is_image_3d"]),
        node("Where", ["is_image_3d", "image_embeds", "text_embeds"], ["inputs_embeds"]),
    ]
    constants = _constants(zero=np.int64(0), one=np.int64(1), last_axis=np.array([-1], np.int64),
                           table=table.astype(np.float32), zero_row=np.zeros((1, hidden), np.float32))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["image_tokens", hidden])]
    outputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", hidden])]
    _save(nodes, "embedding", inputs, outputs, constants, path)


PROCESSOR_CONFIG = {"processor": {"name": "image_processing", "transforms": [
    {"operation": {"name": "decode_image", "domain": "com.microsoft.extensions", "type": "DecodeImage",
                   "attrs": {"color_space": "BGR"}}},
    {"operation": {"name": "convert_to_rgb", "domain": "com.microsoft.extensions", "type": "ConvertRGB"}},
    {"operation": {"name": "phi3_image_transform", "domain": "com.microsoft.extensions", "type": "Phi3ImageTransform",
                   "attrs": {"num_crops": 16, "num_img_tokens": TOKENS_PER_CROP}}},
]}}


def add_vision(text_folder: Path, embed_table: np.ndarray) -> Path:
    """Turn a builder-made Phi-3 folder (built with ``exclude_embeds=true``) into the phi3v layout."""
    hidden = embed_table.shape[1]
    vision_model(hidden, text_folder / "vision.onnx")
    embedding_model(embed_table, text_folder / "embedding.onnx")
    config_path = text_folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["type"] = "phi3v"
    config["model"]["vision"] = {"filename": "vision.onnx",
                                 "inputs": {"pixel_values": "pixel_values", "image_sizes": "image_sizes"},
                                 "outputs": {"image_features": "image_features"}}
    config["model"]["embedding"] = {"filename": "embedding.onnx",
                                    "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                                    "outputs": {"inputs_embeds": "inputs_embeds"}}
    config_path.write_text(json.dumps(config, indent=2))
    (text_folder / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2))
    return text_folder
