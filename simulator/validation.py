"""POST /prompt validation, with ComfyUI 0.3.39's error types, messages and quirks (10_validation_errors).

The structure deliberately follows execution.validate_prompt/validate_inputs so that odd inputs fail the
same way: a link to a missing node raises KeyError inside the linked node's validation and is reported
on *that* node as ``exception_during_inner_validation`` with the caller's input name; a body that is not a
JSON object of objects raises and becomes aiohttp's plain-text 500.

Values are coerced in place (``"64"`` becomes ``64``), as ComfyUI does, so the queued and historical
prompt carry the converted values and the cache sees ``"64"`` and ``64.7`` as the same input.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from simulator.catalog import Catalog
from simulator.nodes.registry import NodeSpec, spec_for

log = logging.getLogger("simulator.validation")

#: Combo lists longer than this are summarised in value_not_in_list errors.
MAX_LISTED_COMBO_OPTIONS = 20

Validated = dict[str, tuple[bool, list[dict[str, Any]], str]]


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int | float)
    )


def types_match(received_type: Any, input_type: Any) -> bool:
    """comfy_execution.validation.validate_node_input, non-strict: any overlap of comma-separated types.

    Custom nodes declare wildcard inputs with a str subclass whose ``__ne__`` is always False; a catalogue
    read from JSON only has the ``"*"`` string left, so ``"*"`` matches anything here.
    """
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    return bool(received & wanted) or "*" in received or "*" in wanted


def _error(kind: str, message: str, details: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _input_info(input_types: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any]]:
    for category in ("required", "optional"):
        section = input_types.get(category, {})
        if name in section:
            entry = section[name]
            extra = entry[1] if len(entry) > 1 else {}
            return entry[0], category, extra
    return None, None, {}


class PromptValidator:
    """Validates one prompt against a catalogue and the input directory."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def validate_prompt(self, prompt: Any) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        outputs: list[str] = []
        for x in prompt:
            if "class_type" not in prompt[x]:
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{x}'",
                        {},
                    ),
                    [],
                    {},
                )
            class_type = prompt[x]["class_type"]
            if not self._catalog.has(class_type):
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        f"Cannot execute because node {class_type} does not exist.",
                        f"Node ID '#{x}'",
                        {},
                    ),
                    [],
                    {},
                )
            if self._catalog.is_output(class_type):
                outputs.append(x)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
        # ComfyUI iterates a set of output ids, whose order varies with the hash seed. Reverse prompt
        # order reproduces every recorded run (04, 05, 06, 12), so the simulator fixes that order.
        outputs.reverse()
        return self._validate_outputs(prompt, outputs)

    def _validate_outputs(
        self, prompt: Any, outputs: list[str]
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        good_outputs: list[str] = []
        failures: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: Validated = {}
        for o in outputs:
            try:
                valid, reasons, _ = self.validate_inputs(prompt, o, validated)
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                valid = False
                reasons = [
                    _error(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(ex),
                        {
                            "exception_type": full_type_name(typ or Exception),
                            "traceback": traceback.format_tb(tb),
                        },
                    )
                ]
                validated[o] = (False, reasons, o)
            if valid:
                good_outputs.append(o)
                continue
            failures.append((o, reasons))
            for node_id, (node_valid, node_reasons, _) in validated.items():
                # Nodes downstream of a failure are invalid without reasons of their own: not listed.
                if node_valid or not node_reasons:
                    continue
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)
            log.error("Failed to validate prompt for output %s", o)
        if good_outputs:
            return True, None, good_outputs, node_errors
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failures for e in errors)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {})
        return False, error, [], node_errors

    def validate_inputs(self, prompt: Any, unique_id: str, validated: Validated) -> tuple[bool, list[Any], str]:
        if unique_id in validated:
            return validated[unique_id]
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        input_types = self._catalog.input_types(class_type)
        spec = spec_for(class_type)
        names = list(input_types.get("required", {})) + [
            n for n in input_types.get("optional", {}) if n not in input_types.get("required", {})
        ]
        errors: list[dict[str, Any]] = []
        valid = True
        for x in names:
            input_type, category, extra_info = _input_info(input_types, x)
            if x not in inputs:
                if category == "required":
                    errors.append(_error("required_input_missing", "Required input is missing", x, {"input_name": x}))
                continue
            info = [input_type, extra_info]
            if isinstance(inputs[x], list):
                linked_ok = self._check_link(prompt, inputs[x], x, info, validated, errors)
                valid = valid and linked_ok
            else:
                _check_constant(inputs, x, info, spec, errors)
        errors.extend(self._custom_validation(inputs, input_types, spec))
        result = (not errors and valid, errors, unique_id)
        validated[unique_id] = result
        return result

    def _check_link(
        self,
        prompt: Any,
        val: list[Any],
        x: str,
        info: list[Any],
        validated: Validated,
        errors: list[dict[str, Any]],
    ) -> bool:
        if len(val) != 2:
            errors.append(
                _error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    x,
                    {"input_name": x, "input_config": info, "received_value": val},
                )
            )
            return True
        o_id = val[0]
        received_type = self._catalog.return_types(prompt[o_id]["class_type"])[val[1]]
        if not types_match(received_type, info[0]):
            details = f"{x}, received_type({received_type}) mismatch input_type({info[0]})"
            errors.append(
                _error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    details,
                    {
                        "input_name": x,
                        "input_config": info,
                        "received_type": received_type,
                        "linked_node": val,
                    },
                )
            )
            return True
        try:
            return self.validate_inputs(prompt, o_id, validated)[0] is not False
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            reasons = [
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    {
                        "input_name": x,
                        "input_config": info,
                        "exception_message": str(ex),
                        "exception_type": full_type_name(typ or Exception),
                        "traceback": traceback.format_tb(tb),
                        "linked_node": val,
                    },
                )
            ]
            validated[o_id] = (False, reasons, o_id)
            return False

    def _custom_validation(
        self, inputs: dict[str, Any], input_types: dict[str, Any], spec: NodeSpec
    ) -> list[dict[str, Any]]:
        if spec.validate is None:
            return []
        # Linked inputs reach VALIDATE_INPUTS as None, as in ComfyUI (no outputs exist yet).
        filtered = {
            name: (None if isinstance(inputs.get(name), list) else inputs.get(name))
            for name in spec.validate_args
            if name in inputs
        }
        result = spec.validate(self._catalog.dirs, filtered)
        if result is True:
            return []
        errors = []
        for name in filtered:
            details = name if result is False else f"{name} - {result}"
            errors.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    details,
                    {"input_name": name},
                )
            )
        return errors


