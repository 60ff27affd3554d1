#!/usr/bin/env python3
"""Rewrites gen-access-log.py output (the seed's keys) into Kong and Higress lines with the same
records, for the formats benchmark (BENCHMARKS.md "Formats told apart line by line"):

    reshape-formats.py IN.jsonl KONG.jsonl HIGRESS.jsonl

Kong: `consumer.username`, `service.name`, `response.status` and `ai.proxy.usage/meta`, as Kong's
log plugins write them. Higress: `ai_log`, a JSON object inside a string, as `ai-statistics`
writes it. Every other member stays, so a replay of each gives the same totals.
"""
import json
import sys


def main(src, kong_path, higress_path):
    with open(src) as f, open(kong_path, "w") as kong, open(higress_path, "w") as higress:
        for line in f:
            o = json.loads(line)
            model = o.pop("model")
            tokens = [o.pop(k) for k in ("llm_input_token", "llm_output_token", "llm_total_token")]
            key, service = o.pop("api_key_id"), o.pop("aim_service_id")
            k = dict(o)
            k["consumer"] = {"username": key}
            k["service"] = {"name": service}
            k["response"] = {"status": o.get("response_code")}
            k["ai"] = {"proxy": {
                "usage": dict(zip(("prompt_tokens", "completion_tokens", "total_tokens"), tokens)),
                "meta": {"request_model": model, "provider_name": "openai"}}}
            kong.write(json.dumps(k, separators=(",", ":")) + "\n")
            h = dict(o)
            h["ai_log"] = json.dumps({"model": model, "input_token": tokens[0],
                                      "output_token": tokens[1], "consumer": key},
                                     separators=(",", ":"))
            higress.write(json.dumps(h, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
