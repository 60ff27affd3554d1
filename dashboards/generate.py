#!/usr/bin/env python3
"""Writes the Grafana dashboards in this folder from the compact definitions below.

    dashboards/generate.py          # rewrites dashboards/*.json

Data sources: every dashboard has a data-source template variable, DS_PROMETHEUS (type
datasource, query prometheus; and DS_LOKI, query loki, for the logs one), and every panel and
query variable refers to its data source only as ${DS_PROMETHEUS} / ${DS_LOKI}. So the files
work as they are with file or sidecar provisioning (the variable resolves, defaulting to the
default data source of that type) and can be switched at the top of the dashboard; the same
names are also declared in `__inputs`, so a UI import (Dashboards > Import) asks for them and
wires them in. No data source is hard-coded.

Queries use the metric names of SPEC §4 exactly as Mimir stores them with its default OTLP
settings and sum over agents, so the panels work on Mimir, Prometheus and VictoriaMetrics
alike. Token counters are read with {pod=""}, as the recording rules do: a token counter has no
`pod` label of its own, so a copy that also arrives by a Kubernetes scrape (which adds the
target's `pod`) is left out and nothing is counted twice. The fixed long windows (tokens per
hour, rolling 24 h) read the recording rules of config/prometheus/tokenmeter-rules.yaml, with
the raw counters as fallback where the rules are not loaded (or before they were).

Spend (SPEC §10): cost panels keep `currency` in every `by` (amounts in two currencies are never
added) and show it in the legend. Budget panels read the hourly budget rules (group
tokenmeter-budgets: one sample an hour, hence last_over_time(...[2h])), with the rolling 1d
window computed from the raw counters and the budget gauges as fallback; the budget in force is
the key's own gauge for that window, else the "*" default, as in the rules.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
PROM = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
LOKI = {"type": "loki", "uid": "${DS_LOKI}"}
# Label matchers of the token counters: the OTLP copy only (see above), and the selection.
RSEL = 'model=~"$model", api_key_id=~"$api_key_id", service_id=~"$service_id"'
SEL = 'pod="", ' + RSEL
MSEL = 'pod="", model=~"$model"'
# The unpriced and unmetered request counters have model and service_id only.
PSEL = 'pod="", model=~"$model", service_id=~"$service_id"'
# Units: Grafana's custom count unit scales (K, M, B) and names the thing counted.
TOKENS = "count:tokens"
TOKENS_S = "count:tokens/s"
# Money: the currency is a label (shown in legends), so the unit only scales the number.
MONEY = "short"
# Budget panels: percent of the budget, with lines at 80 % (ApiKeyNearBudget) and 100 %
# (ApiKeyOverBudget).
BUDGET_FIELD = {
    "min": 0,
    "thresholds": {"mode": "absolute", "steps": [
        {"color": "green", "value": None}, {"color": "orange", "value": 0.8}, {"color": "red", "value": 1}]},
    "custom": {"thresholdsStyle": {"mode": "line+area"}},
}


def inputs(loki=False):
    out = [{"name": "DS_PROMETHEUS", "label": "Prometheus / Mimir", "description": "Where the llm_* and tokenmeter_* metrics are",
            "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    if loki:
        out.append({"name": "DS_LOKI", "label": "Loki", "description": "Where the access-log lines are",
                    "type": "datasource", "pluginId": "loki", "pluginName": "Loki"})
    return out


def datasource_var(name, label, plugin):
    """A data-source variable named like the `__inputs` entry its panels refer to."""
    return {"name": name, "label": label, "type": "datasource", "query": plugin, "regex": "",
            "hide": 0, "refresh": 1, "multi": False, "includeAll": False, "current": {}}


def var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
            "refresh": 2, "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


class Panels:
    def __init__(self):
        self.items = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def add(self, kind, title, targets, w=12, h=8, unit=None, description="", ds=PROM, options=None, field=None,
            overrides=None, transformations=None, time_from=None):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        panel = {
            "id": len(self.items) + 1, "type": kind, "title": title, "description": description,
            "datasource": ds, "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [dict(t, datasource=ds, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
            "fieldConfig": {"defaults": dict({"unit": unit} if unit else {}, **(field or {})), "overrides": overrides or []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        if time_from:  # the panel's own time range, whatever the dashboard's
            panel["timeFrom"] = time_from
        self.items.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def q(expr, legend="", instant=False, fmt="time_series", interval=None):
    t = {"expr": expr, "legendFormat": legend, "format": fmt}
    if instant:
        t["instant"] = True
        t["range"] = False
    if interval:
        t["interval"] = interval
    return t


def dashboard(uid, title, description, panels, variables, loki=False, tags=("tokenmeter", "llm"), time_from="now-24h",
              time_to="now"):
    return {
        "__inputs": inputs(loki),
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"}],
        "uid": uid, "title": title, "description": description, "tags": list(tags),
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": time_from, "to": time_to}, "refresh": "1m", "timezone": "",
        "templating": {"list": [datasource_var("DS_PROMETHEUS", "Metrics", "prometheus")]
                       + ([datasource_var("DS_LOKI", "Logs", "loki")] if loki else []) + variables}, "annotations": {"list": []}, "links": [],
        "panels": panels.items,
    }


def table(columns, keys=("model", "api_key_id", "service_id")):
    """Transformations that join instant table queries (refIds A, B, ...) on their labels into one
    table: one row per label set, one column per query, named by `columns`."""
    rename = {f"Value #{chr(ord('A') + i)}": c for i, c in enumerate(columns)}
    if len(columns) == 1:
        rename = {"Value": columns[0]}
    order = dict({k: i for i, k in enumerate(keys)}, **{v: len(keys) + i for i, v in enumerate(rename)})
    return [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename,
                                       "indexByName": order}},
        {"id": "sortBy", "options": {"sort": [{"field": columns[0], "desc": True}]}},
    ]


def column_units(columns):
    """Exact integers in the table (chargeback is exported as CSV), header names the unit."""
    return [{"matcher": {"id": "byName", "options": c}, "properties": [{"id": "unit", "value": "none"}, {"id": "decimals", "value": 0}]}
            for c in columns]


# Chargeback tables and the invoice (docs/owners.md, docs/dashboards-and-rules.md "Invoices and
# team budgets"): exact differences of the never-resetting, zero-started counters between the
# range's two ends, per series before summing (a series that began in the range counts from 0;
# one that stopped keeps its last value), never an extrapolating increase().
TSEL = 'pod="", team=~"$team", model=~"$model"'
# Keys no owners entry matched (the default owners.default).
UNOWNED = TSEL + ', team="unassigned"'


def grown(metric, sel=TSEL):
    """What each series of `metric` added over the dashboard's range: its last value in the range
    minus its last value before the range (0 for a series that began in it)."""
    end = f'last_over_time({metric}{{{sel}}}[$__range])'
    return f'{end} - (last_over_time({metric}{{{sel}}}[$__range] offset $__range) or {end} * 0)'


def with_currency(expr, by):
    """`expr` (summed by `by`) with the `currency` of the same rows' cost in the range, so token
    and cost columns join into one row; as it is where there is no cost (pricing off)."""
    return (f'(sum by ({by}) ({expr}) * on ({by}) group_left (currency) group by ({by}, currency) '
            f'(last_over_time(llm_cost_total{{{TSEL}}}[$__range])))'
            f' or on ({by}) sum by ({by}) ({expr})')


def per_key_table(sel, by="model, api_key_id, service_id"):
    cols = ["Tokens", "Input tokens", "Output tokens", "Requests"]
    targets = [q(f'sum by ({by}) ({grown(m, sel)})', instant=True, fmt="table")
               for m in ("llm_tokens_total", "llm_input_tokens_total", "llm_output_tokens_total", "llm_requests_total")]
    return cols, targets


def budget_parts(kind, keysel):
    """(usage, budget, ratio) per API key and window, as PromQL: the hourly budget rules, else
    (rules not loaded, or before they were) the rolling 1d window from the raw counters and the
    budget gauges. `kind` is "tokens" or "cost"; `keysel` matches api_key_id."""
    if kind == "tokens":
        by, dflt = "api_key_id, window", "window"
        raw = f'sum by (api_key_id) (increase(llm_tokens_total{{pod="", api_key_id!="__overflow__", {keysel}}}[1d]))'
    else:
        by, dflt = "api_key_id, window, currency", "window, currency"
        raw = f'sum by (api_key_id, currency) (increase(llm_cost_total{{pod="", api_key_id!="__overflow__", {keysel}}}[1d]))'
    usage_raw = f'label_replace({raw}, "window", "1d", "", "")'
    budget_raw = (f'(max by ({by}) (llm_budget_{kind}{{api_key_id!="*", window="1d", {keysel}}})'
                  f' or group by ({by}) ({usage_raw}) * on ({dflt}) group_left () max by ({dflt}) (llm_budget_{kind}{{api_key_id="*", window="1d"}}))')
    rule = lambda name: f'last_over_time(api_key_id_window:{name}{{{keysel}}}[2h])'
    usage = f'{rule(f"llm_{kind}:budget_usage")} or {usage_raw}'
    budget = f'{rule(f"llm_budget_{kind}:effective")} or {budget_raw}'
    ratio = f'{rule(f"llm_{kind}:budget_ratio")} or {usage_raw} / on ({by}) {budget_raw}'
    return usage, budget, ratio


def budget_ratio_panel(p, kind, keysel, w=12):
    legend = "{{api_key_id}} {{window}}" + (" ({{currency}})" if kind == "cost" else "")
    p.add("timeseries", f"{'Token' if kind == 'tokens' else 'Cost'} budget used per API key and window", [
        q(budget_parts(kind, keysel)[2], legend)], w=w, unit="percentunit", field=BUDGET_FIELD,
        description=f"{'Tokens' if kind == 'tokens' else 'Cost'} over the rolling window (1d, 7d, 30d; whole hours, from the "
                    f"hourly recording rules) as a share of the key's {kind} budget: its own for that window, else the "
                    "\"*\" default. Lines: 80 % (ApiKeyNearBudget) and 100 % (ApiKeyOverBudget). Keys without a budget "
                    "are not shown. Without the rules loaded, only the 1d window, from the raw counters.")


def budget_table(p, kind, keysel, w=12):
    usage, budget, ratio = budget_parts(kind, keysel)
    cols = ["Used", "Budget", "% used"]
    keys = ("api_key_id", "window") + (("currency",) if kind == "cost" else ())
    overrides = [{"matcher": {"id": "byName", "options": "% used"}, "properties": [{"id": "unit", "value": "percentunit"}]}]
    if kind == "tokens":
        overrides += column_units(["Used", "Budget"])
    p.add("table", f"{'Token' if kind == 'tokens' else 'Cost'} budgets: usage vs budget per API key and window",
          [q(e, instant=True, fmt="table") for e in (usage, budget, ratio)], w=w,
          description=f"Per key and window (1d, 7d, 30d): {kind} used over the rolling window (whole hours), the budget "
                      "in force (the key's own for that window, else the \"*\" default) and the share used.",
          options={"showHeader": True, "sortBy": [{"displayName": "% used", "desc": True}]},
          overrides=overrides, transformations=table(cols, keys))


def spend_per_hour_panel(p, w=12):
    p.add("timeseries", "Spend per hour by API key", [q(
        f'sum by (api_key_id, currency) (model_api_key_id_service_id:llm_cost:increase1h{{{RSEL}}})'
        f' or sum by (api_key_id, currency) (increase(llm_cost_total{{{SEL}}}[1h]))', "{{api_key_id}} ({{currency}})")],
        w=w, unit=MONEY,
        description="Cost in the hour before each point, from the recording rule model_api_key_id_service_id:llm_cost:increase1h "
                    "(raw counters where it is not loaded), in the currency of the price table.")


def unpriced_unmetered_panel(p, sel, w=12):
    p.add("timeseries", "Unpriced and unmetered requests/s by model", [
        q(f'sum by (model) (rate(llm_unpriced_requests_total{{{sel}}}[$__rate_interval]))', "unpriced {{model}}"),
        q(f'sum by (model) (rate(llm_unmetered_requests_total{{{sel}}}[$__rate_interval]))', "unmetered {{model}}")],
        w=w, unit="reqps",
        description="unpriced: requests with tokens that no price entry (or only part of one) priced: their cost is missing "
                    "(TokenmeterUnpricedRequests). unmetered: 2xx requests whose access-log line had no token count at all, "
                    "usually an AI Gateway metadata misconfiguration (TokenUsageMissing).")


def overview():
    p = Panels()
    p.add("timeseries", "Tokens/s by model", [q(f'sum by (model) (rate(llm_tokens_total{{{MSEL}}}[$__rate_interval]))', "{{model}}")],
          unit=TOKENS_S, description="Total tokens per second, summed over every agent.")
    p.add("timeseries", "Requests/s by model", [q(f'sum by (model) (rate(llm_requests_total{{{MSEL}}}[$__rate_interval]))', "{{model}}")],
          unit="reqps")
    p.add("timeseries", "Input vs output tokens/s", [
        q(f'sum(rate(llm_input_tokens_total{{{MSEL}}}[$__rate_interval]))', "input"),
        q(f'sum(rate(llm_output_tokens_total{{{MSEL}}}[$__rate_interval]))', "output")], unit=TOKENS_S)
    p.add("timeseries", "Error ratio by status class", [q(
        f'sum by (status_class) (rate(llm_requests_total{{{MSEL}, status_class=~"4xx|5xx|other"}}[$__rate_interval]))'
        f' / scalar(sum(rate(llm_requests_total{{{MSEL}}}[$__rate_interval])))', "{{status_class}}")], unit="percentunit",
        description="Share of requests answered 4xx, 5xx or not at all (other: e.g. the client went away).")
    p.add("bargauge", "Top 10 API keys by tokens (selected range)", [q(
        f'topk(10, sum by (api_key_id) (increase(llm_tokens_total{{{MSEL}}}[$__range])))', "{{api_key_id}}", instant=True)],
        unit=TOKENS, options={"orientation": "horizontal", "displayMode": "basic"})
    p.add("bargauge", "Top services by tokens (selected range)", [q(
        f'topk(10, sum by (service_id) (increase(llm_tokens_total{{{MSEL}}}[$__range])))', "{{service_id}}", instant=True)],
        unit=TOKENS, options={"orientation": "horizontal", "displayMode": "basic"})
    p.add("timeseries", "Request duration p50 / p95 / p99 by model", [
        q(f'histogram_quantile({x}, sum by (model, le) (rate(llm_request_duration_seconds_bucket{{{MSEL}}}[$__rate_interval])))',
          f"p{int(x * 100)} {{{{model}}}}") for x in (0.5, 0.95, 0.99)], w=24, unit="s")
    cols, targets = per_key_table(MSEL)
    p.add("table", "Chargeback: tokens and requests per model × API key × service (selected range)", targets,
          w=24, h=12, description="One row per model, API key and service; Inspect > Data > Download CSV exports it.",
          options={"showHeader": True, "sortBy": [{"displayName": "Tokens", "desc": True}]},
          overrides=column_units(cols), transformations=table(cols))
    # Spend (SPEC §10; the Spend dashboard has the rest).
    p.add("bargauge", "Spend by model (selected range)", [q(
        f'sort_desc(sum by (model, currency) (increase(llm_cost_total{{{MSEL}}}[$__range])))', "{{model}} ({{currency}})",
        instant=True)], unit=MONEY, options={"orientation": "horizontal", "displayMode": "basic"},
        description="Cost over the selected time range (e.g. \"This month so far\" for month-to-date), in the currency of the "
                    "price table. Only while pricing is configured.")
    unpriced_unmetered_panel(p, MSEL)
    return dashboard("tokenmeter-overview", "LLM token usage overview",
                     "Who used how many tokens of which model: rates, top keys and services, errors, latency, chargeback table, spend.",
                     p, [var("model", "Model", 'label_values(llm_tokens_total{pod=""}, model)')])


def drilldown():
    p = Panels()
    p.add("timeseries", "Tokens per hour by API key", [q(
        f'sum by (api_key_id) (model_api_key_id_service_id:llm_tokens:increase1h{{{RSEL}}})'
        f' or sum by (api_key_id) (increase(llm_tokens_total{{{SEL}}}[1h]))', "{{api_key_id}}")], unit=TOKENS,
        description="Tokens in the hour before each point, from the recording rule "
                    "model_api_key_id_service_id:llm_tokens:increase1h (raw counters where it is not loaded).")
    budget_ratio_panel(p, "tokens", 'api_key_id=~"$api_key_id"')
    spend_per_hour_panel(p)
    budget_ratio_panel(p, "cost", 'api_key_id=~"$api_key_id"')
    p.add("timeseries", "Tokens/s by model", [q(f'sum by (model) (rate(llm_tokens_total{{{SEL}}}[$__rate_interval]))', "{{model}}")],
          unit=TOKENS_S)
    p.add("timeseries", "Input vs output tokens/s", [
        q(f'sum(rate(llm_input_tokens_total{{{SEL}}}[$__rate_interval]))', "input"),
        q(f'sum(rate(llm_output_tokens_total{{{SEL}}}[$__rate_interval]))', "output")], unit=TOKENS_S)
    p.add("timeseries", "Requests/s by status class", [q(
        f'sum by (status_class) (rate(llm_requests_total{{{SEL}}}[$__rate_interval]))', "{{status_class}}")], unit="reqps")
    cols, targets = per_key_table(SEL)
    p.add("table", "Totals for the selection (selected range)", targets,
          description="One row per model, API key and service; Inspect > Data > Download CSV exports it.",
          options={"showHeader": True, "sortBy": [{"displayName": "Tokens", "desc": True}]},
          overrides=column_units(cols), transformations=table(cols))
    budget_table(p, "tokens", 'api_key_id=~"$api_key_id"')
    budget_table(p, "cost", 'api_key_id=~"$api_key_id"')
    return dashboard("tokenmeter-drilldown", "LLM tokens: API key / service drill-down",
                     "Usage and spend of selected API keys and services over time, against their budgets.",
                     p, [var("model", "Model", 'label_values(llm_tokens_total{pod=""}, model)'),
                         var("api_key_id", "API key", 'label_values(llm_tokens_total{pod="", model=~"$model"}, api_key_id)'),
                         var("service_id", "Service", 'label_values(llm_tokens_total{pod="", model=~"$model"}, service_id)')])


def spend():
    p = Panels()
    bar = {"orientation": "horizontal", "displayMode": "basic"}
    p.add("bargauge", "Top 10 API keys by spend (selected range)", [q(
        f'topk(10, sum by (api_key_id, currency) (increase(llm_cost_total{{{SEL}}}[$__range])))', "{{api_key_id}} ({{currency}})",
        instant=True)], w=8, unit=MONEY, options=bar,
        description="Cost over the selected time range; \"This month so far\" (the default) is month-to-date.")
    p.add("bargauge", "Spend by model (selected range)", [q(
        f'sort_desc(sum by (model, currency) (increase(llm_cost_total{{{SEL}}}[$__range])))', "{{model}} ({{currency}})",
        instant=True)], w=8, unit=MONEY, options=bar)
    p.add("bargauge", "Spend by service (selected range)", [q(
        f'sort_desc(sum by (service_id, currency) (increase(llm_cost_total{{{SEL}}}[$__range])))', "{{service_id}} ({{currency}})",
        instant=True)], w=8, unit=MONEY, options=bar)
    p.add("timeseries", "Daily spend by API key", [q(
        f'sum by (api_key_id, currency) (increase(llm_cost_total{{{SEL}}}[$__interval]))', "{{api_key_id}} ({{currency}})",
        interval="1d")], unit=MONEY,
        field={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}},
        description="Cost per day (UTC; each bar is the day that ends at it), stacked by key. Longer ranges may widen the bars "
                    "to several days.")
    spend_per_hour_panel(p)
    budget_ratio_panel(p, "tokens", 'api_key_id=~"$api_key_id"')
    budget_ratio_panel(p, "cost", 'api_key_id=~"$api_key_id"')
    unpriced_unmetered_panel(p, PSEL)
    p.add("timeseries", "Unmetered share of 2xx requests by model", [q(
        f'sum by (model) (rate(llm_unmetered_requests_total{{{PSEL}}}[$__rate_interval]))'
        f' / sum by (model) (rate(llm_requests_total{{{SEL}, status_class="2xx"}}[$__rate_interval]))', "{{model}}")],
        unit="percentunit",
        field={"min": 0, "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 0.05}]},
               "custom": {"thresholdsStyle": {"mode": "line"}}},
        description="Successful requests without any token count: above 5 % for 15 minutes fires TokenUsageMissing (see its "
                    "runbook: usually Envoy Gateway without extensionManager, or io.envoy.ai_gateway missing from writableNamespaces).")
    p.add("table", "Spend per model × API key × service (selected range)", [q(
        f'sum by (model, api_key_id, service_id, currency) ({grown("llm_cost_total", SEL)})', instant=True, fmt="table")],
        w=24, h=12, description="One row per model, API key, service and currency; Inspect > Data > Download CSV exports it.",
        options={"showHeader": True, "sortBy": [{"displayName": "Cost", "desc": True}]},
        transformations=table(["Cost"], ("model", "api_key_id", "service_id", "currency")))
    return dashboard("tokenmeter-spend", "LLM spend",
                     "What the tokens cost (SPEC §10): spend by API key, model and service, daily spend, budget burn, unpriced "
                     "and unmetered requests.",
                     p, [var("model", "Model", 'label_values(llm_tokens_total{pod=""}, model)'),
                         var("api_key_id", "API key", 'label_values(llm_tokens_total{pod="", model=~"$model"}, api_key_id)'),
                         var("service_id", "Service", 'label_values(llm_tokens_total{pod="", model=~"$model"}, service_id)')],
                     time_from="now/M")


def invoice():
    p = Panels()
    cols = ["Input tokens", "Output tokens", "Tokens", "Cost"]
    by = "team, model"
    targets = [q(with_currency(grown(m), by), instant=True, fmt="table")
               for m in ("llm_input_tokens_total", "llm_output_tokens_total", "llm_tokens_total")]
    targets.append(q(f'sum by ({by}, currency) ({grown("llm_cost_total")})', instant=True, fmt="table"))
    p.add("table", "Invoice: team × model (selected month)", targets, w=24, h=12,
          description="The month's usage and cost per team and model: exact differences of the counters between the "
                      "range's ends (tokens to the token). Pick \"Previous month\" or \"This month so far\"; "
                      "Inspect > Data > Download CSV exports it. Tokens by every type: the next table.",
          options={"showHeader": True, "sortBy": [{"displayName": "Cost", "desc": True}]},
          overrides=column_units(cols[:3]), transformations=table(cols, ("team", "model", "currency")))
    # The family's name as a label (label_join copies it; a binary operation drops __name__).
    typed = 'label_join({__name__=~"llm_(.+_)?tokens_total", __name__!="llm_unpriced_tokens_total", ' + TSEL + '}, "family", "", "__name__")'
    typed_at_start = typed.replace(TSEL + "}", TSEL + "} offset $__range")
    p.add("table", "Tokens by type: team × model (selected month)", [q(
        f'sum by (team, model, family) ({typed} - ({typed_at_start} or {typed} * 0))', instant=True, fmt="table")],
          w=12, h=10, description="Every token family (input, output, total and the extra types such as cached_input and "
                                  "reasoning, which are part of input or output), one row per team, model and family. "
                                  "Each value is the series' sample at the range's end and start (instant, within the "
                                  "5-minute lookback, since last_over_time would drop the metric name the family is read "
                                  "from): a series whose agent stopped pushing before the range's end is missing here, "
                                  "not from the Invoice table above, which is the bill.",
          options={"showHeader": True}, overrides=column_units(["Tokens"]),
          transformations=table(["Tokens"], ("team", "model", "family")))
    p.add("table", "Drill-down: team × API key × model (selected month)", [
        q(f'sum by (team, api_key_id, model) ({grown("llm_tokens_total")})', instant=True, fmt="table"),
        q(f'sum by (team, api_key_id, model, currency) ({grown("llm_cost_total")})', instant=True, fmt="table")],
          w=12, h=10, description="Which keys make up each team's invoice (a key that changed team in the month is listed "
                                  "under both, each with its part).",
          options={"showHeader": True}, overrides=column_units(["Tokens"]),
          transformations=table(["Tokens", "Cost"], ("team", "api_key_id", "model", "currency")))
    bar = {"orientation": "horizontal", "displayMode": "basic"}
    p.add("bargauge", "Cost per team (selected month)", [q(
        f'sort_desc(sum by (team, currency) ({grown("llm_cost_total")}))', "{{team}} ({{currency}})", instant=True)],
          w=8, unit=MONEY, options=bar)
    linear = f'sum by (team, currency) ({grown("llm_cost_total")}) * scalar(days_in_month(vector(time()))) * 86400 / $__range_s'
    remaining = 'scalar(days_in_month(vector(time()))) * 86400 - $__range_s'
    p.add("bargauge", "Month-end forecast per team (this month)", [q(
        f'sort_desc(predict_linear(team:llm_cost:month_to_date{{team=~"$team"}}[$__range], {remaining}) or {linear})',
        "{{team}} ({{currency}})", instant=True)], w=8, unit=MONEY, options=bar, time_from="now/M",
          description="This calendar month so far (the panel's own time range, whatever the dashboard's): predict_linear "
                      "over the hourly month-to-date rule team:llm_cost:month_to_date, to the month's last instant; "
                      "without the invoice rules (or in the month's first hours), the month to date from the counters "
                      "scaled linearly to the month's length.")
    p.add("bargauge", "Team budget used this month", [q(
        'last_over_time(team_window:llm_cost:budget_ratio{team=~"$team"}[2h]) or label_replace(sum by (team, currency) '
        f'({grown("llm_cost_total")}) / on (team, currency) max by (team, currency) '
        '(llm_budget_cost{team=~"$team", window="month"}), "window", "month", "", "")', "{{team}} ({{currency}})", instant=True)],
          w=8, unit="percentunit", options=bar, field=BUDGET_FIELD, time_from="now/M",
          description="Cost this calendar month as a share of the team's month budget (docs/owners.md \"Budgets\"), from the "
                      "rule team_window:llm_cost:budget_ratio (TeamNearBudget at 80 %, TeamOverBudget at 100 %), else from the "
                      "counters; always this calendar month so far (the panel's own time range).")
    share = {"reduceOptions": {"calcs": ["lastNotNull"]}}
    p.add("stat", "Tokens without an owner (selected month)", [q(
        f'(sum({grown("llm_tokens_total", UNOWNED)}) or vector(0)) / sum({grown("llm_tokens_total")})',
        instant=True)], w=12, h=5, unit="percentunit", options=share,
          description="Share of the tokens whose key no owners entry matched (team=\"unassigned\", the default "
                      "owners.default): map those keys in the owners file.")
    p.add("stat", "Tokens without a price (selected month)", [q(
        f'(sum({grown("llm_unpriced_tokens_total")}) or vector(0))'
        f' / sum({grown("llm_tokens_total")})', instant=True)], w=12, h=5, unit="percentunit", options=share,
          description="Share of the tokens of requests that no price entry (or only part of one) priced "
                      "(llm_unpriced_tokens_total): their cost is missing from the invoice.")
    return dashboard("tokenmeter-invoice", "LLM invoice",
                     "Chargeback per team (docs/owners.md): a calendar month's tokens and cost per team and model, exact, "
                     "exportable as CSV; month-end forecast; usage without an owner or a price; team budgets.",
                     p, [var("team", "Team", 'label_values(llm_tokens_total{pod=""}, team)'),
                         var("model", "Model", 'label_values(llm_tokens_total{pod="", team=~"$team"}, model)')],
                     time_from="now-1M/M", time_to="now-1M/M")


def health():
    p = Panels()
    p.add("timeseries", "Lines/s by result", [q('sum by (result) (rate(tokenmeter_lines_total[$__rate_interval]))', "{{result}}")],
          unit="short", description="record: counted; not_json, not_llm, too_long: skipped (see the next panel).")
    p.add("timeseries", "Skipped lines/s by reason", [q(
        'sum by (result) (rate(tokenmeter_lines_total{result!="record"}[$__rate_interval]))', "{{result}}")], unit="short")
    p.add("timeseries", "Unread bytes per node", [q('sum by (instance) (tokenmeter_file_lag_bytes)', "{{instance}}")], unit="bytes",
          description="Growing lag means the agent cannot keep up (CPU limit) or a file is stuck.")
    p.add("timeseries", "Log files by state", [q('sum by (state) (tokenmeter_files)', "{{state}}")], unit="short",
          description="reading/draining hold a descriptor; idle: closed to save descriptors; waiting: unread bytes and "
                      "no descriptor yet (ceiling source.max_open_files, or opening fails); remembered: let go, identity "
                      "and offset kept. Waiting for long: see the TokenmeterFilesUnreadable alert.")
    p.add("timeseries", "File errors/s by reason", [q(
        'sum by (reason) (rate(tokenmeter_file_errors_total[$__rate_interval]))', "{{reason}}")], unit="short",
          description="Failed listings, stats, opens and reads (permission, descriptors, io, other); /status names the file.")
    p.add("timeseries", "Exports by exporter and outcome", [q(
        'sum by (exporter, outcome) (rate(tokenmeter_exports_total[$__rate_interval]))', "{{exporter}} {{outcome}}")], unit="reqps")
    p.add("timeseries", "Loki: bytes not yet delivered per node", [q('sum by (instance) (tokenmeter_loki_lag_bytes)', "{{instance}}")],
          unit="bytes")
    p.add("timeseries", "Loki entries/s by outcome", [q(
        'sum by (outcome) (rate(tokenmeter_loki_entries_total[$__rate_interval]))', "{{outcome}}")], unit="short")
    p.add("timeseries", "Series per agent", [q('sum by (instance) (tokenmeter_series)', "{{instance}}")], unit="short")
    p.add("timeseries", "Overflowed records/s by label", [q(
        'sum by (label) (rate(tokenmeter_overflow_total[$__rate_interval]))', "{{label}}")], unit="short",
          description="Non-zero: a label passed its limit and values are folded into __overflow__.")
    p.add("timeseries", "Invalid token fields/s", [q('sum by (field) (rate(tokenmeter_invalid_fields_total[$__rate_interval]))', "{{field}}")],
          unit="short")
    p.add("timeseries", "State writes/s by outcome", [q(
        'sum by (outcome) (rate(tokenmeter_checkpoint_writes_total[$__rate_interval]))', "{{outcome}}")], unit="short")
    return dashboard("tokenmeter-health", "tokenmeter agent health",
                     "The agents themselves: lines read by result, lag, exports, Loki delivery, series and overflows.", p, [],
                     tags=("tokenmeter",))


def logs():
    p = Panels()
    p.add("timeseries", "Access-log lines/s (Loki)", [{
        "expr": 'sum(rate({job="envoy-access"} | model=~"$model" | api_key_id=~"$api_key_id" [$__auto]))', "legendFormat": "lines/s"}],
        w=24, h=6, ds=LOKI)
    p.add("logs", "Access-log lines for the selected model and API key", [{
        "expr": '{job="envoy-access"} | model=~"$model" | api_key_id=~"$api_key_id"'}],
        w=24, h=16, ds=LOKI, options={"showTime": True, "wrapLogMessage": False, "sortOrder": "Descending"},
        description="model and api_key_id are structured metadata on each line (not stream labels), filtered after the selector.")
    return dashboard("tokenmeter-logs", "LLM access logs", "The raw Envoy AI Gateway access-log lines in Loki.", p,
                     [var("model", "Model", 'label_values(llm_tokens_total{pod=""}, model)'),
                      var("api_key_id", "API key", 'label_values(llm_tokens_total{pod="", model=~"$model"}, api_key_id)')], loki=True)


def main():
    for name, d in [("token-usage-overview", overview()), ("api-key-drilldown", drilldown()),
                    ("spend", spend()), ("invoice", invoice()), ("agent-health", health()), ("access-logs", logs())]:
        with open(os.path.join(HERE, f"{name}.json"), "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
