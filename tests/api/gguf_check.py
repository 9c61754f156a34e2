"""Checks a GGUF written by ragd's `quantize` job with the `gguf` package
(llama.cpp's reader), against the file it was made from.

Usage: gguf_check.py SOURCE WRITTEN TYPE. Prints a JSON summary; exits
non-zero when a check fails."""

import json
import sys

import gguf

T = gguf.GGMLQuantizationType
TYPES = {"q8_0": T.Q8_0, "q4_k": T.Q4_K, "f16": T.F16, "f32": T.F32}
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k": 14}
REQUIRED_KEYS = ["general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"]


def values(field):
    return [field.parts[i].tolist() for i in field.data]


def expected_type(shape, requested, output):
    """1-D tensors stay f32; under Q4_K the output projection takes Q6_K or
    Q8_0; rows that do not fill the type's blocks take Q5_0 (for Q4_K) or
    f32. `shape` is in ggml order: row length first."""
    if len(shape) < 2:
        return T.F32
    row = int(shape[0])
    if requested == T.Q4_K:
        candidates = [T.Q6_K, T.Q8_0] if output else [T.Q4_K, T.Q5_0]
    else:
        candidates = [requested]
    for candidate in candidates:
        if row % gguf.GGML_QUANT_SIZES[candidate][0] == 0:
            return candidate
    return T.F32


def main():
    source_path, written_path, requested_name = sys.argv[1:4]
    requested = TYPES[requested_name]
    source = gguf.GGUFReader(source_path)
    written = gguf.GGUFReader(written_path)

    source_tensors = {t.name: t for t in source.tensors}
    written_tensors = {t.name: t for t in written.tensors}
    assert sorted(source_tensors) == sorted(written_tensors), "tensor names differ"
    output = "output.weight" if "output.weight" in written_tensors else "token_embd.weight"
    counts = {}
    for name, tensor in written_tensors.items():
        assert list(tensor.shape) == list(source_tensors[name].shape), f"{name}: shape {tensor.shape}"
        want = expected_type(tensor.shape, requested, name == output)
        assert tensor.tensor_type == want, f"{name}: {tensor.tensor_type.name}, expected {want.name}"
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    assert counts.get(requested.name, 0) > 0, f"no tensor is {requested.name}: {counts}"

    for key in REQUIRED_KEYS:
        assert key in written.fields, f"metadata {key} is missing"
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert key in written.fields, f"metadata {key} was dropped"
        assert values(written.fields[key]) == values(field), f"metadata {key} changed"
    file_type = values(written.fields["general.file_type"])[0][0]
    assert file_type == FILE_TYPES[requested_name], f"general.file_type is {file_type}"

    print(json.dumps({"tensors": len(written_tensors), "types": counts, "metadata_keys": len(written.fields)}))


if __name__ == "__main__":
    main()
