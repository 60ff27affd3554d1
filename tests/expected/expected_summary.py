#!/usr/bin/env python3
"""Independent reference for `tokenmeter replay --summary json` (SPEC §2/§3).

Written from the SPEC with Python's json module, sharing no code with the Rust
implementation, so the integration tests compare two independent readings of the rules.

    expected_summary.py [--config C.toml] FILE...           print the expected summary of FILEs replayed together
    expected_summary.py [--config C.toml] --write DIR FILE  write DIR/<basename>.json for each FILE
    expected_summary.py [--config C.toml] --check DIR FILE  fail if DIR/<basename>.json differs from what it computes

With --config, `[fields]` (incl. `[fields.extra_tokens]`), `source.max_line_bytes` and `[pricing]`
(SPEC §10) apply; when the config has at least one price the summary gets "currency", "cost",
"unpriced_requests", "unpriced_tokens", "unmetered_requests" and a "cost" per series, and --write/--check use
DIR/<basename>.priced.json. Cost is exact integer arithmetic in units of 10^-12 (never a float).
With `[owners] file` (docs/owners.md) each series also has its "team" (the key is part of the
series: model, api_key_id, service_id, team, sorted in that order), and --write/--check use
DIR/<basename>.owners.json (.owners.priced.json with prices too).

    expected_summary.py --self-test                          run the hand-computed checks of the formats

Formats (SPEC §3, with the decisions that fill its gaps):
- `[fields] format` "auto": a line that is a JSON object is the first of gen_ai, genai_v04, kong,
  higress whose condition holds (on top-level keys), else tokenmeter; a line that is not is logfmt
  when it has key=value pairs with a key starting `llm.`; other lines with pairs are not_llm, the
  rest not_json. Pinned: JSON lines take that format's mapping without detection; pinned logfmt
  reads any non-JSON line with at least one pair, and a JSON line is not_llm.
- A `[fields]` key replaces that field's whole key list in every format (for kong's model, tokens
  and extra types it is read inside each plugin object); `[fields.extra_tokens]` does so per type.
- Fallbacks: a token field takes the first key whose value is not absent, null, "" or "-" (then
  judged alone); a label the first string other than "" and "-"; status, start time and duration
  the first key present and not null.
- Kong: one call per `ai.<plugin>` with a `usage` object and a model or a valid token value; the
  line counts once in `records`. `started_at` is epoch ms (a JSON number), + `/latencies/request`.
- logfmt: words split on spaces and tabs; `key=value` or `key="..."` (escapes `\"` and `\\`, any
  other backslash kept); other words are no pairs; a repeated key: the last wins. The first word,
  when not a pair, is the start time if it is RFC 3339; `duration` is Go's duration text, or a plain
  number of ms. An unclosed quote runs to the end of the line; text glued to a closing quote
  starts a new word; a word starting with `=` is no pair.
- The summary adds "formats" (record lines per format) after "skipped", and per series
  "<type>_tokens" for each extra type counted > 0 in it, after "total_tokens".
"""
import calendar
import fractions
import gzip
import json
import math
import os
import re
import sys
from decimal import Decimal, InvalidOperation

MAX_LINE = 1 << 20
MAX_TOKENS = 1 << 53
CRI = re.compile(rb"^(\d{4}-\d\d-\d\d[Tt]\S+) (stdout|stderr) ([PF])(:\S*)?(?: (.*))?$", re.S)
REASONS = ("not_json", "not_llm", "too_long")
UNIT = 10**12  # cost is kept in integer units of 10^-12 currency (SPEC §10)

# SPEC §3 "Formats": each format's mapping, internal field -> the keys tried in order (a key
# starting "/" is a JSON Pointer). "extra" maps an extra token type to its keys. For `kong` the model,
# token and extra fields are read inside each `ai.<plugin>` object, the others at the top level.
LEADING = ("the line's leading timestamp",)  # logfmt start_time: not a string, so never a log key
AS_TOKENMETER = {"status": ["response_code"], "start_time": ["start_time"], "duration_ms": ["duration"]}
MAPPINGS = {
    "gen_ai": {
        "model": ["gen_ai.request.model", "gen_ai.response.model"],
        "input_tokens": ["gen_ai.usage.input_tokens"], "output_tokens": ["gen_ai.usage.output_tokens"],
        "total_tokens": ["gen_ai.usage.total_tokens"],
        "api_key_id": ["api_key_id"], "service_id": ["gen_ai.provider.name"],
        "status": ["response_code", "http.status"], "start_time": ["start_time"], "duration_ms": ["duration"],
        "extra": {"cached_input": ["gen_ai.usage.cache_read.input_tokens"],
                  "cache_creation_input": ["gen_ai.usage.cache_creation.input_tokens"],
                  "reasoning": ["gen_ai.usage.reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"]},
    },
    "genai_v04": {
        "model": ["genai_model_name"], "input_tokens": ["genai_tokens_input"],
        "output_tokens": ["genai_tokens_output"], "total_tokens": ["genai_tokens_total"],
        "api_key_id": ["api_key_id"], "service_id": ["genai_backend_name"], **AS_TOKENMETER, "extra": {},
    },
    "kong": {
        "model": ["/meta/request_model", "/meta/response_model"],
        "input_tokens": ["/usage/prompt_tokens", "/usage/prompt_token"],
        "output_tokens": ["/usage/completion_tokens", "/usage/completion_token"],
        "total_tokens": ["/usage/total_tokens"],
        "api_key_id": ["/consumer/username", "/consumer/id"], "service_id": ["/service/name"],
        "status": ["/response/status"], "start_time": ["started_at"], "duration_ms": ["/latencies/request"],
        "extra": {},
    },
    "higress": {
        "model": ["/ai_log/model"], "input_tokens": ["/ai_log/input_token"],
        "output_tokens": ["/ai_log/output_token"], "total_tokens": [],
        "api_key_id": ["/ai_log/consumer"], "service_id": [],
        "status": ["response_code"], "start_time": ["start_time"], "duration_ms": ["/ai_log/llm_service_duration"],
        "extra": {},
    },
    # agentgateway's text log: llm.* keys up to v0.9, gen_ai.* from v0.10 (docs/formats.md).
    "logfmt": {
        "model": ["llm.request.model", "gen_ai.request.model", "llm.response.model", "gen_ai.response.model"],
        "input_tokens": ["llm.request.tokens", "gen_ai.usage.input_tokens"],
        "output_tokens": ["llm.response.tokens", "gen_ai.usage.output_tokens"],
        "total_tokens": ["gen_ai.usage.total_tokens"],
        "api_key_id": ["api_key_id"], "service_id": ["llm.provider", "gen_ai.provider.name"],
        "status": ["http.status"], "start_time": [LEADING], "duration_ms": ["duration"],
        "extra": {"cached_input": ["gen_ai.usage.cache_read.input_tokens"],
                  "cache_creation_input": ["gen_ai.usage.cache_creation.input_tokens"],
                  "reasoning": ["gen_ai.usage.reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"]},
    },
    "tokenmeter": {
        "model": ["model"], "input_tokens": ["llm_input_token"], "output_tokens": ["llm_output_token"],
        "total_tokens": ["llm_total_token"], "api_key_id": ["api_key_id"], "service_id": ["aim_service_id"],
        **AS_TOKENMETER,
        "extra": {"cached_input": ["llm_cached_input_token"],
                  "cache_creation_input": ["llm_cache_creation_input_token"],
                  "reasoning": ["llm_reasoning_token"]},
    },
}
FORMATS = tuple(MAPPINGS)
FIELDS = ("model", "input_tokens", "output_tokens", "total_tokens", "api_key_id", "service_id",
          "status", "start_time", "duration_ms")
