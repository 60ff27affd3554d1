#!/usr/bin/env python3
"""Independent reference for `tokenmeter replay --summary json` (SPEC §2/§3).

Written from the SPEC with Python's json module, sharing no code with the Rust
implementation, so the integration tests compare two independent readings of the rules.

    expected_summary.py FILE...            print the expected summary of FILEs replayed together
    expected_summary.py --write DIR FILE   write DIR/<basename>.json for each FILE
    expected_summary.py --check DIR FILE   fail if DIR/<basename>.json differs from what it computes
"""
import gzip
import json
import math
import os
import re
import sys

MAX_LINE = 1 << 20
MAX_TOKENS = 1 << 53
CRI = re.compile(rb"^(\d{4}-\d\d-\d\d[Tt]\S+) (stdout|stderr) ([PF])(:\S*)?(?: (.*))?$", re.S)
REASONS = ("not_json", "not_llm", "too_long")


class NotJson(Exception):
    pass


def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)  # handles concatenated (multi-member) gzip
    return data


def logical_lines(data):
    """Yields (kind, text) with kind 'line' or 'too_long' after envelopes and partials."""
    partial = {}  # stream -> bytearray
    physical = data.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()
    for raw in physical:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        m = CRI.match(raw)
        if m:
            stream, tag, content = m.group(2), m.group(3), m.group(5) or b""
            if tag == b"P":
                partial.setdefault(stream, bytearray()).extend(content)
                continue
            if stream in partial:
                content = bytes(partial.pop(stream)) + content
            if content.endswith(b"\r"):
                content = content[:-1]
            yield from emit(content)
            continue
        if raw.startswith(b'{"log":'):
            try:
                # surrogateescape keeps a character cut between two partials as raw bytes
                env = json.loads(raw.decode("utf-8", "surrogateescape"))
                log = env["log"]
                stream = env.get("stream", "stdout").encode()
            except Exception:
                env = None
            if env is not None and isinstance(log, str):
                b = log.encode("utf-8", "surrogateescape")
                if not b.endswith(b"\n"):
                    partial.setdefault(stream, bytearray()).extend(b)
                    continue
                b = b[:-1]
                if stream in partial:
                    b = bytes(partial.pop(stream)) + b
                yield from emit(b)
                continue
        yield from emit(raw)
    for stream in sorted(partial):
        yield from emit(bytes(partial[stream]))


def emit(content):
    if content.strip(b" \t") == b"":
        return
    if len(content) > MAX_LINE:
        yield ("too_long", None)
        return
    yield ("line", content.decode("utf-8", "replace"))


def envoy_octal_to_replacement(text):
    # Envoy writes a byte that is not UTF-8 as \NNN (octal) inside a string; that is not JSON.
    return re.sub(r"\\(\\|[0-3][0-7][0-7])", lambda m: r"\\" if m.group(1) == "\\" else r"\ufffd", text)


def reject_constant(name):
    raise NotJson(name)


def load_object(text):
    try:
        obj = json.loads(envoy_octal_to_replacement(text), parse_constant=reject_constant)
    except (ValueError, NotJson, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def token(v, present):
    """('absent'|'valid'|'invalid', value)"""
    if not present or v is None:
        return ("absent", 0)
    if isinstance(v, bool):
        return ("invalid", 0)
    if isinstance(v, int):
        return ("valid", v) if 0 <= v <= MAX_TOKENS else ("invalid", 0)
    if isinstance(v, float):
        if math.isfinite(v) and v >= 0 and v == int(v) and v <= MAX_TOKENS:
            return ("valid", int(v))
        return ("invalid", 0)
    if isinstance(v, str):
        if v in ("", "-"):
            return ("absent", 0)
        if v.isascii() and v.isdigit():
            n = int(v)
            return ("valid", n) if n <= MAX_TOKENS else ("invalid", 0)
    return ("invalid", 0)


def label(obj, key):
    v = obj.get(key)
    if not isinstance(v, str) or v in ("", "-"):
        return "unknown"
    # A lone surrogate (from "\ud800") is not a character: the rule is U+FFFD.
    v = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in v)
    b = v.encode("utf-8")
    if len(b) > 256:
        # cut to 256 bytes on a character boundary: drop the incomplete tail
        return b[:256].decode("utf-8", "ignore")
    return v


def summarize(paths):
    lines = records = 0
    skipped = dict.fromkeys(REASONS, 0)
    series = {}
    for path in paths:
        for kind, text in logical_lines(read_bytes(path)):
            lines += 1
            if kind == "too_long":
                skipped["too_long"] += 1
                continue
            obj = load_object(text)
            if obj is None:
                skipped["not_json"] += 1
                continue
            model = obj.get("model")
            toks = {k: token(obj.get(f), f in obj) for k, f in
                    (("in", "llm_input_token"), ("out", "llm_output_token"), ("tot", "llm_total_token"))}
            has_model = isinstance(model, str) and model not in ("", "-")
            if not has_model and not any(s == "valid" for s, _ in toks.values()):
                skipped["not_llm"] += 1
                continue
            records += 1
            i, o, t = toks["in"], toks["out"], toks["tot"]
            total = t[1] if t[0] == "valid" else i[1] + o[1]
            key = (label(obj, "model"), label(obj, "api_key_id"), label(obj, "aim_service_id"))
            s = series.setdefault(key, [0, 0, 0, 0])
            s[0] += 1
            s[1] += i[1]
            s[2] += o[1]
            s[3] += total
    return {
        "lines": lines,
        "records": records,
        "skipped": skipped,
        "series": [
            {"model": k[0], "api_key_id": k[1], "service_id": k[2], "requests": v[0],
             "input_tokens": v[1], "output_tokens": v[2], "total_tokens": v[3]}
            for k, v in sorted(series.items(), key=lambda kv: tuple(x.encode() for x in kv[0]))
        ],
    }


def main(argv):
    if argv and argv[0] in ("--write", "--check"):
        mode, out_dir, files = argv[0], argv[1], argv[2:]
        bad = 0
        for f in files:
            got = json.dumps(summarize([f]), indent=1, ensure_ascii=False) + "\n"
            target = os.path.join(out_dir, os.path.basename(f) + ".json")
            if mode == "--write":
                with open(target, "w", encoding="utf-8") as fh:
                    fh.write(got)
            else:
                with open(target, encoding="utf-8") as fh:
                    if fh.read() != got:
                        print(f"{target}: differs from the reference computation", file=sys.stderr)
                        bad += 1
        return 1 if bad else 0
    print(json.dumps(summarize(argv), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
