//! End-to-end tests of the Loki export: the daemon binary forwarding real files to a receiver
//! that decodes Loki's wire format and applies Loki's validation (see `common/loki.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::loki::{Behavior, LokiReceiver, Received};
use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

fn loki_section(r: &LokiReceiver, extra: &str) -> String {
    format!(
        "[loki]\nendpoint = \"{}\"\nbatch_wait = \"200ms\"\nbatch_bytes = 65536\n{extra}",
        r.endpoint()
    )
}

/// Entries by line, with how often each arrived.
fn counts(entries: &[Received]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in entries {
        *m.entry(e.line.clone()).or_insert(0) += 1;
    }
    m
}

/// The daemon's Loki counters: (entries sent + rejected, undelivered bytes, state writes).
/// Per process: they start at 0 after a restart.
fn loki_progress(d: &Daemon) -> Option<(f64, f64, f64)> {
    let m = d.metrics()?;
    Some((
        m.sum("tokenmeter_loki_entries_total", &[]),
        m.sum("tokenmeter_loki_lag_bytes", &[]),
        m.sum(
            "tokenmeter_checkpoint_writes_total",
            &[("outcome", "success")],
        ),
    ))
}

/// Waits until at least `n` entries arrived and the daemon has delivered all it read: nothing
/// undelivered, and every entry the receiver holds answered (sent or rejected, as counted by
/// this daemon process, so no earlier process may have delivered any). Then, to catch
/// duplicates that would arrive late, waits a moment more (700 ms, and two more state writes
/// of the daemon, so a slow daemon has had its turns) during which nothing may arrive.
fn wait_entries(r: &LokiReceiver, n: usize, d: &Daemon) -> Vec<Received> {
    let start = std::time::Instant::now();
    let (got, writes) = loop {
        let got = r.entries().len();
        let progress = loki_progress(d);
        if let Some((answered, lag, writes)) = progress {
            if got >= n && lag == 0.0 && answered >= got as f64 {
                break (got, writes);
            }
        }
        if start.elapsed() > WAIT {
            panic!(
                "only {got} of {n} entries arrived, or not all answered: (answered, lag, state \
                 writes) = {progress:?}\n{}",
                cond_daemon_report(d, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let t = std::time::Instant::now();
    cond_wait(d, "two more state writes", WAIT, || {
        let (_, _, w) = loki_progress(d)?;
        (w >= writes + 2.0 && t.elapsed() >= Duration::from_millis(700)).then_some(())
    });
    let (answered, lag, _) = loki_progress(d).unwrap();
    let entries = r.entries();
    assert_eq!(
        (entries.len(), lag),
        (got, 0.0),
        "entries arrived after the daemon had delivered everything ({answered} answered)"
    );
    entries
}

#[test]
fn cri_fixture_arrives_exactly_once_through_503_and_429() {
    let r = LokiReceiver::start();
    // The fixture is from 2026-03-17: the receiver's clock is set an hour later, so Loki's
    // 7-day age limit applies as it would have then.
    r.set_now_ns(1_773_738_842_000_000_000 + 3_600_000_000_000);
    r.script(Behavior::Status(503));
    r.script(Behavior::Status(429));
    r.script(Behavior::Status(503));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-fixture");
    let cri_fixture = std::fs::read_to_string(fixture("cri-wrapped.log")).unwrap();
    std::fs::write(dir.join("0.log"), &cri_fixture).unwrap();
    let cfg = config(
        &root,
        &tmp.path().join("state"),
        "node_name = \"node-l\"",
        &loki_section(&r, ""),
    );
    let d = Daemon::start(tmp.path(), "loki-fixture", &cfg);
    let entries = wait_entries(&r, 34, &d);
    assert!(r.requests() >= 4, "the scripted failures were retried");

    // Every logical line of the fixture exactly once: 30 access-log lines (one joined from
    // three CRI partials) and 4 Envoy stderr lines, envelope removed.
    let mut expected_lines: Vec<String> = std::fs::read_to_string(fixture("envoy-ai-access.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for l in cri_fixture.lines().filter(|l| l.contains(" stderr F ")) {
        expected_lines.push(l.split_once(" stderr F ").unwrap().1.to_string());
    }
    let got = counts(&entries);
    assert_eq!(got.len(), 34);
    for l in &expected_lines {
        assert_eq!(
            got.get(l),
            Some(&1),
            "line not delivered exactly once: {}",
            &l[..80.min(l.len())]
        );
    }
    // Labels: few and fixed; never per-request values.
    for e in &entries {
        let keys: Vec<&str> = e.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["container", "job", "namespace", "node", "pod"]);
        assert_eq!(e.labels["job"], "envoy-access");
        assert_eq!(e.labels["namespace"], "envoy-gateway-system");
        assert_eq!(e.labels["pod"], "gw-fixture");
        assert_eq!(e.labels["container"], "envoy");
        assert_eq!(e.labels["node"], "node-l");
    }
    // Timestamps are the CRI envelope's (first line of the file, computed with `date -d`).
    let first = entries
        .iter()
        .find(|e| e.line.contains("deprecated runtime key"))
        .unwrap();
    assert_eq!(first.ts_ns, 1_773_738_841_202_232_361);
    let rec = entries
        .iter()
        .find(|e| e.line.contains("eb84ccae-cb47-468a-98c0-d7f3e0416894"))
        .unwrap();
    assert_eq!(rec.ts_ns, 1_773_738_848_896_007_972);
    // Structured metadata on LLM records, none on the others.
    assert_eq!(rec.metadata["model"], "gpt-4o-mini");
    assert_eq!(rec.metadata["api_key_id"], "team-search-prod");
    assert_eq!(rec.metadata["service_id"], "aim-svc-0042");
    assert!(first.metadata.is_empty());
    // Within a stream, entries are in file order (timestamps never go back).
    let ts: Vec<i64> = entries.iter().map(|e| e.ts_ns).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
}

fn outage(kill_during: bool) {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, if kill_during { "gw-kill" } else { "gw-down" });
    let log = dir.join("0.log");
    let cfg = config(&root, &tmp.path().join("state"), "", &loki_section(&r, ""));
    let mut d = Daemon::start(tmp.path(), "loki-outage", &cfg);
    let mut exp = Expected::default();
    let mut lines = Vec::new();
    r.set_down(true);
    // 50,000 lines over the outage, in bursts; metering stays exact and on time.
    let started = std::time::Instant::now();
    for burst in 0..10u64 {
        let mut text = String::new();
        for i in burst * 5000..(burst + 1) * 5000 {
            let l = record_line(i, &mut exp);
            text.push_str(&cri(&l));
            lines.push(l);
        }
        append(&log, &text);
        let t = std::time::Instant::now();
        wait_until(
            "metering during the Loki outage",
            Duration::from_secs(5),
            || {
                let m = d.metrics()?;
                (m.by_series("llm_tokens_total") == exp.column(3)).then_some(())
            },
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "metering fell behind: {:?}",
            t.elapsed()
        );
        if kill_during && burst == 5 {
            cond_kill9_reported(
                &mut d,
                &format!(
                    "loki outage (deterministic, no seed): after burst {burst}, {} lines \
                     written and metered, Loki down for {:?}",
                    lines.len(),
                    started.elapsed()
                ),
            );
            d = Daemon::start(tmp.path(), "loki-outage", &cfg);
        }
        // The bursts are spread over the outage.
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert!(d.peak_rss_mib() < 32.0, "peak RSS {} MiB", d.peak_rss_mib());
    // The outage lasts 30 s, and the daemon (the restarted one, if killed) has seen it: its
    // pushes failed and are being retried.
    let remaining = Duration::from_secs(30).saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    cond_wait(&d, "Loki pushes retried during the outage", WAIT, || {
        let m = d.metrics()?;
        (m.sum("tokenmeter_loki_retries_total", &[]) >= 1.0).then_some(())
    });
    assert!(r.entries().is_empty());
    r.set_down(false);
    let entries = wait_entries(&r, lines.len(), &d);
    let got = counts(&entries);
    assert_eq!(entries.len(), lines.len(), "no duplicates");
    for l in &lines {
        assert_eq!(got.get(l), Some(&1));
    }
    // Nothing was delivered before the (re)start of the process that delivered all of it.
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum("tokenmeter_loki_entries_total", &[("outcome", "sent")]) as usize,
        lines.len()
    );
    wait_exact(&d, &exp);
}

/// Waits until the daemon's token counters are exactly `exp` (on timeout, what it was doing).
fn wait_exact(d: &Daemon, exp: &Expected) {
    cond_wait(d, "exact metering", WAIT, || {
        (d.metrics()?.by_series("llm_tokens_total") == exp.column(3)).then_some(())
    });
}

/// A daemon tailing `<tmp>/pods` with at most `max_open_files` descriptors and forwarding to
/// `r`, which is down from the start; and the pods' root.
fn start_with_loki_down(
    tmp: &Path,
    r: &LokiReceiver,
    name: &str,
    max_open_files: usize,
) -> (Daemon, PathBuf) {
    r.set_down(true);
    let root = tmp.join("pods");
    let cfg = config(&root, &tmp.join("state"), "", &loki_section(r, "")).replace(
        "[source]\n",
        &format!("[source]\nmax_open_files = {max_open_files}\n"),
    );
    (Daemon::start(tmp, name, &cfg), root)
}

/// After an outage with more files than descriptors: metering kept to its ceiling and Loki
/// got nothing; then Loki comes back and each of the `lines` lines arrives exactly once.
fn assert_each_line_once_after_the_outage(
    d: &Daemon,
    r: &LokiReceiver,
    lines: usize,
    max_open_files: usize,
) {
    let open = d.metrics().unwrap().sum("tokenmeter_open_files", &[]);
    assert!(open <= max_open_files as f64, "{open} files open");
    assert!(r.entries().is_empty());
    r.set_down(false);
    let entries = wait_entries(r, lines, d);
    assert_eq!(entries.len(), lines, "each line once");
    assert!(counts(&entries).values().all(|n| *n == 1));
}

#[test]
fn loki_down_30s_while_50k_lines_are_appended() {
    outage(false);
}

#[test]
fn loki_down_30s_with_a_kill9_of_the_daemon() {
    outage(true);
}

#[test]
fn a_400_batch_is_counted_and_dropped_and_the_next_batches_go_through() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-400");
    let log = dir.join("0.log");
    let cfg = config(&root, &tmp.path().join("state"), "", &loki_section(&r, ""));
    let d = Daemon::start(tmp.path(), "loki-400", &cfg);
    // Lines stamped 8 days ago: Loki rejects them (reject_old_samples_max_age = 7 d) with 400.
    let eight_days_ago = iso(test_start() - 8 * 86_400);
    let old = format!("{eight_days_ago} stdout F {{\"model\":\"m\",\"llm_input_token\":1}}\n");
    append(&log, &old.repeat(5));
    wait_until("the old batch rejected", WAIT, || {
        let m = d.metrics()?;
        (m.sum("tokenmeter_loki_dropped_total", &[("reason", "rejected")]) == 5.0).then_some(())
    });
    assert!(
        d.log_text().contains("timestamp too old"),
        "Loki's message is logged:\n{}",
        d.log_text()
    );
    let mut exp = Expected::default();
    let mut text = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..20 {
        // Fresh lines: plain envelope-less JSON with a current start_time would also do; CRI
        // with "now" keeps the stream in order.
        let l = record_line(i, &mut exp);
        text.push_str(&format!("{} stdout F {l}\n", iso(now as i64)));
    }
    append(&log, &text);
    let entries = wait_entries(&r, 20, &d);
    assert_eq!(entries.len(), 20);
    assert_eq!(r.rejections().len(), 1);
}

#[test]
fn redaction_and_truncation() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-redact");
    let extra = "redact = [\"x-forwarded-for\", \"user-agent\"]\nmax_line_bytes = 600\n";
    let cfg = config(
        &root,
        &tmp.path().join("state"),
        "",
        &loki_section(&r, extra),
    );
    let d = Daemon::start(tmp.path(), "loki-redact", &cfg);
    let short = r#"{"model":"m","x-forwarded-for":"203.0.113.7","user-agent":"curl/8","llm_input_token":3}"#;
    let long = format!(
        r#"{{"model":"m","x-forwarded-for":"198.51.100.1","note":"{}","llm_input_token":4}}"#,
        "n".repeat(1000)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    append(
        &dir.join("0.log"),
        &format!(
            "{} stdout F {short}\n{} stdout F {long}\n",
            iso(now as i64),
            iso(now as i64)
        ),
    );
    let entries = wait_entries(&r, 2, &d);
    let first = entries
        .iter()
        .find(|e| e.line.contains("user-agent"))
        .unwrap();
    assert_eq!(
        first.line,
        r#"{"model":"m","x-forwarded-for":"[REDACTED]","user-agent":"[REDACTED]","llm_input_token":3}"#
    );
    serde_json::from_str::<serde_json::Value>(&first.line).expect("still valid JSON");
    // The address comes before the cut, so only redaction can have removed it.
    let second = entries.iter().find(|e| e.line.contains("nnnn")).unwrap();
    assert_eq!(second.line.len(), 600, "truncated to loki.max_line_bytes");
    let kept = r#"{"model":"m","x-forwarded-for":"[REDACTED]","note":"nnnn"#;
    assert!(second.line.starts_with(kept), "{}", &second.line[..80]);
    assert!(!second.line.contains("198.51.100.1"));
    let m = d.metrics().unwrap();
    assert_eq!(m.sum("tokenmeter_loki_truncated_lines_total", &[]), 1.0);
    // Metering is not affected by what Loki gets.
    assert_eq!(m.sum("llm_input_tokens_total", &[]), 7.0);
}

/// Kubelet rotates a file while Loki is down; the tailer meters it to its end and lets it go,
/// then the daemon is killed. The state still holds the rotated file (metering done, Loki
/// behind), so the restarted daemon finds it by identity and forwards the rest: every line
/// exactly once, nothing metered twice.
#[test]
fn a_rotated_file_behind_in_loki_survives_a_kill9() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-rotate");
    let log = dir.join("0.log");
    let cfg = config(&root, &tmp.path().join("state"), "", &loki_section(&r, ""));
    let mut d = Daemon::start(tmp.path(), "loki-rotate", &cfg);
    r.set_down(true);
    let mut exp = Expected::default();
    let mut lines = Vec::new();
    let mut write = |range: std::ops::Range<u64>, exp: &mut Expected| {
        let mut text = String::new();
        for i in range {
            let l = record_line(i, exp);
            text.push_str(&cri(&l));
            lines.push(l);
        }
        append(&log, &text);
    };
    write(0..1000, &mut exp);
    wait_exact(&d, &exp);
    let rotated = dir.join("0.log.20261127-101500");
    std::fs::rename(&log, &rotated).unwrap();
    write(1000..1500, &mut exp);
    wait_exact(&d, &exp);
    cond_wait(
        &d,
        "the registry to let go of the rotated file",
        WAIT,
        || (cond_status_of(&d, &rotated)?["state"] == "remembered").then_some(()),
    );
    // Two state writes after the let-go was seen, so a state written after it is on disk.
    let writes = |d: &Daemon| {
        d.metrics().map(|m| {
            m.sum(
                "tokenmeter_checkpoint_writes_total",
                &[("outcome", "success")],
            )
        })
    };
    let w0 = cond_wait(&d, "/metrics", WAIT, || writes(&d));
    cond_wait(&d, "two state writes after the let-go", WAIT, || {
        (writes(&d)? >= w0 + 2.0).then_some(())
    });
    assert!(r.entries().is_empty());
    let context = format!(
        "rotated file behind in Loki (deterministic, no seed): {} lines written and \
         metered, 0.log rotated after line 1000, let go, {} state writes since",
        lines.len(),
        writes(&d).unwrap_or(0.0) - w0
    );
    cond_kill9_reported(&mut d, &context);
    r.set_down(false);
    let d = Daemon::start(tmp.path(), "loki-rotate", &cfg);
    let entries = wait_entries(&r, lines.len(), &d);
    let got = counts(&entries);
    assert_eq!(entries.len(), lines.len(), "no duplicates");
    for l in &lines {
        assert_eq!(got.get(l), Some(&1), "{l}");
    }
    wait_exact(&d, &exp);
}

#[test]
fn loki_lag_is_every_undelivered_byte_in_the_files_while_loki_is_down() {
    let r = LokiReceiver::start();
    r.set_down(true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let cfg = config(&root, &tmp.path().join("state"), "", &loki_section(&r, ""));
    let d = Daemon::start(tmp.path(), "loki-lag", &cfg);
    let mut exp = Expected::default();
    let mut files = Vec::new();
    let mut lines = 0usize;
    // Four pods, ~1.2 MB each: far more than one batch (64 KiB here), and one file is rotated
    // away while undelivered, so the backlog sits in files the forwarder has not batched yet.
    for (p, pod) in ["gw-l1", "gw-l2", "gw-l3", "gw-l4"].iter().enumerate() {
        let log = pod_dir(&root, pod).join("0.log");
        let mut text = String::new();
        for i in 0..5000u64 {
            text.push_str(&cri(&record_line(p as u64 * 100_000 + i, &mut exp)));
            lines += 1;
        }
        append(&log, &text);
        files.push(log);
    }
    // Metered (so the daemon holds it) before it is rotated away undelivered.
    cond_wait_read_to_end(&d, &files[0], WAIT);
    let rotated = files[0].with_file_name("0.log.20261130-120000");
    std::fs::rename(&files[0], &rotated).unwrap();
    files[0] = rotated;
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(on_disk > 4_000_000, "{on_disk}");
    cond_wait(
        &d,
        "tokenmeter_loki_lag_bytes to sum to every byte written",
        WAIT,
        || {
            let m = d.metrics()?;
            (m.sum("tokenmeter_loki_lag_bytes", &[]) as u64 == on_disk).then_some(())
        },
    );
    r.set_down(false);
    let entries = wait_entries(&r, lines, &d);
    assert_eq!(entries.len(), lines, "each line once");
    let m = d.metrics().unwrap();
    assert_eq!(m.sum("tokenmeter_loki_lag_bytes", &[]), 0.0);
    assert_eq!(m.by_series("llm_tokens_total"), exp.column(3));
}

#[test]
fn a_loki_outage_with_more_files_than_descriptors_does_not_stall_metering() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let (d, root) = start_with_loki_down(tmp.path(), &r, "loki-fds", 8);
    let mut exp = Expected::default();
    let mut lines = 0usize;
    // 24 pods, three times the ceiling, written in three rounds: while Loki is down, the
    // forwarder must give back the descriptors of files the registry closes, or the later
    // files could never be opened for metering.
    for round in 0..3u64 {
        for p in 0..24u64 {
            let log = pod_dir(&root, &format!("gw-f{p}")).join("0.log");
            let mut text = String::new();
            for i in 0..50u64 {
                text.push_str(&cri(&record_line(
                    round * 1_000_000 + p * 1000 + i,
                    &mut exp,
                )));
                lines += 1;
            }
            append(&log, &text);
        }
        // Metering of every file while Loki is down.
        wait_exact(&d, &exp);
    }
    let m = d.metrics().unwrap();
    assert_eq!(m.sum("tokenmeter_open_files_limit", &[]), 8.0);
    assert_each_line_once_after_the_outage(&d, &r, lines, 8);
}

#[test]
fn rotations_during_a_loki_outage_do_not_hold_descriptors_metering_needs() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let (d, root) = start_with_loki_down(tmp.path(), &r, "loki-rot", 2);
    let dir = pod_dir(&root, "gw-rot");
    let log = dir.join("0.log");
    let mut exp = Expected::default();
    let mut lines = 0usize;
    // kubelet rotates four times while Loki is down: every rotated file is undelivered, yet
    // each new 0.log must get a descriptor and be counted.
    for round in 0..5u64 {
        let mut text = String::new();
        for i in 0..40u64 {
            text.push_str(&cri(&record_line(round * 1000 + i, &mut exp)));
            lines += 1;
        }
        append(&log, &text);
        // Metering of every rotation while Loki is down.
        wait_exact(&d, &exp);
        if round < 4 {
            cond_wait_read_to_end(&d, &log, WAIT);
            std::fs::rename(&log, dir.join(format!("0.log.2026113012000{round}"))).unwrap();
        }
    }
    assert_each_line_once_after_the_outage(&d, &r, lines, 2);
}