# How a format writes its start time and duration (default: RFC 3339 and milliseconds).
TIME_KINDS = {"kong": ("epoch_ms", "ms"), "logfmt": ("rfc3339", "go")}
# SPEC §3: extra token types exist by default, whatever the format.
DEFAULT_EXTRA_TYPES = ("cached_input", "cache_creation_input", "reasoning")
# SPEC §10: the default `included_in` (Envoy AI Gateway >= v0.5.0)
DEFAULT_INCLUDED_IN = {"cached_input": "input", "cache_creation_input": "input", "reasoning": "output"}


class NotJson(Exception):
    pass


class ConfigError(Exception):
    pass


# ---------------------------------------------------------------------------- time (SPEC §3)

RFC3339 = re.compile(  # re.ASCII: \d is only 0-9 (a logfmt line's first word can be anything)
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$", re.ASCII)


def parse_rfc3339(text, need_offset=True):
    """Nanoseconds since the epoch (floor past 9 fractional digits), or None."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    m = RFC3339.match(text)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60
            and sec < 60):
        return None
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    off = m.group(8)
    off_s = 0
    if off not in ("Z", "z"):
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            return None
        off_s = (oh * 3600 + om * 60) * (1 if off[0] == "+" else -1)
    secs = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) - off_s
    return secs * 10**9 + int(frac)


def duration_ms_ns(v):
    """`duration` in milliseconds: a number >= 0 or a digit string, or a string in Go's duration
    form (`"2488ms"`, agentgateway's JSON log); else None (not usable)."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        if v.isascii() and v.isdigit():
            return int(v) * 10**6
        return go_duration_ns(v)
    if isinstance(v, int):
        return v * 10**6 if v >= 0 else None
    if isinstance(v, float) and math.isfinite(v) and v >= 0:
        return math.floor(fractions.Fraction(v) * 10**6)
    return None


GO_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # [0-9]: \d would take any Unicode digit
GO_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9,
            "m": 60 * 10**9, "h": 3600 * 10**9}
GO_PART = re.compile("(" + GO_NUMBER + ")(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def go_duration_ns(v):
    """logfmt `duration`: Go's time.Duration text (`3804ms`, `1.2s`, `250us`, `1m2s`), no sign;
    a plain number is milliseconds (as the JSON formats' `duration`). None when not usable."""
    if not isinstance(v, str):
        return None
    if re.fullmatch(GO_NUMBER, v):
        return math.floor(fractions.Fraction(v) * 10**6)
    pos, total = 0, fractions.Fraction(0)
    while pos < len(v):
        m = GO_PART.match(v, pos)
        if not m:
            return None
        total += fractions.Fraction(m.group(1)) * GO_UNITS[m.group(2)]
        pos = m.end()
    return math.floor(total) if v else None


def epoch_ms_ns(v):
    """Kong's `started_at`: epoch milliseconds as a JSON number >= 0; a string (a configured
    start-time key may name one) is read as RFC 3339."""
    if isinstance(v, str):
        return parse_rfc3339(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v) or v < 0:
        return None
    return math.floor(fractions.Fraction(v) * 10**6)


START_PARSERS = {"rfc3339": parse_rfc3339, "epoch_ms": epoch_ms_ns}
DURATION_PARSERS = {"ms": duration_ms_ns, "go": go_duration_ns}


def record_time(top, envelope_ns, fmt, mapping):
    """SPEC §3 event time from the record alone: envelope, else start + duration, else start,
    each read with the format's keys and the format's way of writing a time."""
    if envelope_ns is not None:
        return envelope_ns
    if fmt == "logfmt" and mapping["start_time"] == [LEADING]:
        # agentgateway writes the line at the request's end: its leading time is the event time.
        return parse_rfc3339(first_present(top, [LEADING]))
    start_kind, duration_kind = TIME_KINDS.get(fmt, ("rfc3339", "ms"))
    start = START_PARSERS[start_kind](first_present(top, mapping["start_time"]))
    if start is None:
        return None
    dur = DURATION_PARSERS[duration_kind](first_present(top, mapping["duration_ms"]))
    return start + dur if dur is not None else start


# ---------------------------------------------------------------------------- lines (SPEC §3)

def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)  # handles concatenated (multi-member) gzip
    return data


def logical_lines(data, max_line=MAX_LINE):
    """Yields (kind, text, envelope_ns) with kind 'line' or 'too_long' after envelopes and
    partials; envelope_ns is the CRI/docker timestamp (of a joined line's first part, as the
    docs/guarantees.md decides), None for a plain line."""
    partial = {}  # stream -> [bytearray, first part's time]
    physical = data.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()
    for raw in physical:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        m = CRI.match(raw)
        if m:
            stream, tag, content = m.group(2), m.group(3), m.group(5) or b""
            ts = parse_rfc3339(m.group(1))
            if tag == b"P":
                partial.setdefault(stream, [bytearray(), ts])[0].extend(content)
                continue
            if stream in partial:
                buf, ts = partial.pop(stream)
                content = bytes(buf) + content
            if content.endswith(b"\r"):
                content = content[:-1]
            yield from emit(content, max_line, ts)
            continue
        if raw.startswith(b'{"log":'):
            try:
                # surrogateescape keeps a character cut between two partials as raw bytes
                env = json.loads(raw.decode("utf-8", "surrogateescape"))
                log = env["log"]
                stream = env.get("stream", "stdout").encode()
                ts = parse_rfc3339(env.get("time"))
            except Exception:
                env = None
            if env is not None and isinstance(log, str):
                b = log.encode("utf-8", "surrogateescape")
                if not b.endswith(b"\n"):
                    partial.setdefault(stream, [bytearray(), ts])[0].extend(b)
                    continue
                b = b[:-1]
                if stream in partial:
                    buf, ts = partial.pop(stream)
                    b = bytes(buf) + b
                yield from emit(b, max_line, ts)
                continue
        yield from emit(raw, max_line, None)
    for stream in sorted(partial):
        buf, ts = partial[stream]
        yield from emit(bytes(buf), max_line, ts)


def emit(content, max_line, ts):
    if content.strip(b" \t") == b"":
        return
    if len(content) > max_line:
        yield ("too_long", None, None)
        return
    yield ("line", content.decode("utf-8", "replace"), ts)


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


def object_in_string(text):
    """The JSON object a string value holds (Higress' `ai_log`), else None. The string was already
    unescaped and repaired as part of its line, so this is plain JSON."""
    try:
        obj = json.loads(text, parse_constant=reject_constant)
    except (ValueError, NotJson, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------- keys (SPEC §3 Formats)

def pointer_steps(pointer):
    """RFC 6901: "/a~1b/c~0d" -> ["a/b", "c~d"]; None when a `~` is not followed by 0 or 1."""
    steps = []
    for raw in pointer.split("/")[1:]:
        if re.search(r"~(?![01])", raw):
            return None
        steps.append(raw.replace("~1", "/").replace("~0", "~"))  # ~1 first: "~01" is "~1"
    return steps


def resolve(scope, key):
    """(present, value) of `key` in a line's object (or a Kong plugin, or logfmt pairs). A plain
    key is one member, dots included; a "/..." key is a JSON Pointer, and a step that meets a
    string holding a JSON object goes on inside that object."""
    if not (isinstance(key, str) and key.startswith("/")):
        return (key in scope, scope.get(key))
    cur = scope
    for step in pointer_steps(key) or ():
        if isinstance(cur, str):
            cur = object_in_string(cur)
        if isinstance(cur, dict):
            if step not in cur:
                return (False, None)
            cur = cur[step]
        elif isinstance(cur, list) and re.fullmatch(r"0|[1-9][0-9]*", step) and int(step) < len(cur):
            cur = cur[int(step)]
        else:
            return (False, None)
    return (True, cur)


def not_measured(v):
    return v is None or (isinstance(v, str) and v in ("", "-"))


def first_token(scope, keys):
    """A token field with fallback keys: the first key holding a value other than null, "" and
    "-" decides, valid or not (an invalid first value does not fall back)."""
    for k in keys:
        present, v = resolve(scope, k)
        if present and not not_measured(v):
            return token(v, True)
    return ("absent", 0)


def first_present(scope, keys):
    """Status, start time, duration: the first key present and not null (None if none)."""
    for k in keys:
        present, v = resolve(scope, k)
        if present and v is not None:
            return v
    return None


def first_label(scope, keys):
    """A label with fallback keys: the first key holding a string other than "" and "-", cleaned;
    None when no key does (the caller writes `unknown`, and knows there was no model)."""
    for k in keys:
        _, v = resolve(scope, k)
        if isinstance(v, str) and v not in ("", "-"):
            return clean_label(v)
    return None


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


def clean_label(v):
    # A lone surrogate (from "\ud800") is not a character: the rule is U+FFFD. So are C0 controls
    # and DEL (docs/guarantees.md "What counts", label values: a label never carries a raw control character).
    v = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or ord(c) == 0x7F else c
                for c in v)
    b = v.encode("utf-8")
    if len(b) > 256:
        # cut to 256 bytes on a character boundary: drop the incomplete tail
        return b[:256].decode("utf-8", "ignore")
    return v


def status_class(v):
    """docs/guarantees.md: from the status value, a number or a digit string; 2xx..5xx, else other."""
    n = None
    if isinstance(v, bool) or v is None:
        n = None
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float) and math.isfinite(v) and v == int(v):
        n = int(v)
    elif isinstance(v, str) and v.isascii() and v.isdigit():
        n = int(v)
    if n is not None and 200 <= n <= 599:
        return f"{n // 100}xx"
    return "other"


