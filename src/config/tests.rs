//! The config's unit tests: defaults, unknown keys, values, endpoints, secrets, files.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_toml("", &no_env).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.otlp.interval.0, Duration::from_secs(15));
    assert_eq!(c.source.max_line_bytes, 1_048_576);
    assert_eq!(c.limits.max_values.api_key_id, 10_000);
    assert_eq!(c.loki.labels["job"], "envoy-access");
}

#[test]
fn unknown_keys_are_named() {
    let e = Config::from_toml("[source]\nincludes = []\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("source.includes"), "{e}");
    assert!(e.to_string().contains("includes"), "{e}");
    let e = Config::from_toml("bogus = 1\n", &no_env).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = Config::from_toml("[limits.max_values]\nmodels = 3\n", &no_env).unwrap_err();
    assert!(e.to_string().contains("models"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = Config::from_toml("[otlp]\ninterval = \"soon\"\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("otlp.interval"), "{e}");
    let e = Config::from_toml("[source]\nstart_at = \"middle\"\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("source.start_at"), "{e}");
    let e = Config::from_toml("[server]\nlisten = \"nope\"\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("server.listen"), "{e}");
    for bad in ["\"0s\"", "\"366d\"", "\"500ms\""] {
        let e = Config::from_toml(&format!("[server]\nliveness_timeout = {bad}\n"), &no_env)
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.liveness_timeout"), "{e}");
    }
    let c = Config::from_toml("[server]\nliveness_timeout = \"2m\"\n", &no_env).unwrap();
    assert_eq!(c.server.liveness_timeout.0, Duration::from_secs(120));
    assert_eq!(
        Config::default().server.liveness_timeout.0,
        Duration::from_secs(60)
    );
    let e = Config::from_toml("[metrics.labels]\nmodel = \"x\"\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("metrics.labels.model"), "{e}");
    let e = Config::from_toml("[source]\nmax_line_bytes = -1\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("source.max_line_bytes"), "{e}");
    // An invalid glob is a config error (exit 2) found by check-config, not by run.
    let e =
        Config::from_toml("[source]\ninclude = [\"/a/*.log\", \"[.log\"]\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("source.include[1]"), "{e}");
    // An empty loki.redact entry would withhold every line: a config error, not a silent
    // placeholder for everything.
    for bad in ["\"\"", "\"  \""] {
        let e = Config::from_toml(
            &format!("[loki]\nredact = [\"x-forwarded-for\", {bad}]\n"),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("loki.redact[1]"), "{e}");
    }
    // Redaction masks keys: a pointer ending in an array index would mask nothing.
    let e = Config::from_toml("[loki]\nredact = [\"a\", \"/headers/0\"]\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("loki.redact[1]"), "{e}");
    assert!(e.to_string().contains("array index"), "{e}");
    // The empty key would be in every line: refused like an empty entry.
    for bad in ["/", "/a/"] {
        let e = Config::from_toml(&format!("[loki]\nredact = [\"{bad}\"]\n"), &no_env).unwrap_err();
        assert!(e.to_string().contains("withhold every line"), "{e}");
    }
    // At the top level a number is a key (a line is an object).
    assert!(Config::from_toml("[loki]\nredact = [\"/0\"]\n", &no_env).is_ok());
}

#[test]
fn endpoints_the_http_client_would_refuse_are_config_errors_that_hide_credentials() {
    for (section, bad, why) in [
        ("otlp", "http://mimir:99999/otlp", "port"),
        (
            "loki",
            "http://agent:pa55w0rd@loki:70000/push?token=q5ecret",
            "port",
        ),
        ("otlp", "https://", "host"),
        ("loki", "http://agent:pa55w0rd@/push?token=q5ecret", "host"),
        ("otlp", "http://mi mir/otlp?token=q5ecret", "URL"),
        ("loki", "http://[::1/push", "URL"),
    ] {
        let text = format!("[{section}]\nendpoint = \"{bad}\"\n");
        let e = Config::from_toml(&text, &no_env).unwrap_err();
        let key = format!("{section}.endpoint");
        assert_eq!(e.key.as_deref(), Some(key.as_str()), "{bad}: {e}");
        assert!(e.message.contains(why), "{bad}: {e}");
        let shown = e.to_string();
        for secret in ["agent", "pa55w0rd", "q5ecret", "99999", "70000"] {
            assert!(!shown.contains(secret), "{bad}: {shown}");
        }
    }
    for good in [
        "http://mimir:9009/otlp/v1/metrics",
        "https://agent:pa55w0rd@loki.example/loki/api/v1/push?tenant=a",
        "http://[::1]:3100/loki/api/v1/push",
        "HTTPS://Mimir.Example/otlp",
    ] {
        let text = format!("[otlp]\nendpoint = \"{good}\"\n[loki]\nendpoint = \"{good}\"\n");
        Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn an_empty_header_value_is_refused_so_no_push_goes_to_an_empty_tenant() {
    let env = |k: &str| (k == "MIMIR_TENANT").then(String::new);
    let e = Config::from_toml(
        "[otlp]\nendpoint = \"http://m/otlp\"\nheaders = { \"X-Scope-OrgID\" = \"${MIMIR_TENANT}\" }\n",
        &env,
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("otlp.headers.X-Scope-OrgID"), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn header_names_and_values_must_be_valid_http_and_values_are_not_shown() {
    let env = |k: &str| (k == "TOKEN").then(|| "tok-s3cret\n".to_string());
    for (text, key) in [
        (
            "[otlp]\nheaders = { Authorization = \"Bearer ${TOKEN}\" }\n",
            "otlp.headers.Authorization",
        ),
        (
            "[loki]\nheaders = { X-Scope-OrgID = \"tenant-s3cret\\u0000\" }\n",
            "loki.headers.X-Scope-OrgID",
        ),
        (
            "[loki]\nheaders = { X-Scope-OrgID = \"tenant-s3cret\\u007f\" }\n",
            "loki.headers.X-Scope-OrgID",
        ),
        (
            "[otlp]\nheaders = { \"Bad Name\" = \"tenant-s3cret\" }\n",
            "otlp.headers.Bad Name",
        ),
        (
            "[loki]\nheaders = { \"\" = \"tenant-s3cret\" }\n",
            "loki.headers.",
        ),
    ] {
        let e = Config::from_toml(text, &env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    let c = Config::from_toml(
        "[otlp]\nheaders = { Authorization = \"Bearer ${TOKEN}\", X-Note = \"caf\u{e9}\\tok\" }\n",
        &|k: &str| (k == "TOKEN").then(|| "tok".to_string()),
    )
    .unwrap();
    assert_eq!(c.otlp.headers["Authorization"], "Bearer tok");
}

#[test]
fn secret_and_ca_files_must_be_regular_readable_files_and_the_ca_a_pem_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-s3cret\n").unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "s3cret, not a certificate\n").unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nczNjcmV0\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, include_str!("../../tests/fixtures/test-ca.pem")).unwrap();
    let (token, not_pem, bad_pem, ca) = (
        token.to_str().unwrap(),
        not_pem.to_str().unwrap(),
        bad_pem.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let check = |section: &str, key: &str, path: &str| {
        let text = format!("[{section}]\nendpoint = \"http://backend/push\"\n{key} = \"{path}\"\n");
        Config::from_toml(&text, &no_env).unwrap().check_files()
    };
    for (section, key, path) in [
        ("otlp", "bearer_token_file", d.as_str()),
        ("loki", "bearer_token_file", d.as_str()),
        ("otlp", "tls.ca_file", d.as_str()),
        ("loki", "tls.ca_file", not_pem),
        ("otlp", "tls.ca_file", bad_pem),
        ("otlp", "tls.ca_file", "/dev/null"),
    ] {
        // (TOML dotted keys: `tls.ca_file = ...` inside `[otlp]`.)
        let e = check(section, key, path).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some(format!("{section}.{key}").as_str()),
            "{path}: {e}"
        );
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    let text = format!(
        "[loki]\nendpoint = \"http://loki/push\"\nbasic_auth = {{ username = \"u\", password_file = \"{d}\" }}\n"
    );
    let e = Config::from_toml(&text, &no_env)
        .unwrap()
        .check_files()
        .unwrap_err();
    assert_eq!(
        e.key.as_deref(),
        Some("loki.basic_auth.password_file"),
        "{e}"
    );
    check("otlp", "bearer_token_file", token).unwrap();
    check("otlp", "tls.ca_file", ca).unwrap();
    check("loki", "tls.ca_file", ca).unwrap();
}

#[test]
fn durations_have_upper_bounds_so_clock_arithmetic_cannot_overflow() {
    for (text, key) in [
        ("[otlp]\nmax_backoff = \"2h\"\n", "otlp.max_backoff"),
        ("[loki]\nmax_backoff = \"1h 1s\"\n", "loki.max_backoff"),
        (
            "[loki]\nmax_backoff = \"500000000000years\"\n",
            "loki.max_backoff",
        ),
        (
            "[otlp]\ninterval = \"500000000000years\"\n",
            "otlp.interval",
        ),
        (
            "shutdown_timeout = \"500000000000years\"\n",
            "shutdown_timeout",
        ),
        (
            "[source]\nglob_interval = \"366days\"\n",
            "source.glob_interval",
        ),
    ] {
        let e = Config::from_toml(text, &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
    }
    let c = Config::from_toml(
        "[otlp]\nmax_backoff = \"1h\"\n[loki]\nmax_backoff = \"1h\"\n[source]\nremember_for = \"365days\"\n",
        &no_env,
    )
    .unwrap();
    assert_eq!(c.otlp.max_backoff.0, Duration::from_secs(3600));
}

#[test]
fn masked_hides_the_basic_auth_username_too() {
    let env = |k: &str| (k == "USER_NAME").then(|| "agent-s3cret".to_string());
    let c = Config::from_toml(
        "[otlp]\nbasic_auth = { username = \"${USER_NAME}\", password_file = \"/run/pw\" }\n[loki]\nbasic_auth = { username = \"tenant-s3cret\" }\n",
        &env,
    )
    .unwrap();
    let text = c.masked().to_toml();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("/run/pw"), "a path is not a secret: {text}");
    assert_eq!(c.masked().otlp.basic_auth.username, "<redacted>");
    assert_eq!(c.masked().loki.basic_auth.username, "<redacted>");
    // No user: nothing to hide, and the output shows basic auth is off.
    assert_eq!(Config::default().masked().otlp.basic_auth.username, "");
}

#[test]
fn max_open_files_is_resolved_against_the_descriptor_limit() {
    let mut s = Source::default();
    assert_eq!(s.effective_max_open_files(256), 128, "auto: half");
    assert_eq!(
        s.effective_max_open_files(1 << 20),
        8192,
        "auto: at most 8192"
    );
    assert_eq!(s.effective_max_open_files(4), 8, "at least 8");
    s.max_open_files = 500;
    assert_eq!(
        s.effective_max_open_files(256),
        224,
        "never above the limit less 32"
    );
    assert_eq!(s.effective_max_open_files(100_000), 500);
}

#[test]
fn durations_and_env_expansion() {
    let env = |k: &str| (k == "TENANT").then(|| "team-a".to_string());
    let c = Config::from_toml(
        "shutdown_timeout = \"500ms\"\n[state]\ninterval = \"5m\"\n[otlp]\nheaders = { \"X-Scope-OrgID\" = \"${TENANT}\" }\nendpoint = \"${OTLP:-http://localhost:1/otlp}\"\n[metrics.labels]\ncost = \"$$5\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.shutdown_timeout.0, Duration::from_millis(500));
    assert_eq!(c.state.interval.0, Duration::from_secs(300));
    assert_eq!(c.otlp.headers["X-Scope-OrgID"], "team-a");
    assert_eq!(c.otlp.endpoint, "http://localhost:1/otlp");
    assert_eq!(c.metrics.labels["cost"], "$5");
    let e = Config::from_toml("node_name = \"${MISSING}\"\n", &env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("node_name"));
    assert!(e.message.contains("MISSING"), "{e}");
}

#[test]
fn extra_tokens_and_round_trip() {
    let c = Config::from_toml(
        "[fields.extra_tokens]\ncached_input = \"llm_cached_input_token\"\nreasoning = \"llm_reasoning_token\"\n",
        &no_env,
    )
    .unwrap();
    assert_eq!(c.fields.extra_tokens.len(), 2);
    // The printed effective config parses back to the same config.
    let again = Config::from_toml(&c.to_toml(), &no_env).unwrap();
    assert_eq!(again, c);
    let e =
        Config::from_toml("[fields.extra_tokens]\n\"bad name\" = \"x\"\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("fields.extra_tokens.bad name"));
}

#[test]
fn owners_keys_are_checked_and_the_owners_file_read_with_errors_naming_it() {
    let c = Config::from_toml("", &no_env).unwrap();
    assert_eq!(
        (c.owners.file.as_str(), c.owners.label.as_str()),
        ("", "team")
    );
    assert_eq!(c.owners.default, "unassigned");
    assert_eq!(c.limits.max_values.team, 1000);
    assert!(c.owner_table().unwrap().is_none());
    for (text, key) in [
        ("[owners]\nlabel = \"api_key_id\"\n", "owners.label"),
        ("[owners]\nlabel = \"currency\"\n", "owners.label"),
        ("[owners]\nlabel = \"2team\"\n", "owners.label"),
        ("[owners]\ndefault = \"\"\n", "owners.default"),
        ("[limits.max_values]\nteam = 0\n", "limits.max_values.team"),
        (
            "[[budgets]]\nteam = \"t\"\nwindow = \"month\"\ntokens = 1\n",
            "budgets[0].team",
        ),
        (
            "[metrics.labels]\nteam = \"x\"\n[owners]\nfile = \"o.toml\"\n",
            "owners.label",
        ),
    ] {
        let e = Config::from_toml(text, &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
    }
    // A static label named like the team label is fine while owners are off.
    Config::from_toml("[metrics.labels]\nteam = \"x\"\n", &no_env).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("owners.toml");
    let with_file = |default: &str| {
        Config::from_toml(
            &format!(
                "[owners]\nfile = \"{}\"\ndefault = \"{default}\"\n",
                file.display()
            ),
            &no_env,
        )
        .unwrap()
    };
    let e = with_file("nobody").owner_table().unwrap_err();
    assert_eq!(e.key.as_deref(), Some("owners.file"), "{e}");
    std::fs::write(
        &file,
        "[[owners]]\napi_key_id = \"k\"\nteam = \"t\"\nfrom = \"soon\"\n",
    )
    .unwrap();
    let e = with_file("nobody").owner_table().unwrap_err();
    assert_eq!(e.file.as_deref(), Some(file.as_path()), "{e}");
    assert_eq!(e.key.as_deref(), Some("owners[0].from"), "{e}");
    std::fs::write(&file, "[[owners]]\napi_key_id = \"k*\"\nteam = \"t\"\n").unwrap();
    let table = with_file("nobody").owner_table().unwrap().unwrap();
    assert_eq!(table.select("k1", 0).0, "t");
    assert_eq!(table.select("x", 0).0, "nobody");
}

/// A config whose `owners.file` is `file`, with `top` (main-config budgets) before `[owners]`.
fn with_owners_file(top: &str, file: &std::path::Path) -> Config {
    Config::from_toml(
        &format!("{top}[owners]\nfile = \"{}\"\n", file.display()),
        &no_env,
    )
    .unwrap()
}

#[test]
fn budgets_no_shipped_rule_evaluates_are_refused_in_the_main_config_and_in_the_owners_file() {
    let e = Config::from_toml(
        "[owners]\nfile = \"o.toml\"\n[[budgets]]\nteam = \"x\"\nwindow = \"30d\"\ncost = 1\n",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("budgets[0].window"), "{e}");
    assert!(
        e.message
            .contains("a team budget's window must be \"month\""),
        "{e}"
    );
    let e = Config::from_toml(
        "[[budgets]]\napi_key_id = \"a\"\nwindow = \"month\"\ntokens = 1\n",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("budgets[0].window"), "{e}");
    assert!(
        e.message
            .contains("a key budget's window must be \"1d\", \"7d\" or \"30d\""),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("owners.toml");
    std::fs::write(
        &file,
        "[[budgets]]\nteam = \"x\"\nwindow = \"month\"\ncost = 1\n\
         [[budgets]]\nteam = \"x\"\nwindow = \"30d\"\ncost = 1\n",
    )
    .unwrap();
    let e = with_owners_file("", &file).owner_table().unwrap_err();
    assert_eq!(e.file.as_deref(), Some(file.as_path()), "{e}");
    assert_eq!(e.key.as_deref(), Some("budgets[1].window"), "{e}");
    assert!(e.message.contains("(team \"x\")"), "{e}");
    assert!(e.message.contains("calendar months"), "{e}");
    std::fs::write(
        &file,
        "[[budgets]]\napi_key_id = \"a\"\nwindow = \"month\"\ntokens = 1\n",
    )
    .unwrap();
    let e = with_owners_file("", &file).owner_table().unwrap_err();
    assert_eq!(e.file.as_deref(), Some(file.as_path()), "{e}");
    assert_eq!(e.key.as_deref(), Some("budgets[0].window"), "{e}");
    assert!(e.message.contains("per team"), "{e}");
}

#[test]
fn a_budget_in_both_the_main_config_and_the_owners_file_is_an_error_in_the_owners_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("owners.toml");
    let main = "[[budgets]]\napi_key_id = \"k\"\nwindow = \"1d\"\ntokens = 1\n\
                [[budgets]]\nteam = \"search\"\nwindow = \"month\"\ncost = 7\n";
    std::fs::write(
        &file,
        "[[owners]]\napi_key_id = \"k*\"\nteam = \"search\"\n\
         [[budgets]]\nteam = \"other\"\nwindow = \"month\"\ncost = 1\n\
         [[budgets]]\nteam = \"search\"\nwindow = \"month\"\ncost = 5000\n",
    )
    .unwrap();
    let e = with_owners_file(main, &file).owner_table().unwrap_err();
    assert_eq!(e.file.as_deref(), Some(file.as_path()), "{e}");
    assert_eq!(e.key.as_deref(), Some("budgets[1]"), "{e}");
    assert_eq!(
        e.message,
        "(team \"search\"): also defined in the main config's budgets[1]; define each budget once"
    );
    // The same owner over another window, or another owner, is a budget of its own.
    std::fs::write(
        &file,
        "[[budgets]]\napi_key_id = \"k\"\nwindow = \"7d\"\ntokens = 1\n\
         [[budgets]]\nteam = \"other\"\nwindow = \"month\"\ncost = 1\n",
    )
    .unwrap();
    let table = with_owners_file(main, &file)
        .owner_table()
        .unwrap()
        .unwrap();
    assert_eq!(table.budgets().len(), 2);
    // A key budget the main config has too.
    std::fs::write(
        &file,
        "[[budgets]]\napi_key_id = \"k\"\nwindow = \"1d\"\ncost = 2\n",
    )
    .unwrap();
    let e = with_owners_file(main, &file).owner_table().unwrap_err();
    assert_eq!(e.key.as_deref(), Some("budgets[0]"), "{e}");
    assert!(
        e.message
            .starts_with("(api_key_id \"k\"): also defined in the main config's budgets[0]"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_reported_on_one_line_with_the_key() {
    let e = Config::from_toml("[source]\nincluded = []\n", &no_env).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("source.included"));
    assert!(
        e.message
            .starts_with("unknown field `included`, expected one of `include`"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "{e:?}");
}
