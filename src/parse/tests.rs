//! The parser's tests: every format, the value rules and the pointers, through `Parser`
//! and the parts.

use super::tables::*;
use super::values::*;
use super::*;

fn parser() -> Parser {
    let mut f = Fields::default();
    f.extra_tokens
        .insert("cached_input".into(), "llm_cached_input_token".into());
    f.extra_tokens
        .insert("reasoning".into(), "llm_reasoning_token".into());
    Parser::new(&f)
}

fn rec(line: &str) -> Record<'static> {
    let line: &'static str = Box::leak(line.to_string().into_boxed_str());
    match parser().parse(line) {
        Parsed::Record(r) => r,
        other => panic!("{line}: {other:?}"),
    }
}

fn kind(line: &str) -> &'static str {
    match parser().parse(line) {
        Parsed::Record(_) => "record",
        Parsed::NotLlm => "not_llm",
        Parsed::NotJson => "not_json",
    }
}

#[test]
fn plain_record() {
    let r = rec(
        r#"{"model":"gpt-4o-mini","llm_input_token":15,"llm_output_token":7,"llm_total_token":22,"api_key_id":"k","aim_service_id":"s","response_code":200,"duration":812,"start_time":"2026-03-17T09:14:02.113Z"}"#,
    );
    assert_eq!(
        (
            r.model.as_ref(),
            r.api_key_id.as_ref(),
            r.service_id.as_ref()
        ),
        ("gpt-4o-mini", "k", "s")
    );
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.total_tokens),
        (15, 7, 22)
    );
    assert_eq!(r.status_class, StatusClass::C2xx);
    assert_eq!(r.invalid, 0);
    assert!(!r.total_mismatch);
    assert!(
        matches!(r.model, Cow::Borrowed(_)),
        "no allocation for clean values"
    );
    assert_eq!(
        r.event_time_ns(None),
        Some(parse_rfc3339_nanos("2026-03-17T09:14:02.925Z").unwrap())
    );
    assert_eq!(r.event_time_ns(Some(7)), Some(7));
}