# ---------------------------------------------------------------------------- formats (SPEC §3)

def kong_plugins(obj):
    """Kong: the members of the top-level `ai` object that hold a `usage` object."""
    ai = obj.get("ai")
    if not isinstance(ai, dict):
        return []
    return [p for p in ai.values() if isinstance(p, dict) and isinstance(p.get("usage"), dict)]


# The detection conditions of the table, tried in this order; `tokenmeter` takes the rest.
DETECT = (
    ("gen_ai", lambda o: any(k.startswith(("gen_ai.usage.", "gen_ai.request.model")) for k in o)),
    ("genai_v04", lambda o: any(k.startswith(("genai_tokens_", "genai_model_name")) for k in o)),
    ("kong", lambda o: bool(kong_plugins(o))),
    ("higress", lambda o: isinstance(o.get("ai_log"), str) and object_in_string(o["ai_log"]) is not None),
)


def quoted(text, i):
    """A double-quoted logfmt value starting at text[i] == '"': (value, index after the closing
    quote); an unclosed quote runs to the end of the line. `\"` and `\\` are escapes; any other
    backslash is kept as written."""
    out, j = [], i + 1
    while j < len(text):
        c = text[j]
        if c == '"':
            return "".join(out), j + 1
        if c == "\\":
            if j + 1 >= len(text):
                out.append(c)
                break
            nxt = text[j + 1]
            out.append(nxt if nxt in '"\\' else c + nxt)
            j += 2
            continue
        out.append(c)
        j += 1
    return "".join(out), len(text)


def logfmt_pairs(text):
    """A text line as logfmt: {key: value} (a repeated key: the last wins, as in JSON), with the
    line's first word under LEADING when it is not a pair; words without `=`, quoted words and
    words starting with `=` are no pairs; text right after a closing quote starts a new word."""
    pairs, i, n, first = {}, 0, len(text), True
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        start = i
        if text[i] == '"':  # a quoted word without a key (a message): skipped whole
            _, i = quoted(text, i)
            first = False
            continue
        while i < n and text[i] not in " \t=":
            i += 1
        if i < n and text[i] == "=":
            key = text[start:i]
            if not key:  # `=value`: no pair, the word is passed over
                while i < n and text[i] not in " \t":
                    i += 1
                first = False
                continue
            i += 1
            if i < n and text[i] == '"':
                value, i = quoted(text, i)
            else:
                vstart = i
                while i < n and text[i] not in " \t":
                    i += 1
                value = text[vstart:i]
            pairs[key] = value
        elif first:
            pairs[LEADING] = text[start:i]
        first = False
    return pairs


def has_pairs(pairs):
    return pairs is not None and any(isinstance(k, str) for k in pairs)


