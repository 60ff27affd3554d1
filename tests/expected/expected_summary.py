#!/usr/bin/env python3
"""Independent reference for `tokenmeter replay --summary json` (SPEC §2/§3).

Written from the SPEC with Python's json module, sharing no code with the Rust
implementation, so the integration tests compare two independent readings of the rules.

    expected_summary.py [--config C.toml] FILE...           print the expected summary of FILEs replayed together
    expected_summary.py [--config C.toml] --write DIR FILE  write DIR/<basename>.json for each FILE
    expected_summary.py [--config C.toml] --check DIR FILE  fail if DIR/<basename>.json differs from what it computes

With --config, `[fields]` (incl. `[fields.extra_tokens]`), `source.max_line_bytes` and `[pricing]`
(SPEC §10) apply; when the config has at least one price the summary gets "currency", "cost",
"unpriced_requests", "unmetered_requests" and a "cost" per series, and --write/--check use
DIR/<basename>.priced.json. Cost is exact integer arithmetic in units of 10^-12 (never a float).
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

# SPEC §3 / §7 defaults: internal name -> access-log key
DEFAULT_FIELDS = {
    "model": "model", "input_tokens": "llm_input_token", "output_tokens": "llm_output_token",
    "total_tokens": "llm_total_token", "api_key_id": "api_key_id", "service_id": "aim_service_id",
    "status": "response_code", "start_time": "start_time", "duration_ms": "duration",
}
# SPEC §10: the default `included_in` (Envoy AI Gateway >= v0.5.0)
DEFAULT_INCLUDED_IN = {"cached_input": "input", "cache_creation_input": "input", "reasoning": "output"}


class NotJson(Exception):
    pass


class ConfigError(Exception):
    pass


# ---------------------------------------------------------------------------- time (SPEC §3)

RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$")


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


def duration_ns(v, present):
    """`duration` in milliseconds: a number >= 0 or a digit string; else None (not usable)."""
    if not present or v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        if v.isascii() and v.isdigit():
            return int(v) * 10**6
        return None
    if isinstance(v, int):
        return v * 10**6 if v >= 0 else None
    if isinstance(v, float) and math.isfinite(v) and v >= 0:
        return math.floor(fractions.Fraction(v) * 10**6)
    return None


def record_time(obj, envelope_ns, fields):
    """SPEC §3 event time from the record alone: envelope, else start + duration, else start."""
    if envelope_ns is not None:
        return envelope_ns
    start = parse_rfc3339(obj.get(fields["start_time"]))
    if start is None:
        return None
    k = fields["duration_ms"]
    dur = duration_ns(obj.get(k), k in obj)
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
    README decides), None for a plain line."""
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
    # A lone surrogate (from "\ud800") is not a character: the rule is U+FFFD. So are C0 controls
    # and DEL (README "Label values": a label never carries a raw control character).
    v = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or ord(c) == 0x7F else c
                for c in v)
    b = v.encode("utf-8")
    if len(b) > 256:
        # cut to 256 bytes on a character boundary: drop the incomplete tail
        return b[:256].decode("utf-8", "ignore")
    return v


def status_class(obj, key):
    """README: from response_code, a number or a digit string; 2xx..5xx, else other."""
    v = obj.get(key)
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


class Config:
    def __init__(self, path=None):
        table = {}
        if path is not None:
            import tomllib  # Python >= 3.11; only needed with --config
            with open(path, "rb") as f:
                table = tomllib.load(f)
        fields = dict(DEFAULT_FIELDS)
        ftable = table.get("fields", {})
        for k, v in ftable.items():
            if k == "extra_tokens":
                continue
            if k not in DEFAULT_FIELDS:
                raise ConfigError(f"fields.{k}: unknown key")
            fields[k] = v
        self.fields = fields
        self.extra = dict(ftable.get("extra_tokens", {}))  # type name -> access-log key
        self.max_line = table.get("source", {}).get("max_line_bytes", MAX_LINE)
        types = ["input", "output", "total"] + list(self.extra)
        pricing = Pricing(table.get("pricing", {}), types)
        # SPEC §10: pricing is off while there are no prices
        self.pricing = pricing if pricing.groups else None


