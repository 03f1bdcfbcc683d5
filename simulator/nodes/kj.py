"""KJNodes used by the dance workflow: constants, the calculator, resizing and size reporting."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from simulator.nodes.base import NodeContext, NodeOutput, Opaque, to_float, to_uint8
from simulator.nodes.frames import FrameSource, ResizedFrames, as_source, crop_to_aspect, resize_frame

#: Operators SimpleCalculatorKJ evaluates.
CALCULATOR_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
#: Functions SimpleCalculatorKJ allows.
CALCULATOR_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "pow": pow,
    "sqrt": math.sqrt,
    "floor": math.floor,
    "ceil": math.ceil,
}
#: Resize methods Pillow provides; others (nvidia_rtx_vsr) fall back to bilinear.
PIL_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def pad_outputs(ctx: NodeContext, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Fill output slots the simulator does not model with placeholders."""
    count = len(ctx.extras.get("return_types", values))
    return values + tuple(Opaque(ctx.class_type, slot) for slot in range(len(values), count))


def int_constant(ctx: NodeContext, value: int) -> NodeOutput:
    return NodeOutput(pad_outputs(ctx, (int(value),)))


def float_constant(ctx: NodeContext, value: float) -> NodeOutput:
    return NodeOutput(pad_outputs(ctx, (float(value),)))


def simple_calculator(ctx: NodeContext, expression: str, **variables: Any) -> NodeOutput:
    names = {key: value for key, value in variables.items() if isinstance(value, int | float | bool)}
    names.update({"pi": math.pi, "euler": math.e, "True": True, "False": False})
    result = _evaluate(ast.parse(expression.strip(), mode="eval").body, names)
    return NodeOutput(pad_outputs(ctx, (float(result), int(result), bool(result))))


def _evaluate(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"Name '{node.id}' is not allowed")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in CALCULATOR_OPERATORS:
        return CALCULATOR_OPERATORS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp) and type(node.op) in CALCULATOR_OPERATORS:
        return CALCULATOR_OPERATORS[type(node.op)](_evaluate(node.operand, names))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CALCULATOR_FUNCTIONS:
        return CALCULATOR_FUNCTIONS[node.func.id](*(_evaluate(arg, names) for arg in node.args))
    raise ValueError(f"Unsupported expression element {type(node).__name__}")


def resized_size(
    source_w: int, source_h: int, width: int, height: int, keep_proportion: str, divisible_by: int
) -> tuple[int, int]:
    """ImageResizeKJv2's output size: ``resize`` fits in the box, others fill it; floored to divisible_by."""
    if keep_proportion == "resize" and width and height:
        ratio = min(width / source_w, height / source_h)
        width, height = round(source_w * ratio), round(source_h * ratio)
    else:
        width = width or source_w
        height = height or source_h
    if divisible_by > 1:
        width, height = width - width % divisible_by, height - height % divisible_by
    return max(1, width), max(1, height)


def image_resize_kj(
    ctx: NodeContext,
    image: Any,
    width: int,
    height: int,
    upscale_method: str,
    keep_proportion: str,
    divisible_by: int,
    crop_position: str = "center",
    **_options: Any,
) -> NodeOutput:
    source = as_source(image)
    out_w, out_h = resized_size(source.width, source.height, width, height, keep_proportion, divisible_by)
    position = crop_position if keep_proportion == "crop" else None
    method = upscale_method if upscale_method in PIL_METHODS else "bilinear"
    resized: Any
    if isinstance(image, FrameSource):
        resized = ResizedFrames(image, out_w, out_h, method, position)
    else:
        frames = []
        for frame in image:
            pixels = to_uint8(frame)
            if position is not None:
                pixels = crop_to_aspect(pixels, out_w, out_h, position)
            frames.append(to_float(resize_frame(pixels, out_w, out_h, method)))
        resized = np.stack(frames)
    mask = np.zeros((source.count, out_h, out_w), dtype=np.float32)
    return NodeOutput(pad_outputs(ctx, (resized, out_w, out_h, mask)))


def get_image_size_and_count(ctx: NodeContext, image: Any) -> NodeOutput:
    source = as_source(image)
    ui = {"text": [f"{source.count}x{source.width}x{source.height}"]}
    return NodeOutput(pad_outputs(ctx, (image, source.width, source.height, source.count)), ui)