def read_line(text, pinned):
    """(format, object) of one logical line, or (None, skip reason). `pinned` is "auto" or a name."""
    obj = load_object(text)
    if obj is not None:
        if pinned == "logfmt":
            return None, "not_llm"  # a JSON line is no logfmt line, but a structured one
        if pinned != "auto":
            return pinned, obj
        return next((name for name, holds in DETECT if holds(obj)), "tokenmeter"), obj
    pairs = logfmt_pairs(text)
    if pinned == "logfmt" and has_pairs(pairs):
        return "logfmt", pairs
    if pinned == "auto" and has_pairs(pairs) and any(
            isinstance(k, str) and k.startswith(("llm.", "gen_ai.")) for k in pairs):
        return "logfmt", pairs
    # SPEC §3: a key=value line of no format is not_llm, like a JSON object of none.
    return None, ("not_llm" if has_pairs(pairs) else "not_json")


class Request:
    """One LLM call: a record, or one Kong plugin of a record."""

    def __init__(self, model, toks, extra, api_key_id, service_id, status):
        self.key = (model or "unknown", api_key_id or "unknown", service_id or "unknown")
        self.toks, self.extra, self.status = toks, extra, status


def requests_of(fmt, top, m):
    """The LLM calls of a line read as `fmt` with mapping `m`; empty when it is not_llm."""
    scopes = kong_plugins(top) if fmt == "kong" else [top]
    out = []
    for scope in scopes:
        model = first_label(scope, m["model"])
        toks = {f: first_token(scope, m[f]) for f in ("input_tokens", "output_tokens", "total_tokens")}
        if model is None and not any(st == "valid" for st, _ in toks.values()):
            continue  # SPEC §3 Records: neither a model nor a valid token value
        extra = {t: first_token(scope, keys) for t, keys in m["extra"].items()}
        out.append(Request(model, toks, extra, first_label(top, m["api_key_id"]),
                           first_label(top, m["service_id"]), status_class(first_present(top, m["status"]))))
    return out


# ---------------------------------------------------------------------------- config (SPEC §7, §10)

def glob_regex(pattern):
    """SPEC §10: case-sensitive, `*` matches any characters ('/', '.', ':' included)."""
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern) + r"\Z", re.S)


def decimal_of(v, what):
    """A rate or fee, read from its shortest round-trip decimal text, as an exact Fraction."""
    if isinstance(v, bool):
        raise ConfigError(f"{what}: not a number")
    if isinstance(v, int):
        text = str(v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"{what}: not finite")
        text = repr(v)  # the shortest text that round-trips to this float
    elif isinstance(v, str):
        text = v.strip()
        if not re.fullmatch(r"\d+(\.\d+)?|\.\d+", text):
            raise ConfigError(f"{what}: {v!r} is not a decimal")
    else:
        raise ConfigError(f"{what}: not a number")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"{what}: {v!r} is not a decimal")
    if d < 0:
        raise ConfigError(f"{what}: negative")
    return fractions.Fraction(d)


def units(fr):
    """Fraction -> int, rounded half to even (Fraction.__round__ is banker's rounding)."""
    return round(fr)


def rate_units(v, what):
    r = decimal_of(v, what)
    if r > 10**6:
        raise ConfigError(f"{what}: a rate above 10^6")
    return units(r * 10**6)  # currency per 10^6 tokens -> 10^-12 currency per token


def fee_units(v, what):
    return units(decimal_of(v, what) * UNIT)


class Pricing:
    def __init__(self, table, types):
        self.currency = table.get("currency", "USD")
        if not isinstance(self.currency, str):
            raise ConfigError("pricing.currency: not a string")
        included = table.get("included_in", DEFAULT_INCLUDED_IN)
        prices = table.get("prices", [])
        if table.get("file"):
            import tomllib
            with open(table["file"], "rb") as f:
                ext = tomllib.load(f)
            included = ext.get("included_in", included)
            prices = ext.get("prices", [])
        self.types = types
        # the tree: child -> parent
        self.parent = {"input": "total", "output": "total"}
        for k, v in included.items():
            if k not in types or k in ("input", "output", "total"):
                continue  # keys naming a type that [fields.extra_tokens] does not define: ignored
            if v not in types:
                raise ConfigError(f"pricing.included_in.{k}: unknown type {v!r}")
            self.parent[k] = v
        for t in types:
            seen, x = set(), t
            while x in self.parent:
                if x in seen:
                    raise ConfigError(f"pricing.included_in: a cycle through {t!r}")
                seen.add(x)
                x = self.parent[x]
        self.groups = []  # [(model_re, service_re, [entry...])] in file order
        by_patterns = {}
        seen_keys = set()
        for i, p in enumerate(prices):
            what = f"pricing.prices[{i}] (model {p.get('model')!r})"
            model, service = p["model"], p.get("service_id", "*")
            frm = p.get("from")
            frm_ns = None
            if frm is not None:
                frm_ns = parse_rfc3339(frm)
                if frm_ns is None:
                    raise ConfigError(f"{what}.from: not RFC 3339 with an offset")
            if (model, service, frm_ns) in seen_keys:
                raise ConfigError(f"{what}: a duplicate of model, service_id and from")
            seen_keys.add((model, service, frm_ns))
            rates = self._rates(p.get("per_million", {}), f"{what}.per_million")
            tiers = []
            for j, tier in enumerate(p.get("tiers", [])):
                tiers.append((int(tier["above_input"]),
                              self._rates(tier.get("per_million", {}), f"{what}.tiers[{j}]")))
            fee = fee_units(p.get("per_request", 0), f"{what}.per_request")
            entry = {"from": frm_ns, "rates": rates, "tiers": tiers, "fee": fee}
            key = (model, service)
            if key not in by_patterns:
                by_patterns[key] = (glob_regex(model), glob_regex(service), [])
                self.groups.append(by_patterns[key])
            by_patterns[key][2].append(entry)

    def _rates(self, table, what):
        out = {}
        for t, v in table.items():
            if t not in self.types:
                raise ConfigError(f"{what}: unknown type {t!r}")
            out[t] = rate_units(v, f"{what}.{t}")
        if "total" in out and ("input" in out or "output" in out):
            raise ConfigError(f"{what}: a total rate beside an input or output rate")
        return out

    def select(self, model, service, t_ns):
        """SPEC §10 Selection: the first group that matches and has an entry in force; in it the
        entry with the latest `from` (absent counts as earliest)."""
        for mre, sre, entries in self.groups:
            if not (mre.match(model) and sre.match(service)):
                continue
            in_force = [e for e in entries if e["from"] is None or e["from"] <= t_ns]
            if in_force:
                return max(in_force, key=lambda e: (e["from"] is not None, e["from"] or 0))
        return None

    def ancestors(self, t):
        while t in self.parent:
            t = self.parent[t]
            yield t

    def price(self, entry, counts, valid, is_2xx):
        """(cost units, unpriced?) of one record under its entry (SPEC §10 Tiers, Arithmetic,
        Unpriced)."""
        rates = dict(entry["rates"])
        above = [tier for tier in entry["tiers"] if counts["input"] > tier[0]]
        if above:
            rates.update(max(above, key=lambda tier: tier[0])[1])
        cost = 0
        for t, r in rates.items():
            children = 0
            for c in rates:
                if c != t and next((a for a in self.ancestors(c) if a in rates), None) == t:
                    children += counts[c]
            cost += max(0, counts[t] - children) * r
        if is_2xx:
            cost += entry["fee"]
        checked = ["input", "output"] if (valid["input"] or valid["output"]) else ["total"]
        unpriced = any(counts[t] > 0 and t not in rates and not any(a in rates for a in self.ancestors(t))
                       for t in checked)
        return cost, unpriced


