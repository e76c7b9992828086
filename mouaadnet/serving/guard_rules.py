"""What the request guard checks in an inference request before Triton sees it: the inputs a model needs, and
no empty batch. Triton 2.51's own checks miss two cases (measured, docs/RELIABILITY.md):

- a request to the ensemble with only its optional `score_threshold`: Triton counts inputs (1 is within "1 to
  2"), so the request enters the ensemble, preprocess never runs and the client gets "unexpected deadlock, at
  least one output is not set while no more ensemble steps can be made";
- an image tensor of shape [0,1]: "expected 1 string elements for inference input 'image' ..., got 0".

The required inputs come from the repository's own configs (every non-optional input of every model), read
once when the guard starts. The request is read without decoding it: the gRPC message's fields before its raw
tensor contents (model name, input names and shapes; a few hundred bytes), or the HTTP request's JSON header.
"""

from __future__ import annotations

from pathlib import Path


def _datatype(config_type: str) -> str:
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def input_rules(repo: str | Path) -> dict[str, dict[str, str]]:
    """{model: {required input: "DTYPE [dims]"}} from every <repo>/<model>/config.pbtxt that parses."""
    from .repo_check import load_config

    rules = {}
    for config in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            cfg = load_config(config)
        except Exception:  # noqa: BLE001 - a config Triton will refuse anyway: nothing to enforce here
            continue
        batch = ["N"] if cfg["max_batch_size"] > 0 else []
        rules[cfg.get("name") or config.parent.name] = {
            t["name"]: f"{_datatype(t['data_type'])} [{','.join(str(d) for d in batch + t['dims'])}]"
            for t in cfg["input"] if not t["optional"]}
    return rules


def check_inputs(model: str, inputs: list[tuple[str, list[int]]], rules: dict[str, dict[str, str]]) -> str | None:
    """None when the request may go on; else the message for the client (INVALID_ARGUMENT / HTTP 400)."""
    required = rules.get(model, {})
    for name, shape in inputs:
        if any(d == 0 for d in shape):
            expected = f" (it is {required[name]}, N >= 1)" if name in required else ""
            return (f"input '{name}' of model '{model}' has shape [{','.join(map(str, shape))}]: an empty tensor, "
                    f"nothing to run; send at least one item{expected}")
    given = [name for name, _ in inputs]
    missing = [name for name in required if name not in given]
    if missing and given:  # no inputs at all: Triton's own message already names what is missing
        needs = ", ".join(f"'{name}' ({required[name]})" for name in missing)
        return (f"model '{model}' needs input {needs}; the request has only {', '.join(repr(g) for g in given)}"
                + (" (score_threshold alone has nothing to score: send the image with it)"
                   if "score_threshold" in given else ""))
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value or (start, end) of a length-delimited field) of one protobuf message."""
    pos, end = start, len(data) if end is None else end
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("truncated field")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def grpc_infer_inputs(message: bytes) -> tuple[str, list[tuple[str, list[int]]]]:
    """(model name, [(input name, shape)]) of a serialized ModelInferRequest; raw contents are skipped unread."""
    model, inputs = "", []
    for number, wire, value in _fields(message):
        if number == 1 and wire == 2:
            model = message[value[0]:value[1]].decode(errors="replace")
        elif number == 5 and wire == 2:  # InferInputTensor: 1 name, 3 shape (packed or not)
            name, shape = "", []
            for sub, sub_wire, sub_value in _fields(message, *value):
                if sub == 1 and sub_wire == 2:
                    name = message[sub_value[0]:sub_value[1]].decode(errors="replace")
                elif sub == 3 and sub_wire == 0:
                    shape.append(_signed(sub_value))
                elif sub == 3 and sub_wire == 2:
                    pos = sub_value[0]
                    while pos < sub_value[1]:
                        dim, pos = _varint(message, pos)
                        shape.append(_signed(dim))
            inputs.append((name, shape))
    return model, inputs


def http_infer_inputs(path: str, header: object) -> tuple[str, list[tuple[str, list[int]]]] | None:
    """(model, [(input name, shape)]) of POST /v2/models/<model>[/versions/<v>]/infer with its JSON header."""
    parts = path.strip("/").split("/")
    if len(parts) < 4 or parts[:2] != ["v2", "models"] or parts[-1] != "infer" or not isinstance(header, dict):
        return None
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        return None
    found = []
    for tensor in inputs:
        if isinstance(tensor, dict) and isinstance(tensor.get("shape"), list):
            found.append((str(tensor.get("name", "")), [d for d in tensor["shape"] if isinstance(d, int)]))
    return parts[2], found