def cost_text(n):
    """Integer units of 10^-12 -> plain decimal, at most 12 fractional digits, no trailing zeros."""
    whole, frac = divmod(n, UNIT)
    frac = f"{frac:012d}".rstrip("0")
    return f"{whole}.{frac}" if frac else str(whole)


# ---------------------------------------------------------------------------- the summary

def summarize(paths, config=None):
    config = config or Config()
    fields, pricing = config.fields, config.pricing
    lines = records = 0
    unpriced = unmetered = 0
    skipped = dict.fromkeys(REASONS, 0)
    series = {}
    for path in paths:
        previous = os.stat(path).st_mtime_ns  # SPEC §3: the first record's fallback
        for kind, text, envelope_ns in logical_lines(read_bytes(path), config.max_line):
            lines += 1
            if kind == "too_long":
                skipped["too_long"] += 1
                continue
            obj = load_object(text)
            if obj is None:
                skipped["not_json"] += 1
                continue
            model = obj.get(fields["model"])
            toks = {k: token(obj.get(fields[f]), fields[f] in obj) for k, f in
                    (("in", "input_tokens"), ("out", "output_tokens"), ("tot", "total_tokens"))}
            has_model = isinstance(model, str) and model not in ("", "-")
            if not has_model and not any(s == "valid" for s, _ in toks.values()):
                skipped["not_llm"] += 1
                continue
            records += 1
            t_ns = record_time(obj, envelope_ns, fields)
            if t_ns is None:
                t_ns = previous  # replay: the previous record's event time in this file
            previous = t_ns
            i, o, t = toks["in"], toks["out"], toks["tot"]
            total = t[1] if t[0] == "valid" else i[1] + o[1]
            key = (label(obj, fields["model"]), label(obj, fields["api_key_id"]),
                   label(obj, fields["service_id"]))
            s = series.setdefault(key, [0, 0, 0, 0, 0])
            s[0] += 1
            s[1] += i[1]
            s[2] += o[1]
            s[3] += total
            if pricing is None:
                continue
            extra = {name: token(obj.get(k), k in obj) for name, k in config.extra.items()}
            counts = {"input": i[1], "output": o[1], "total": total}
            counts.update({name: v[1] for name, v in extra.items()})
            valid = {"input": i[0] == "valid", "output": o[0] == "valid"}
            is_2xx = status_class(obj, fields["status"]) == "2xx"
            if is_2xx and not any(st == "valid" for st, _ in list(toks.values()) + list(extra.values())):
                unmetered += 1
            entry = pricing.select(key[0], key[2], t_ns)
            if entry is None:
                if any(c > 0 for c in counts.values()):
                    unpriced += 1
                continue
            cost, part = pricing.price(entry, counts, valid, is_2xx)
            s[4] += cost
            if part:
                unpriced += 1
    out = {"lines": lines, "records": records, "skipped": skipped}
    if pricing is not None:
        out.update({"currency": pricing.currency, "cost": CostNumber(sum(v[4] for v in series.values())),
                    "unpriced_requests": unpriced, "unmetered_requests": unmetered})
    rows = []
    for k, v in sorted(series.items(), key=lambda kv: tuple(x.encode() for x in kv[0])):
        row = {"model": k[0], "api_key_id": k[1], "service_id": k[2], "requests": v[0],
               "input_tokens": v[1], "output_tokens": v[2], "total_tokens": v[3]}
        if pricing is not None:
            row["cost"] = CostNumber(v[4])
        rows.append(row)
    out["series"] = rows
    return out


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


def main(argv):
    config_path = None
    if len(argv) >= 2 and argv[0] == "--config":
        config_path, argv = argv[1], argv[2:]
    try:
        config = Config(config_path)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        print(f"{config_path}: {e}", file=sys.stderr)
        return 2
    suffix = ".priced.json" if config.pricing is not None else ".json"
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