def config_keys(value, what):
    """A `[fields]` key from the config: one log key (a "/..." one must be a valid pointer)."""
    if not isinstance(value, str):
        raise ConfigError(f"{what}: not a string")
    if value.startswith("/") and pointer_steps(value) is None:
        raise ConfigError(f"{what}: {value!r} is not a JSON Pointer (a `~` not followed by 0 or 1)")
    return [value]  # it replaces the whole list of keys of the format's row


class Owners:
    """docs/owners.md, read from the doc: `[[owners]]` entries (api_key_id glob, team, optional
    `from`) grouped by identical patterns in file order; a record's team is that of the first
    group whose pattern matches its api_key_id label value and that has an entry in force at its
    event time (`from` absent or at or before it), the latest `from` within the group; else
    `owners.default`."""

    def __init__(self, table):
        import tomllib
        self.label = table.get("label", "team")
        self.default = table.get("default", "unassigned")
        with open(table["file"], "rb") as f:
            entries = tomllib.load(f).get("owners", [])
        self.groups = []  # [(pattern_re, [(from_ns or None, team)])] in file order
        by_pattern = {}
        for i, e in enumerate(entries):
            frm = None
            if "from" in e:
                frm = parse_rfc3339(e["from"])
                if frm is None:
                    raise ConfigError(f"owners[{i}].from: not RFC 3339 with an offset")
            pattern = e["api_key_id"]
            if pattern not in by_pattern:
                by_pattern[pattern] = (glob_regex(pattern), [])
                self.groups.append(by_pattern[pattern])
            by_pattern[pattern][1].append((frm, e["team"]))

    def team(self, key, t_ns):
        for rx, entries in self.groups:
            if not rx.match(key):
                continue
            in_force = [e for e in entries if e[0] is None or e[0] <= t_ns]
            if in_force:
                # the latest `from`; absent counts as earliest
                team = max(in_force, key=lambda e: (e[0] is not None, e[0] or 0))[1]
                return clean_label(team)
        return clean_label(self.default)


class Config:
    def __init__(self, path=None, table=None):
        if table is None:
            table = {}
        if path is not None:
            import tomllib  # Python >= 3.11; only needed with --config
            with open(path, "rb") as f:
                table = tomllib.load(f)
        ftable = table.get("fields", {})
        self.format = ftable.get("format", "auto")
        if self.format != "auto" and self.format not in FORMATS:
            raise ConfigError(f"fields.format: {self.format!r} is not auto or one of {', '.join(FORMATS)}")
        overrides = {}
        for k, v in ftable.items():
            if k in ("extra_tokens", "format"):
                continue
            if k not in FIELDS:
                raise ConfigError(f"fields.{k}: unknown key")
            overrides[k] = config_keys(v, f"fields.{k}")
        extra = {t: config_keys(v, f"fields.extra_tokens.{t}")
                 for t, v in ftable.get("extra_tokens", {}).items()}
        # SPEC §3: a configured key overrides that key of every format's mapping (per type name
        # for the extra token types; the other default types keep their format's keys).
        self.mappings = {}
        for name, row in MAPPINGS.items():
            m = {f: list(keys) for f, keys in row.items() if f != "extra"}
            m.update(overrides)
            m["extra"] = {**{t: list(keys) for t, keys in row["extra"].items()}, **extra}
            self.mappings[name] = m
        self.extra_types = sorted(set(DEFAULT_EXTRA_TYPES) | set(extra))
        self.max_line = table.get("source", {}).get("max_line_bytes", MAX_LINE)
        types = ["input", "output", "total"] + self.extra_types
        pricing = Pricing(table.get("pricing", {}), types)
        # SPEC §10: pricing is off while there are no prices
        self.pricing = pricing if pricing.groups else None
        owners = table.get("owners", {})
        self.owners = Owners(owners) if owners.get("file") else None


def cost_text(n):
    """Integer units of 10^-12 -> plain decimal, at most 12 fractional digits, no trailing zeros."""
    whole, frac = divmod(n, UNIT)
    frac = f"{frac:012d}".rstrip("0")
    return f"{whole}.{frac}" if frac else str(whole)


# ---------------------------------------------------------------------------- the summary

class Series:
    def __init__(self):
        self.requests = self.input = self.output = self.total = self.cost = 0
        self.extra = {}  # type -> count; a type appears with its first non-zero value


def summarize(paths, config=None):
    config = config or Config()
    pricing = config.pricing
    owners = config.owners
    lines = records = 0
    unpriced = unmetered = unpriced_tokens = 0
    skipped = dict.fromkeys(REASONS, 0)
    formats = {}  # format -> record lines it read
    series = {}
    for path in paths:
        previous = os.stat(path).st_mtime_ns  # SPEC §3: the first record's fallback
        for kind, text, envelope_ns in logical_lines(read_bytes(path), config.max_line):
            lines += 1
            if kind == "too_long":
                skipped["too_long"] += 1
                continue
            fmt, obj = read_line(text, config.format)
            if fmt is None:
                skipped[obj] += 1
                continue
            m = config.mappings[fmt]
            calls = requests_of(fmt, obj, m)
            if not calls:
                skipped["not_llm"] += 1
                continue
            records += 1  # a line, however many calls (Kong) it reports
            formats[fmt] = formats.get(fmt, 0) + 1
            t_ns = record_time(obj, envelope_ns, fmt, m)
            if t_ns is None:
                t_ns = previous  # replay: the previous record's event time in this file
            previous = t_ns
            for r in calls:
                key = r.key if owners is None else r.key + (owners.team(r.key[1], t_ns),)
                _, part, unmet, tokens = account(series.setdefault(key, Series()), r, t_ns, pricing)
                unpriced += part
                unmetered += unmet
                unpriced_tokens += tokens
    out = {"lines": lines, "records": records, "skipped": skipped, "formats": dict(sorted(formats.items()))}
    if pricing is not None:
        out.update({"currency": pricing.currency, "cost": CostNumber(sum(v.cost for v in series.values())),
                    "unpriced_requests": unpriced, "unpriced_tokens": unpriced_tokens,
                    "unmetered_requests": unmetered})
    rows = []
    for k, v in sorted(series.items(), key=lambda kv: tuple(x.encode() for x in kv[0])):
        row = {"model": k[0], "api_key_id": k[1], "service_id": k[2]}
        if owners is not None:
            row["team"] = k[3]
        row.update({"requests": v.requests, "input_tokens": v.input, "output_tokens": v.output,
                    "total_tokens": v.total})
        for t in sorted(v.extra):
            row[f"{t}_tokens"] = v.extra[t]
        if pricing is not None:
            row["cost"] = CostNumber(v.cost)
        rows.append(row)
    out["series"] = rows
    return out