#[test]
fn what_is_a_record() {
    assert_eq!(kind(r#"{"model":"m"}"#), "record");
    assert_eq!(kind(r#"{"llm_input_token":3}"#), "record");
    assert_eq!(kind(r#"{"model":null,"llm_total_token":"5"}"#), "record");
    assert_eq!(kind(r#"{"model":null,"llm_input_token":null}"#), "not_llm");
    assert_eq!(kind(r#"{"model":"-","llm_input_token":"-"}"#), "not_llm");
    assert_eq!(kind(r#"{"model":"","llm_input_token":""}"#), "not_llm");
    assert_eq!(kind(r#"{"model":7}"#), "not_llm");
    assert_eq!(kind(r#"{"llm_input_token":-1}"#), "not_llm");
    assert_eq!(kind(r#"{}"#), "not_llm");
    assert_eq!(kind(r#"{"other":{"model":"nested"}}"#), "not_llm");
    assert_eq!(
        kind("[2026-03-17 09:14:01.202][1][warning][main] text"),
        "not_json"
    );
    assert_eq!(kind(r#"[{"model":"m"}]"#), "not_json");
    assert_eq!(kind(r#"{"model":"m","llm_input_token":12"#), "not_json");
    assert_eq!(kind(r#"{"model":"m","llm_input_token":NaN}"#), "not_json");
    assert_eq!(kind(r#""model""#), "not_json");
    assert_eq!(kind(r#"{"model":"m"} trailing"#), "not_json");
}

#[test]
fn token_value_rules() {
    use Tokens::*;
    let t = |json: &str| {
        let line = format!("{{\"v\":{json}}}");
        let mut got = None;
        Scanner::new()
            .scan_object(&line, |_, v| got = Some(tokens(Some(v))))
            .unwrap();
        got.unwrap()
    };
    assert_eq!(t("12"), Valid(12));
    assert_eq!(t("0"), Valid(0));
    assert_eq!(t("1e3"), Valid(1000));
    assert_eq!(t("1E+3"), Valid(1000));
    assert_eq!(t("12.0"), Valid(12));
    assert_eq!(t("\"123\""), Valid(123));
    assert_eq!(t("9007199254740992"), Valid(MAX_TOKENS));
    assert_eq!(t("9007199254740993"), Invalid);
    assert_eq!(t("\"9007199254740993\""), Invalid);
    assert_eq!(t("\"00000000000000000042\""), Valid(42));
    assert_eq!(t("\"00000000000000000000\""), Valid(0));
    assert_eq!(t("99999999999999999999999"), Invalid);
    assert_eq!(t("1e300"), Invalid);
    assert_eq!(t("1e400"), Invalid); // beyond f64: still a JSON number, not a count
    assert_eq!(t("-1"), Invalid);
    assert_eq!(t("1.5"), Invalid);
    assert_eq!(t("\"12.5\""), Invalid);
    assert_eq!(t("\" 12\""), Invalid);
    assert_eq!(t("\"-5\""), Invalid);
    assert_eq!(t("\"abc\""), Invalid);
    assert_eq!(t("true"), Invalid);
    assert_eq!(t("{}"), Invalid);
    assert_eq!(t("[1]"), Invalid);
    assert_eq!(t("null"), NotMeasured);
    assert_eq!(t("\"-\""), NotMeasured);
    assert_eq!(t("\"\""), NotMeasured);
}

#[test]
fn total_rule_and_mismatch() {
    let r = rec(r#"{"model":"m","llm_input_token":10,"llm_output_token":5}"#);
    assert_eq!(r.total_tokens, 15);
    let r =
        rec(r#"{"model":"m","llm_input_token":10,"llm_output_token":"x","llm_total_token":null}"#);
    assert_eq!(r.total_tokens, 10);
    assert_eq!(r.invalid, 1 << OUTPUT_BIT);
    let r = rec(r#"{"model":"m","llm_input_token":10,"llm_output_token":5,"llm_total_token":20}"#);
    assert_eq!(r.total_tokens, 20, "the gateway's total is the one counted");
    assert!(r.total_mismatch);
    let r = rec(r#"{"model":"m","llm_input_token":10,"llm_total_token":20}"#);
    assert!(!r.total_mismatch, "only when all three are valid");
    let r = rec(r#"{"model":"m","llm_total_token":-3}"#);
    assert_eq!((r.total_tokens, r.invalid), (0, 1 << TOTAL_BIT));
}

#[test]
fn labels() {
    let r = rec(r#"{"model":"m","api_key_id":null,"aim_service_id":"-"}"#);
    assert_eq!(
        (r.api_key_id.as_ref(), r.service_id.as_ref()),
        (UNKNOWN, UNKNOWN)
    );
    let r = rec(r#"{"model":"m","api_key_id":42,"aim_service_id":""}"#);
    assert_eq!(
        (r.api_key_id.as_ref(), r.service_id.as_ref()),
        (UNKNOWN, UNKNOWN)
    );
    let r = rec(r#"{"llm_input_token":1}"#);
    assert_eq!(r.model, UNKNOWN);
    // Cut to 256 bytes on a character boundary: 255 ASCII bytes + a 2-byte char.
    let long = format!("{}é{}", "a".repeat(255), "b".repeat(10));
    let r = rec(&format!("{{\"model\":\"{long}\"}}"));
    assert_eq!(r.model.len(), 255);
    let r = rec(&format!("{{\"model\":\"{}\"}}", "x".repeat(300)));
    assert_eq!(r.model.len(), 256);
}

#[test]
fn escapes_and_invalid_utf8_in_values() {
    let r =
        rec(r#"{"model":"meta-llama\/Llama-3.1-8B","api_key_id":"caf\u00e8","llm_input_token":1}"#);
    assert_eq!(r.model, "meta-llama/Llama-3.1-8B");
    assert_eq!(r.api_key_id, "cafè");
    // Envoy's octal escape for a byte that is not UTF-8, in a label and elsewhere.
    let r = rec(r#"{"model":"gpt\377x","user-agent":"bad\377\376","llm_input_token":4}"#);
    assert_eq!(r.model, "gpt\u{FFFD}x");
    assert_eq!(r.input_tokens, 4);
    // Replaced invalid UTF-8 (decode's job) arrives as U+FFFD and is kept.
    let r = rec("{\"model\":\"m\u{FFFD}\",\"llm_input_token\":1}");
    assert_eq!(r.model, "m\u{FFFD}");
}

#[test]
fn duplicate_keys_last_wins() {
    let r = rec(r#"{"model":"a","llm_input_token":1,"model":"b","llm_input_token":2}"#);
    assert_eq!((r.model.as_ref(), r.input_tokens), ("b", 2));
}

#[test]
fn status_classes() {
    let c = |code: &str| rec(&format!("{{\"model\":\"m\",\"response_code\":{code}}}")).status_class;
    assert_eq!(c("200"), StatusClass::C2xx);
    assert_eq!(c("301"), StatusClass::C3xx);
    assert_eq!(c("429"), StatusClass::C4xx);
    assert_eq!(c("503"), StatusClass::C5xx);
    assert_eq!(c("0"), StatusClass::Other);
    assert_eq!(c("\"404\""), StatusClass::C4xx);
    assert_eq!(c("null"), StatusClass::Other);
    assert_eq!(c("700"), StatusClass::Other);
}

#[test]
fn extra_tokens() {
    // Types in name order: cache_creation_input, cached_input, reasoning.
    let r = rec(r#"{"model":"m","llm_cached_input_token":4511,"llm_reasoning_token":"x"}"#);
    assert_eq!(r.extra_tokens[..3], [0, 4511, 0]);
    assert_eq!(r.invalid, 1 << (EXTRA_BIT0 + 2));
    // Without [fields.extra_tokens], each format's own keys (configured ones, as in
    // `parser()`, would be read in every format).
    let line = r#"{"gen_ai.request.model":"m","gen_ai.usage.cache_read.input_tokens":7,"gen_ai.usage.reasoning_tokens":null,"gen_ai.usage.reasoning.output_tokens":"9"}"#;
    let Parsed::Record(r) = Parser::new(&Fields::default()).parse(line) else {
        panic!("record")
    };
    assert_eq!(
        r.extra_tokens[..3],
        [0, 7, 9],
        "reasoning falls back to its second key"
    );
}

#[test]
fn event_time_fallbacks() {
    let r = rec(r#"{"model":"m","start_time":"2026-03-17T09:14:02.113Z"}"#);
    assert_eq!(
        r.event_time_ns(None),
        parse_rfc3339_nanos("2026-03-17T09:14:02.113Z")
    );
    let r = rec(r#"{"model":"m","start_time":"bogus","duration":5}"#);
    assert_eq!(r.event_time_ns(None), None);
}

// --- formats: each expectation below is read off the line by hand.

/// Every request of `line` under `fields`: (format, model, key, service, in, out, total,
/// first of its line).
type Row = (Format, String, String, String, u64, u64, u64, bool);

fn requests_with(fields: &Fields, line: &str) -> Result<Vec<Row>, &'static str> {
    let mut p = Parser::new(fields);
    let row = |r: Record<'_>| -> Row {
        (
            r.format,
            r.model.into_owned(),
            r.api_key_id.into_owned(),
            r.service_id.into_owned(),
            r.input_tokens,
            r.output_tokens,
            r.total_tokens,
            r.first_of_line,
        )
    };
    let first = match p.parse(line) {
        Parsed::Record(r) => row(r),
        Parsed::NotLlm => return Err("not_llm"),
        Parsed::NotJson => return Err("not_json"),
    };
    let mut all = vec![first];
    while let Some(r) = p.next_request(line) {
        all.push(row(r));
    }
    Ok(all)
}

fn requests(line: &str) -> Result<Vec<Row>, &'static str> {
    requests_with(&Fields::default(), line)
}

fn one(f: Format, m: &str, k: &str, s: &str, i: u64, o: u64, t: u64) -> Row {
    (f, m.into(), k.into(), s.into(), i, o, t, true)
}

#[test]
fn gen_ai_keys_are_read_as_gen_ai_even_beside_the_seed_keys() {
    let line = r#"{"start_time":"2025-08-30T16:51:37.894Z","response_code":200,"duration":1526,"gen_ai.request.model":"gpt-4o-mini","gen_ai.provider.name":"openai","gen_ai.usage.input_tokens":15,"gen_ai.usage.output_tokens":7,"gen_ai.usage.total_tokens":22,"model":"seed","llm_input_token":999}"#;
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::GenAi,
            "gpt-4o-mini",
            "unknown",
            "openai",
            15,
            7,
            22
        )])
    );
    // The response model when the request model holds no value; a usage key alone makes
    // the line gen_ai.
    let line = r#"{"gen_ai.request.model":"-","gen_ai.response.model":"gpt-4o-2024-08-06","gen_ai.usage.input_tokens":"3","http.status":429}"#;
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::GenAi,
            "gpt-4o-2024-08-06",
            "unknown",
            "unknown",
            3,
            0,
            3
        )])
    );
    let mut p = parser();
    let Parsed::Record(r) = p.parse(line) else {
        panic!("record")
    };
    assert_eq!(
        r.status_class,
        StatusClass::C4xx,
        "http.status when no response_code"
    );
}

#[test]
fn genai_v04_keys() {
    let line = r#"{"genai_model_name":"llama-3","genai_backend_name":"vllm","genai_tokens_input":"10","genai_tokens_output":5,"genai_tokens_total":15,"api_key_id":"k1"}"#;
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::GenaiV04,
            "llama-3",
            "k1",
            "vllm",
            10,
            5,
            15
        )])
    );
}

#[test]
fn a_kong_line_is_one_request_per_plugin_that_reports_usage() {
    let line = r#"{"started_at":1756572697894,"response":{"status":200},"consumer":{"id":"c-1","username":"alice"},"service":{"name":"openai-svc"},"latencies":{"request":812},"ai":{"ai-request-transformer":{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"meta":{"request_model":"gpt-4"}},"cache":{"meta":{"request_model":"x"}},"empty":{"usage":{"prompt_tokens":null}},"proxy":{"usage":{"prompt_token":28,"completion_token":14},"meta":{"request_model":"","response_model":"gpt-4-0613"}}}}"#;
    let mut second = one(
        Format::Kong,
        "gpt-4-0613",
        "alice",
        "openai-svc",
        28,
        14,
        42,
    );
    second.7 = false;
    assert_eq!(
        requests(line),
        Ok(vec![
            one(Format::Kong, "gpt-4", "alice", "openai-svc", 3, 4, 7),
            second
        ])
    );
    let mut p = parser();
    let Parsed::Record(r) = p.parse(line) else {
        panic!("record")
    };
    assert_eq!(
        r.event_time_ns(None),
        Some((1_756_572_697_894 + 812) * 1_000_000),
        "started_at (epoch ms) + latencies.request"
    );
    // A start time named by `fields.start_time` is still epoch milliseconds when a number
    // (Kong's way), and RFC 3339 when a string, as in every format.
    let kong = |start: &str| {
        format!(
            r#"{{"ts":{start},"ai":{{"proxy":{{"usage":{{"prompt_tokens":1}},"meta":{{"request_model":"m"}}}}}}}}"#
        )
    };
    let fields = Fields {
        start_time: Some("ts".into()),
        ..Fields::default()
    };
    let mut p = Parser::new(&fields);
    for (start, want) in [
        ("1756572697894", Some(1_756_572_697_894 * 1_000_000)),
        (
            r#""2025-08-30T16:51:37.894Z""#,
            parse_rfc3339_nanos("2025-08-30T16:51:37.894Z"),
        ),
        (r#""1756572697894""#, None),
    ] {
        let line = kong(start);
        let Parsed::Record(r) = p.parse(&line) else {
            panic!("record: {line}")
        };
        assert_eq!(r.format, Format::Kong, "{line}");
        assert_eq!(r.event_time_ns(None), want, "{line}");
    }
    // The consumer's id when it has no username; no plugin with usage: not Kong.
    let line = r#"{"consumer":{"id":"c-1"},"ai":{"proxy":{"usage":{"total_tokens":5}}}}"#;
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::Kong,
            "unknown",
            "c-1",
            "unknown",
            0,
            0,
            5
        )])
    );
    assert_eq!(
        requests(r#"{"ai":{"proxy":{"meta":{"request_model":"m"}}}}"#),
        Err("not_llm")
    );
}

#[test]
fn higress_reads_the_object_inside_ai_log() {
    let line = r#"{"start_time":"2025-08-30T16:51:37.894Z","response_code":200,"ai_log":"{\"model\":\"qwen-max\",\"input_token\":\"12\",\"output_token\":30,\"consumer\":\"bob\",\"llm_service_duration\":900}"}"#;
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::Higress,
            "qwen-max",
            "bob",
            "unknown",
            12,
            30,
            42
        )])
    );
    let mut p = parser();
    let Parsed::Record(r) = p.parse(line) else {
        panic!("record")
    };
    assert_eq!(
        r.event_time_ns(None),
        parse_rfc3339_nanos("2025-08-30T16:51:38.794Z")
    );
    // ai_log that does not hold an object: the line is read with the seed's keys.
    assert_eq!(requests(r#"{"ai_log":"plain text"}"#), Err("not_llm"));
}

#[test]
fn agentgateway_text_lines_are_read_as_logfmt() {
    let line = "2025-08-13T20:51:06.054107Z info request gateway=default/bind/3000 http.status=200 llm.provider=openai llm.request.model=gpt-3.5-turbo llm.request.tokens=39 llm.response.model=gpt-3.5-turbo-0125 llm.response.tokens=9 duration=1207ms";
    assert_eq!(
        requests(line),
        Ok(vec![one(
            Format::Logfmt,
            "gpt-3.5-turbo",
            "unknown",
            "openai",
            39,
            9,
            48
        )])
    );
    let mut p = parser();
    let Parsed::Record(r) = p.parse(line) else {
        panic!("record")
    };
    assert_eq!(r.status_class, StatusClass::C2xx);
    // The leading time is when the line was written, at the request's end: the event
    // time as it is, the duration not added to it.
    assert_eq!(
        r.event_time_ns(None),
        parse_rfc3339_nanos("2025-08-13T20:51:06.054107Z")
    );
    assert_eq!(r.duration_ms, Some(1207.0));
    // A key=value line of no format is not_llm; other text not_json.
    assert_eq!(requests("level=info msg=\"started\""), Err("not_llm"));
    assert_eq!(
        requests("llm.request.model=- llm.request.tokens=-"),
        Err("not_llm")
    );
    assert_eq!(
        requests("[2026-11-26 10:00:00.000][1][info] text"),
        Err("not_json")
    );
}

#[test]
fn short_integers_are_read_as_digit_by_digit() {
    // Against the plain reading, for every length, with and without 8 bytes before the
    // value, and with each byte in turn made a non-digit (the neighbours of '0' and '9'
    // in ASCII, and bytes whose high nibble is 3).
    let reference = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.len() <= 15 && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let mut checked = 0;
    for len in 1..=15 {
        for seed in [0u64, 1, 7, 42, 99_999, 12_345_678_901, u64::MAX / 3] {
            let digits: String = (0..len)
                .map(|i| char::from(b'0' + ((seed >> (i % 60)) % 10) as u8))
                .collect();
            let mut values = vec![digits.clone()];
            for at in 0..len {
                for bad in ['/', ':', ';', '?', 'a', 'é', ' '] {
                    let mut v: Vec<char> = digits.chars().collect();
                    v[at] = bad;
                    values.push(v.into_iter().collect());
                }
            }
            for value in values {
                for before in ["", "{\"a\":", "{\"a_much_longer_key\":"] {
                    let line = format!("{before}{value},");
                    let raw = Raw {
                        kind: Kind::Number,
                        start: before.len(),
                        end: before.len() + value.len(),
                    };
                    assert_eq!(short_integer(&line, raw), reference(&value), "{line}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1_000);
}

#[test]
fn every_config_fits_the_key_table() {
    // The most top-level keys a config can name: every format's keys, and a key of its own
    // for every extra type it may add (a field set in the config replaces the formats'
    // keys for it, so setting fields names fewer).
    let mut extras_only = Fields::default();
    for i in 0..MAX_EXTRA_TOKENS {
        extras_only
            .extra_tokens
            .insert(format!("extra{i:02}"), format!("own_extra{i:02}"));
    }
    let every_field = Fields {
        model: Some("own_model".into()),
        input_tokens: Some("own_input".into()),
        output_tokens: Some("own_output".into()),
        total_tokens: Some("own_total".into()),
        api_key_id: Some("own_key".into()),
        service_id: Some("own_service".into()),
        status: Some("own_status".into()),
        start_time: Some("/own/start".into()),
        duration_ms: Some("own_duration".into()),
        ..extras_only.clone()
    };
    // An extra type adds at most one key.
    let most = Parser::new(&Fields::default()).tables.wanted_top_keys + MAX_EXTRA_TOKENS;
    assert!(most < usize::from(NO_KEY), "{most} top-level keys");
    assert!(Parser::new(&extras_only).tables.wanted_top_keys <= most);
    assert!(Parser::new(&every_field).tables.wanted_top_keys <= most);
}

#[test]
fn json_pointers_reach_array_elements_and_the_empty_key_as_rfc_6901_says() {
    let model_at = |pointer: &str, line: &str| -> Result<String, &'static str> {
        let fields = Fields {
            model: Some(pointer.into()),
            ..Fields::default()
        };
        requests_with(&fields, line).map(|rows| rows[0].1.clone())
    };
    let choices = r#"{"choices":[{"model":"a"},{"model":"b"}],"llm_input_token":1}"#;
    assert_eq!(model_at("/choices/1/model", choices), Ok("b".into()));
    assert_eq!(model_at("/choices/0/model", choices), Ok("a".into()));
    // Past the end, a leading zero, a sign or a name: no element (the label is unknown).
    for step in ["2", "01", "-1", "+1", "x", ""] {
        let pointer = format!("/choices/{step}/model");
        assert_eq!(
            model_at(&pointer, choices),
            Ok("unknown".into()),
            "{pointer}"
        );
    }
    // A string element with escapes, arrays in arrays, whitespace between elements.
    let line = r#"{"l":[ ["x", "a\"b" ] ],"llm_input_token":1}"#;
    assert_eq!(model_at("/l/0/1", line), Ok("a\"b".into()));
    // Into an array inside a string that holds a JSON object.
    let line = r#"{"x":"{\"l\":[\"q\"]}","llm_input_token":1}"#;
    assert_eq!(model_at("/x/l/0", line), Ok("q".into()));
    // The empty reference token is the member named "" (`/` is the top-level one).
    let line = r#"{"":"top","a":{"":"inner"},"llm_input_token":1}"#;
    assert_eq!(model_at("/", line), Ok("top".into()));
    assert_eq!(model_at("/a/", line), Ok("inner".into()));
    // A count in an array.
    let fields = Fields {
        input_tokens: Some("/usage/1".into()),
        ..Fields::default()
    };
    let line = r#"{"model":"m","usage":[7, 12, "x"]}"#;
    assert_eq!(
        requests_with(&fields, line),
        Ok(vec![one(
            Format::Tokenmeter,
            "m",
            "unknown",
            "unknown",
            12,
            0,
            12
        )])
    );
}

#[test]
fn agentgateway_json_lines_of_v0_9_keys_are_read_with_the_documented_fields() {
    // Without config such a line is of no format (no model key of any): not_llm, as
    // docs/formats.md says; the [fields] it gives read it.
    let line = r#"{"time":"2025-08-13T20:51:06.054107Z","http.status":200,"llm.provider":"openai","llm.request.model":"gpt-4o","llm.request.tokens":39,"llm.response.tokens":9,"duration":"1207ms"}"#;
    assert_eq!(requests(line), Err("not_llm"));
    let fields = Fields {
        model: Some("llm.request.model".into()),
        input_tokens: Some("llm.request.tokens".into()),
        output_tokens: Some("llm.response.tokens".into()),
        service_id: Some("llm.provider".into()),
        ..Fields::default()
    };
    assert_eq!(
        requests_with(&fields, line),
        Ok(vec![one(
            Format::Tokenmeter,
            "gpt-4o",
            "unknown",
            "openai",
            39,
            9,
            48
        )])
    );
}

#[test]
fn a_configured_key_or_pointer_overrides_every_format_and_a_pinned_format_reads_all_lines() {
    let fields = Fields {
        api_key_id: Some("/consumer/custom_id".into()),
        ..Fields::default()
    };
    let line = r#"{"gen_ai.request.model":"m","gen_ai.usage.input_tokens":1,"consumer":{"custom_id":"team-a"}}"#;
    assert_eq!(
        requests_with(&fields, line),
        Ok(vec![one(Format::GenAi, "m", "team-a", "unknown", 1, 0, 1)])
    );
    // A pointer step may go into a string that holds an object, and `~1` is a `/`.
    let fields = Fields {
        model: Some("/meta/a~1b".into()),
        ..Fields::default()
    };
    let line = r#"{"meta":"{\"a/b\":\"inner\"}","llm_input_token":2}"#;
    assert_eq!(
        requests_with(&fields, line),
        Ok(vec![one(
            Format::Tokenmeter,
            "inner",
            "unknown",
            "unknown",
            2,
            0,
            2
        )])
    );
    let pinned = Fields {
        format: "tokenmeter".into(),
        ..Fields::default()
    };
    let gen_ai = r#"{"gen_ai.request.model":"m","gen_ai.usage.input_tokens":1}"#;
    assert_eq!(requests_with(&pinned, gen_ai), Err("not_llm"));
    let logfmt = "llm.request.model=m llm.request.tokens=1";
    assert_eq!(requests_with(&pinned, logfmt), Err("not_llm"));
    let pinned = Fields {
        format: "logfmt".into(),
        ..Fields::default()
    };
    assert_eq!(requests_with(&pinned, gen_ai), Err("not_llm"));
    assert_eq!(
        requests_with(&pinned, logfmt),
        Ok(vec![one(
            Format::Logfmt,
            "m",
            "unknown",
            "unknown",
            1,
            0,
            1
        )])
    );
}