#[test]
fn a_retry_after_of_a_day_waits_no_longer_than_max_backoff() {
    let r = LokiReceiver::start();
    r.script(Behavior::RetryAfter("86400"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-ra").join("0.log");
    let cfg = config(
        &root,
        &tmp.path().join("state"),
        "",
        &loki_section(&r, "max_backoff = \"2s\"\n"),
    );
    let d = Daemon::start(tmp.path(), "loki-ra", &cfg);
    let mut exp = Expected::default();
    let lines: Vec<String> = (0..20).map(|i| record_line(i, &mut exp)).collect();
    append(&log, &lines.iter().map(|l| cri(l)).collect::<String>());
    // The first push is told to come back in a day; the agent comes back after at most
    // max_backoff (2 s, ±25 % jitter), so the lines arrive well within the wait below.
    let t = std::time::Instant::now();
    let entries = wait_entries(&r, lines.len(), &d);
    assert_eq!(entries.len(), lines.len());
    assert!(
        r.requests() >= 2,
        "the 429 was answered, then the batch went again"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn redaction_fails_closed_on_malformed_and_escaped_lines() {
    let r = LokiReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-redact2");
    let extra = "redact = [\"x-forwarded-for\", \"authorization\"]\n";
    // api_key_id (structured metadata by default) is read from a redacted field.
    let sections = format!(
        "{}[fields]\napi_key_id = \"authorization\"\n",
        loki_section(&r, extra)
    );
    let cfg = config(&root, &tmp.path().join("state"), "", &sections);
    let d = Daemon::start(tmp.path(), "loki-redact2", &cfg);
    // Not JSON (a trailing comma); keys spelled with escapes, at the top and nested in an
    // object and an array; a value that is not JSON, whose end would be a guess; a redacted
    // field that is also the source of a structured-metadata entry.
    let lines = [
        r#"{"model":"m","x-forwarded-for":"203.0.113.9","llm_input_token":3,}"#,
        r#"{"model":"m","x\u002dforwarded-for":"203.0.113.10","llm_input_token":4}"#,
        r#"{"model":"m","h":{"x\u002dforwarded-for":"203.0.113.11"},"l":[{"\u0078-forwarded-for":"203.0.113.12"}],"llm_input_token":5}"#,
        r#"{"model":"m","x-forwarded-for": 203.0.113.13, 203.0.113.14,"llm_input_token":6}"#,
        r#"{"model":"m","authorization":"Bearer 203.0.113.15","llm_input_token":7}"#,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let text: String = lines
        .iter()
        .map(|l| format!("{} stdout F {l}\n", iso(now)))
        .collect();
    append(&dir.join("0.log"), &text);
    let entries = wait_entries(&r, lines.len(), &d);
    for e in &entries {
        assert!(!e.line.contains("203.0.113."), "{}", e.line);
        for (k, v) in &e.metadata {
            assert!(!v.contains("203.0.113."), "{k}={v} with {}", e.line);
        }
    }
    let got = counts(&entries);
    for expected in [
        r#"{"model":"m","x-forwarded-for":"[REDACTED]","llm_input_token":3,}"#,
        r#"{"model":"m","x\u002dforwarded-for":"[REDACTED]","llm_input_token":4}"#,
        r#"{"model":"m","h":{"x\u002dforwarded-for":"[REDACTED]"},"l":[{"\u0078-forwarded-for":"[REDACTED]"}],"llm_input_token":5}"#,
        r#"{"model":"m","authorization":"[REDACTED]","llm_input_token":7}"#,
        "[line withheld: redaction of loki.redact fields failed]",
    ] {
        assert_eq!(got.get(expected), Some(&1), "{expected} in {got:#?}");
    }
    let bearer = entries
        .iter()
        .find(|e| e.line.contains("authorization"))
        .unwrap();
    assert_eq!(bearer.metadata.get("model").map(String::as_str), Some("m"));
    assert!(!bearer.metadata.contains_key("api_key_id"), "{bearer:?}");
    let m = d.metrics().unwrap();
    assert_eq!(m.sum("tokenmeter_loki_redaction_failures_total", &[]), 1.0);
    // All still counted.
    assert_eq!(
        m.sum("llm_input_tokens_total", &[]),
        16.0,
        "the malformed lines are not records"
    );
}