def account(s, r, t_ns, pricing):
    """Adds one call to its series; (cost, unpriced 0/1, unmetered 0/1, unpriced tokens: the
    call's total when it is unpriced, as llm_unpriced_tokens_total counts)."""
    i, o, t = r.toks["input_tokens"], r.toks["output_tokens"], r.toks["total_tokens"]
    total = t[1] if t[0] == "valid" else i[1] + o[1]
    s.requests += 1
    s.input += i[1]
    s.output += o[1]
    s.total += total
    for name, (_, n) in r.extra.items():
        if n > 0:  # zero never makes a series of its own (SPEC §3)
            s.extra[name] = s.extra.get(name, 0) + n
    if pricing is None:
        return 0, 0, 0, 0
    counts = dict.fromkeys(pricing.types, 0)
    counts.update({"input": i[1], "output": o[1], "total": total})
    counts.update({name: n for name, (_, n) in r.extra.items()})
    valid = {"input": i[0] == "valid", "output": o[0] == "valid"}
    is_2xx = r.status == "2xx"
    unmet = int(is_2xx and not any(st == "valid" for st, _ in list(r.toks.values()) + list(r.extra.values())))
    entry = pricing.select(r.key[0], r.key[2], t_ns)
    if entry is None:
        part = any(c > 0 for c in counts.values())
        return 0, int(part), unmet, total if part else 0
    cost, part = pricing.price(entry, counts, valid, is_2xx)
    s.cost += cost
    return cost, int(part), unmet, total if part else 0


class CostNumber:
    """A cost in units, written as a raw JSON number (json can't emit a decimal without a float)."""

    def __init__(self, n):
        self.n = n


COST_MARK = "\ue000cost:"


def dumps(summary, **kw):
    def default(o):
        if isinstance(o, CostNumber):
            return COST_MARK + cost_text(o.n)
        raise TypeError(o)
    text = json.dumps(summary, ensure_ascii=False, default=default, **kw)
    return re.sub('"' + COST_MARK + r'([0-9.]+)"', r"\1", text)


# ---------------------------------------------------------------------------- self-test

