"""The built-in record formats (entry point ``formats`` of the ``mmalign`` group): ``jsonl`` (one
JSON object per line) and ``json`` (a list of objects), both with the strict JSON rules of
:mod:`mmalign_formats.strict_json`."""

from mmalign.hookspecs import hookimpl
from mmalign_formats.readers import read_json, read_jsonl, stream_jsonl
from mmalign_formats.strict_json import parse_json


@hookimpl
def mmalign_register_datasets(register):
    register("jsonl", read_jsonl, suffixes=(".jsonl",), stream=stream_jsonl)  # data.streaming
    register("json", read_json, suffixes=(".json",))


__all__ = ["parse_json", "read_json", "read_jsonl", "stream_jsonl"]
