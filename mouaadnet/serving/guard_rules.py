"""What the request guard checks in an inference request before Triton sees it: the inputs a model needs, and
no empty batch. Triton 2.51's own checks miss two cases (measured, docs/RELIABILITY.md):

- a request to the ensemble with only its optional `score_threshold`: Triton counts inputs (1 is within "1 to
  2"), so the request enters the ensemble, preprocess never runs and the client gets "unexpected deadlock, at
  least one output is not set while no more ensemble steps can be made";
- an image tensor of shape [0,1]: "expected 1 string elements for inference input 'image' ..., got 0".

Two more rules for a Python-backend stub that died (Triton 2.51 neither restarts nor reports it; `serve` reloads
the model, ~2 s): an inference request Triton failed with the dead stub's error is sent again (inference is
idempotent; another instance answers it), and a readiness call is answered "not ready" for a model that has no
live stub left, nor for an ensemble that needs one (Triton says READY throughout).

The required inputs come from the repository's own configs (every non-optional input of every model), read
once when the guard starts. The request is read without decoding it: the gRPC message's fields before its raw
tensor contents (model name, input names and shapes; a few hundred bytes), or the HTTP request's JSON header.
"""

from __future__ import annotations

import re
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


def ensemble_steps(repo: str | Path) -> dict[str, list[str]]:
    """{ensemble: [the models its steps call]} from every <repo>/<model>/config.pbtxt that parses."""
    from .repo_check import load_config

    steps = {}
    for config in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            cfg = load_config(config)
        except Exception:  # noqa: BLE001 - a config Triton will refuse anyway
            continue
        if cfg.get("steps"):
            steps[cfg.get("name") or config.parent.name] = [s["model_name"] for s in cfg["steps"]]
    return steps


def needed_models(model: str, steps: dict[str, list[str]]) -> set[str]:
    """``model`` and every model its ensemble steps call, recursively."""
    needed, todo = set(), [model]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(steps.get(name, []))
    return needed


# Triton 2.51's errors for a request routed to an instance whose stub is dead (python_backend stub_launcher.cc,
# python_be.cc): the request never ran in a live stub, so sending it again is safe.
STUB_DEATH = re.compile(r"Stub process '[^']*' is not healthy|The stub process has exited unexpectedly|"
                        r"Failed to obtain the health mutex")


def stub_died(message: str) -> bool:
    return STUB_DEATH.search(message) is not None


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


def grpc_model_name(message: bytes) -> str:
    """Field 1 (name) of a ModelReadyRequest / ModelMetadataRequest; '' when absent or malformed."""
    try:
        for number, wire, value in _fields(message):
            if number == 1 and wire == 2:
                return message[value[0]:value[1]].decode(errors="replace")
    except ValueError:
        pass
    return ""


def _bytes_elements(raw: memoryview) -> list[memoryview]:
    """The elements of a BYTES tensor's raw contents: each a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    while pos + 4 <= len(raw):
        n = int.from_bytes(raw[pos:pos + 4], "little")
        out.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def grpc_bytes_elements(message: bytes) -> list[memoryview]:
    """Every element of the BYTES inputs of a serialized ModelInferRequest sent as raw contents (what tritonclient
    sends), without copying them; [] when malformed."""
    datatypes, raws = [], []
    view = memoryview(message)
    try:
        for number, wire, value in _fields(message):
            if number == 5 and wire == 2:  # InferInputTensor: 2 datatype
                datatypes.append(next((message[v[0]:v[1]].decode(errors="replace") for n, w, v in
                                       _fields(message, *value) if n == 2 and w == 2), ""))
            elif number == 7 and wire == 2:  # raw_input_contents, one per input, in order
                raws.append(view[value[0]:value[1]])
    except ValueError:
        return []
    if len(raws) != len(datatypes):
        return []
    return [element for datatype, raw in zip(datatypes, raws) if datatype == "BYTES"
            for element in _bytes_elements(raw)]


def http_bytes_elements(header: object, body: bytes, header_length: int) -> list[memoryview]:
    """Every element of the BYTES inputs of an HTTP inference request sent with the binary-data extension."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return []
    view, pos, out = memoryview(body), header_length, []
    for tensor in header["inputs"]:
        size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor, dict) else None
        if not isinstance(size, int) or size < 0:
            continue  # JSON data: no binary part
        if tensor.get("datatype") == "BYTES":
            out.extend(_bytes_elements(view[pos:pos + size]))
        pos += size
    return out


def gate_settings(repo: str | Path) -> dict[str, int]:
    """The server-wide decode budget of <repo>/preprocess/config.pbtxt (max_pixels_in_flight,
    always_admit_pixels, input_size), which the guard's cost classes apply before Triton; {} when absent."""
    from .repo_check import load_config

    try:
        params = load_config(Path(repo) / "preprocess" / "config.pbtxt")["parameters"]
        return {"limit": int(params["max_pixels_in_flight"]), "always_admit": int(params["always_admit_pixels"]),
                "size": int(params.get("input_size", 320))}
    except Exception:  # noqa: BLE001 - no preprocess model (or no budget in it): nothing to apply
        return {}


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