def self_test():
    """Hand-computed checks of the format rules (`--self-test`); every expected value below was
    worked out from the SPEC and the decisions in the module docstring, not printed by this code."""
    import tempfile
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    def fmt_of(line, pinned="auto"):
        return read_line(line, pinned)[0] or read_line(line, pinned)[1]

    def calls(line, config=None):
        config = config or Config()
        fmt, obj = read_line(line, config.format)
        return [(r.key, {f: n for f, (_, n) in r.toks.items()}, r.status)
                for r in requests_of(fmt, obj, config.mappings[fmt])]

    # -- detection, in the table's order
    check("gen_ai beats tokenmeter keys", calls(
        '{"gen_ai.request.model":"g","model":"t","llm_input_token":5,"gen_ai.usage.input_tokens":3}'),
        [(("g", "unknown", "unknown"), {"input_tokens": 3, "output_tokens": 0, "total_tokens": 0}, "other")])
    check("gen_ai beats genai_v04", fmt_of('{"genai_tokens_input":2,"gen_ai.usage.input_tokens":1}'), "gen_ai")
    check("gen_ai by its request model alone", fmt_of('{"gen_ai.request.model":null}'), "gen_ai")
    check("genai_v04 beats kong",
          fmt_of('{"genai_model_name":"v","ai":{"p":{"usage":{"prompt_tokens":1}}}}'), "genai_v04")
    check("kong beats higress", fmt_of(r'{"ai":{"p":{"usage":{}}},"ai_log":"{\"model\":\"h\"}"}'), "kong")
    check("higress", fmt_of(r'{"ai_log":"{\"model\":\"h\"}","model":"t"}'), "higress")
    check("ai_log not an object in a string", fmt_of('{"ai_log":"[1]","model":"t"}'), "tokenmeter")
    check("ai member without usage is not kong", fmt_of('{"ai":{"p":{"meta":{}}},"model":"t"}'), "tokenmeter")
    check("usage must be an object", fmt_of('{"ai":{"p":{"usage":7}}}'), "tokenmeter")
    check("logfmt with an llm. key", fmt_of("2026-01-01T00:00:00Z info llm.provider=x"), "logfmt")
    check("key=value without llm. key (SPEC: of no format)", fmt_of("a=1 b=2"), "not_llm")
    check("envoy text", fmt_of("[2026-03-17 09:14:01.202][1][warning][main] text"), "not_json")
    check("a JSON array is no object", fmt_of('[{"model":"m"}]'), "not_json")
    check("pinned logfmt, JSON line", fmt_of('{"model":"m"}', "logfmt"), "not_llm")
    check("pinned logfmt, no llm. key", fmt_of("a=1", "logfmt"), "logfmt")
    check("pinned logfmt, no pair", fmt_of("just words", "logfmt"), "not_json")
    check("pinned gen_ai, logfmt line", fmt_of("llm.request.model=m", "gen_ai"), "not_llm")
    check("pinned tokenmeter reads a gen_ai line", fmt_of('{"gen_ai.request.model":"g"}', "tokenmeter"),
          "tokenmeter")
    pinned = Config(table={"fields": {"format": "tokenmeter"}})
    check("pinned tokenmeter: its keys only", calls('{"gen_ai.request.model":"g","model":"t"}', pinned),
          [(("t", "unknown", "unknown"), {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}, "other")])
    check("pinned kong without ai: no call", calls('{"model":"t"}', Config(table={"fields": {"format": "kong"}})), [])

    # -- JSON Pointer (RFC 6901) and the step into a string
    check("pointer escapes", pointer_steps("/a~1b/c~0d"), ["a/b", "c~d"])
    check("~01 is ~1, not /", pointer_steps("/~01"), ["~1"])
    check("bad escape", pointer_steps("/a~2"), None)
    check("the empty key", pointer_steps("/"), [""])
    check("escaped lookup", resolve({"a/b": {"c~d": 5}}, "/a~1b/c~0d"), (True, 5))
    check("into a string", resolve({"x": '{"y":{"z":"7"}}'}, "/x/y/z"), (True, "7"))
    check("the last step keeps the string", resolve({"x": '{"y":1}'}, "/x"), (True, '{"y":1}'))
    check("a string holding an array", resolve({"x": "[10]"}, "/x/0"), (False, None))
    check("array index", resolve({"l": [10, 20]}, "/l/1"), (True, 20))
    check("no leading zero index", resolve({"l": [10, 20]}, "/l/01"), (False, None))
    check("a plain key keeps its dots", resolve({"a.b": 1, "a": {"b": 2}}, "a.b"), (True, 1))
    check("a pointer goes down", resolve({"a.b": 1, "a": {"b": 2}}, "/a/b"), (True, 2))
    check("present null", resolve({"x": None}, "/x"), (True, None))

    # -- fallbacks
    check("token: dash falls back", first_token({"a": "-", "b": 5}, ["a", "b"]), ("valid", 5))
    check("token: null falls back", first_token({"a": None, "b": "6"}, ["a", "b"]), ("valid", 6))
    check("token: invalid does not fall back", first_token({"a": "x", "b": 5}, ["a", "b"]), ("invalid", 0))
    check("token: negative does not fall back", first_token({"a": -1, "b": 5}, ["a", "b"]), ("invalid", 0))
    check("token: none", first_token({}, ["a", "b"]), ("absent", 0))
    check("label: empty falls back", first_label({"a": "", "b": "m"}, ["a", "b"]), "m")
    check("label: non-string falls back", first_label({"a": 5, "b": "m"}, ["a", "b"]), "m")
    check("label: none", first_label({"a": "-"}, ["a", "b"]), None)
    check("status: null falls back", status_class(first_present({"a": None, "b": 503}, ["a", "b"])), "5xx")
    check("status: present wins", status_class(first_present({"a": "abc", "b": 200}, ["a", "b"])), "other")
    check("gen_ai response model", calls('{"gen_ai.request.model":"-","gen_ai.response.model":"r",'
                                         '"http.status":201,"gen_ai.provider.name":"aws"}'),
          [(("r", "unknown", "aws"), {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}, "2xx")])

    # -- digit-string counts (SPEC §3 Token values)
    check("digits", token("40", True), ("valid", 40))
    check("leading zeros", token("0012", True), ("valid", 12))
    check("not digits", token("4a", True), ("invalid", 0))
    check("space", token(" 4", True), ("invalid", 0))
    check("non-ASCII digit", token("\u0664", True), ("invalid", 0))
    check("2^53 + 1", token("9007199254740993", True), ("invalid", 0))
    check("empty", token("", True), ("absent", 0))

    # -- Kong: two plugins, a usage-less one, one without model or token, one with a model only
    kong = ('{"ai":{"ai-request-transformer":{"meta":{"request_model":"ka"},"usage":{"prompt_tokens":10,'
            '"completion_tokens":5,"total_tokens":15}},"proxy":{"meta":{"request_model":"","response_model":"kb"},'
            '"usage":{"prompt_token":"20","completion_token":3}},"no-usage":{"meta":{"request_model":"kx"}},'
            '"empty":{"usage":{}},"model-only":{"meta":{"request_model":"ke"},"usage":{"prompt_tokens":null}}},'
            '"consumer":{"username":"-","id":"c1"},"service":{"name":"svc"},"response":{"status":200},'
            '"started_at":1767225600000,"latencies":{"request":250}}')
    check("kong calls", calls(kong), [
        (("ka", "c1", "svc"), {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}, "2xx"),
        (("kb", "c1", "svc"), {"input_tokens": 20, "output_tokens": 3, "total_tokens": 0}, "2xx"),
        (("ke", "c1", "svc"), {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}, "2xx")])
    check("kong without a counting plugin", calls('{"ai":{"p":{"usage":{}}}}'), [])
    # 2026-01-01T00:00:00Z = 20454 days (56 years, 14 leap days) x 86400 = 1767225600 s
    check("kong time: started_at + latency", record_time(json.loads(kong), None, "kong", MAPPINGS["kong"]),
          1767225600250 * 10**6)
    check("kong time: started_at alone",
          record_time({"started_at": 1767225600000, "latencies": {"request": "x"}}, None, "kong", MAPPINGS["kong"]),
          1767225600000 * 10**6)
    check("kong time: a string started_at is RFC 3339 (a configured key may name one)",
          record_time({"started_at": "2026-01-01T00:00:00Z"}, None, "kong", MAPPINGS["kong"]),
          1767225600 * 10**9)
    check("kong time: a string that is no RFC 3339 time is none",
          record_time({"started_at": "1767225600000"}, None, "kong", MAPPINGS["kong"]), None)
    check("kong plugin-relative override", calls(kong, Config(table={"fields": {"input_tokens": "/usage/completion_tokens"}}))[0][1],
          {"input_tokens": 5, "output_tokens": 5, "total_tokens": 15})

    # -- logfmt quoting
    check("quoting", logfmt_pairs(r'ts k="a \"b\" c=d" e=\x f="x\\y" g= h="" u=/p?q=1'),
          {LEADING: "ts", "k": 'a "b" c=d', "e": "\\x", "f": "x\\y", "g": "", "h": "", "u": "/p?q=1"})
    check("unclosed quote runs to the end", logfmt_pairs('a="b c'), {"a": "b c"})
    check("text after a closing quote starts a word", logfmt_pairs('a="b"c=d'), {"a": "b", "c": "d"})
    check("a word starting with = is no pair", logfmt_pairs("=v k=1"), {"k": "1"})
    check("repeated key: last", logfmt_pairs("a=1 a=2"), {"a": "2"})
    check("quoted message skipped", logfmt_pairs('ts "hello a=b" llm.x=1'), {LEADING: "ts", "llm.x": "1"})
    check("first word a pair: no timestamp", logfmt_pairs("a=1 ts"), {"a": "1"})
    check("tabs separate", logfmt_pairs("a=1\tb=2"), {"a": "1", "b": "2"})
    # durations
    for text, ns in (("3804ms", 3_804_000_000), ("1.2s", 1_200_000_000), ("250us", 250_000),
                     ("1m2s", 62_000_000_000), ("1h", 3_600_000_000_000), ("2\u00b5s", 2_000),
                     ("120", 120_000_000), ("1.5", 1_500_000), ("0", 0), ("abc", None), ("-1s", None),
                     ("", None), ("1s ", None), ("5", 5_000_000), ("1d", None), ("s", None)):
        check(f"duration {text!r}", go_duration_ns(text), ns)
    agw = ("2026-01-01T00:00:00.5Z info request gateway=default/default llm.provider=openai "
           "llm.request.model=lm llm.request.tokens=12 llm.response.model=lm-2 llm.response.tokens=9 "
           'http.status=200 duration=1.2s api_key_id="k 2"')
    check("logfmt call", calls(agw),
          [(("lm", "k 2", "openai"), {"input_tokens": 12, "output_tokens": 9, "total_tokens": 0}, "2xx")])
    # 1767225600 s + 0.5 s: the time the line was written, the duration not added
    check("logfmt time", record_time(logfmt_pairs(agw), None, "logfmt", MAPPINGS["logfmt"]), 1767225600_500_000_000)
    check("logfmt time without duration", record_time(logfmt_pairs("2026-01-01T00:00:00Z llm.x=1 duration=-"),
                                                      None, "logfmt", MAPPINGS["logfmt"]), 1767225600 * 10**9)
    check("logfmt: envelope first", record_time(logfmt_pairs(agw), 7, "logfmt", MAPPINGS["logfmt"]), 7)
    check("logfmt response model", calls("llm.request.model=- llm.response.model=r")[0][0], ("r", "unknown", "unknown"))
    check("logfmt dash tokens only", calls("llm.request.tokens=- llm.response.tokens= llm.provider=p"), [])

    # -- [fields] overrides: every format, the whole list; extra types per name
    over = Config(table={"fields": {"model": "m2", "extra_tokens": {"reasoning": "r", "audio": "/u/audio"}}})
    check("override in gen_ai", over.mappings["gen_ai"]["model"], ["m2"])
    check("override in logfmt", calls("llm.request.model=a m2=b", over)[0][0][0], "b")
    check("extra override per type", over.mappings["gen_ai"]["extra"],
          {"cached_input": ["gen_ai.usage.cache_read.input_tokens"],
           "cache_creation_input": ["gen_ai.usage.cache_creation.input_tokens"], "reasoning": ["r"],
           "audio": ["/u/audio"]})
    check("extra types for kong", over.mappings["kong"]["extra"], {"reasoning": ["r"], "audio": ["/u/audio"]})
    check("extra types", over.extra_types, ["audio", "cache_creation_input", "cached_input", "reasoning"])
    for bad in ({"format": "envoy"}, {"model": "/a~2"}, {"model": 3}):
        try:
            Config(table={"fields": bad})
            failures.append(f"config {bad}: accepted")
        except ConfigError:
            pass

    # -- the summary: formats, <type>_tokens, order of keys
    lines = [
        '{"gen_ai.request.model":"g","gen_ai.usage.input_tokens":10,"gen_ai.usage.output_tokens":4,'
        '"gen_ai.usage.cache_read.input_tokens":6,"gen_ai.usage.reasoning_tokens":"-",'
        '"gen_ai.usage.reasoning.output_tokens":2,"api_key_id":"k","gen_ai.provider.name":"p"}',
        '{"gen_ai.request.model":"g","gen_ai.usage.input_tokens":1,"gen_ai.usage.cache_read.input_tokens":0,'
        '"api_key_id":"k","gen_ai.provider.name":"p"}',
        '{"model":"t","llm_input_token":3,"llm_cache_creation_input_token":0}',
        kong,
        agw,
        r'{"ai_log":"{\"model\":\"h\",\"input_token\":\"5\",\"output_token\":\"2\",\"consumer\":\"u\"}","response_code":200}',
        '{"genai_model_name":"v","genai_tokens_input":1,"genai_tokens_output":1,"genai_tokens_total":5,'
        '"genai_backend_name":"b"}',
        "a=1 b=2",
        '{"ai":{"p":{"usage":{}}}}',
        '{"x":1}',
        "2026-01-01T00:00:00Z info llm.provider=p",
    ]

    def row(model, key, service, n, i, o, t, **extra):
        r = {"model": model, "api_key_id": key, "service_id": service, "requests": n,
             "input_tokens": i, "output_tokens": o, "total_tokens": t}
        r.update({f"{name}_tokens": v for name, v in extra.items()})
        return r
    want = {"lines": 11, "records": 7, "skipped": {"not_json": 0, "not_llm": 4, "too_long": 0},
            "formats": {"gen_ai": 2, "genai_v04": 1, "higress": 1, "kong": 1, "logfmt": 1, "tokenmeter": 1},
            "series": [row("g", "k", "p", 2, 11, 4, 15, cached_input=6, reasoning=2),
                       row("h", "u", "unknown", 1, 5, 2, 7),
                       row("ka", "c1", "svc", 1, 10, 5, 15),
                       row("kb", "c1", "svc", 1, 20, 3, 23),
                       row("ke", "c1", "svc", 1, 0, 0, 0),
                       row("lm", "k 2", "openai", 1, 12, 9, 21),
                       row("t", "unknown", "unknown", 1, 3, 0, 3),
                       row("v", "unknown", "b", 1, 1, 1, 5)]}
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        check("summary", dumps(summarize([f.name])), json.dumps(want, ensure_ascii=False))
        # input 1/M: 10^6 units a token. Line 1: input 10 - cached 6 = 4, cached 6 -> 10 x 10^6;
        # line 2: input 1 -> 10^6; g costs 11 x 10^6 units = 0.000011. Unpriced: line 1 (output 4
        # has no rate) and h, ka, kb, lm, t, v (no entry; ke counts nothing) = 7, their totals
        # 14 + 7 + 15 + 23 + 21 + 3 + 5 = 88 unpriced tokens. Unmetered: ke (2xx).
        priced = Config(table={"pricing": {"prices": [{"model": "g", "per_million": {"input": 1, "cached_input": 1}}]}})
        got = dumps(summarize([f.name], priced))
        want_priced = dict(list(want.items())[:4])
        want_priced.update({"currency": "USD", "cost": "0.000011", "unpriced_requests": 7, "unpriced_tokens": 88,
                            "unmetered_requests": 1,
                            "series": [dict(r, cost="0.000011" if r["model"] == "g" else 0) for r in want["series"]]})
        check("priced summary", json.loads(got, parse_float=str, object_pairs_hook=list),
              json.loads(json.dumps(want_priced), object_pairs_hook=list))
    finally:
        os.unlink(f.name)

    for line in failures:
        print("FAIL", line, file=sys.stderr)
    print(f"self-test: {len(failures)} failure(s)", file=sys.stderr)
    return 1 if failures else 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    config_path = None
    if len(argv) >= 2 and argv[0] == "--config":
        config_path, argv = argv[1], argv[2:]
    try:
        config = Config(config_path)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        print(f"{config_path}: {e}", file=sys.stderr)
        return 2
    suffix = (".owners" if config.owners is not None else "") + \
        (".priced" if config.pricing is not None else "") + ".json"
    if argv and argv[0] in ("--write", "--check"):
        mode, out_dir, files = argv[0], argv[1], argv[2:]
        bad = 0
        for f in files:
            got = dumps(summarize([f], config), indent=1) + "\n"
            target = os.path.join(out_dir, os.path.basename(f) + suffix)
            if mode == "--write":
                with open(target, "w", encoding="utf-8") as fh:
                    fh.write(got)
            else:
                with open(target, encoding="utf-8") as fh:
                    if fh.read() != got:
                        print(f"{target}: differs from the reference computation", file=sys.stderr)
                        bad += 1
        return 1 if bad else 0
    print(dumps(summarize(argv, config)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