def _check_constant(
    inputs: dict[str, Any], x: str, info: list[Any], spec: NodeSpec, errors: list[dict[str, Any]]
) -> None:
    input_type, extra_info = info
    val = inputs[x]
    try:
        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
            inputs[x] = val
        val = _convert(input_type, val)
        inputs[x] = val
    except Exception as ex:
        errors.append(
            _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {input_type} value",
                f"{x}, {val}, {ex}",
                {"input_name": x, "input_config": info, "received_value": val, "exception_message": str(ex)},
            )
        )
        return
    if x in spec.validate_args:
        return
    if "min" in extra_info and val < extra_info["min"]:
        errors.append(
            _error(
                "value_smaller_than_min",
                f"Value {val} smaller than min of {extra_info['min']}",
                x,
                {"input_name": x, "input_config": info, "received_value": val},
            )
        )
    elif "max" in extra_info and val > extra_info["max"]:
        errors.append(
            _error(
                "value_bigger_than_max",
                f"Value {val} bigger than max of {extra_info['max']}",
                x,
                {"input_name": x, "input_config": info, "received_value": val},
            )
        )
    elif isinstance(input_type, list) and val not in input_type:
        errors.append(_not_in_list(x, val, info))


def _convert(input_type: Any, val: Any) -> Any:
    if input_type == "INT":
        return int(val)
    if input_type == "FLOAT":
        return float(val)
    if input_type == "STRING":
        return str(val)
    if input_type == "BOOLEAN":
        return bool(val)
    return val


def _not_in_list(x: str, val: Any, info: list[Any]) -> dict[str, Any]:
    options = info[0]
    input_config: Any = info
    if len(options) > MAX_LISTED_COMBO_OPTIONS:
        list_info = f"(list of length {len(options)})"
        input_config = None
    else:
        list_info = str(options)
    return _error(
        "value_not_in_list",
        "Value not in list",
        f"{x}: '{val}' not in {list_info}",
        {"input_name": x, "input_config": input_config, "received_value": val},
    )
