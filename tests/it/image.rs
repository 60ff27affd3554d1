//! The container image as the DaemonSet runs it: built by `scripts/build-image.sh` from the
//! repository's Dockerfile (or taken from `TOKENMETER_IMAGE`, which `scripts/test.sh` sets
//! after building it), started with Podman under the pod's security context — read-only root
//! filesystem, every capability dropped, `no-new-privileges`, uid 0, the pod-log directory
//! read-only, the state directory writable, the manifest's memory limit — with the base
//! ConfigMap's config. It must count exactly, stop cleanly on SIGTERM within the manifest's
//! grace period, and continue exactly after a restart. Fails (never skips) without Podman:
//! `scripts/install-podman.sh` installs it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{
    append, cri, free_port, get, pod_dir, record_line, root as repo, wait_until, Expected, Metrics,
};

/// `podman ARGS`, with the repository's containers.conf unless `CONTAINERS_CONF` is set.
fn podman(args: &[&str]) -> Output {
    let mut cmd = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            repo().join("scripts/podman/containers.conf"),
        );
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (scripts/install-podman.sh installs it)"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image under test: `TOKENMETER_IMAGE`, else the one `scripts/build-image.sh` builds.
fn image() -> String {
    if let Some(image) = std::env::var("TOKENMETER_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return image;
    }
    let out = Command::new(repo().join("scripts/build-image.sh"))
        .output()
        .expect("scripts/build-image.sh");
    assert!(
        out.status.success(),
        "scripts/build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .expect("the image reference")
        .trim()
        .to_string()
}

/// A value of the base DaemonSet: the first line of `daemonset.yaml` after `after` that
/// starts (trimmed) with `key:`, so the test runs with the manifest's numbers, not copies.
fn manifest_value(after: &str, key: &str) -> String {
    let text = std::fs::read_to_string(repo().join("config/kubernetes/base/daemonset.yaml"))
        .expect("daemonset.yaml");
    let from = text
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in daemonset.yaml"));
    text[from..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} after {after:?} in daemonset.yaml"))
        .trim()
        .trim_matches('"')
        .to_string()
}

/// Kubernetes memory quantity (`256Mi`) as Podman's `--memory` (`256m`: Podman's `m` is MiB).
fn podman_memory(quantity: &str) -> String {
    let mib = quantity
        .strip_suffix("Mi")
        .map(|n| n.to_string())
        .or_else(|| {
            quantity
                .strip_suffix("Gi")
                .map(|n| format!("{}", n.parse::<u64>().unwrap() * 1024))
        })
        .unwrap_or_else(|| panic!("memory limit {quantity:?}: expected Mi or Gi"));
    format!("{mib}m")
}

/// Removes the container whatever the test's outcome.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

fn container_report(name: &str) -> String {
    let logs = podman(&["logs", "--tail", "40", name]);
    format!(
        "container {name} log:\n{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    )
}

/// Waits until `/metrics` shows exactly `want`'s token totals per series, and returns nothing
/// else: a count above `want` (a line counted twice) fails at once.
fn wait_for_exact_counts(addr: &str, name: &str, want: &Expected) {
    let want_total = want.column(3);
    wait_until(
        "the image's /metrics to show every line written",
        Duration::from_secs(120),
        || {
            let (code, body) = get(addr, "/metrics").ok()?;
            if code != 200 {
                return None;
            }
            let got = Metrics::parse(&body).by_series("llm_tokens_total");
            let sum: u64 = got.values().sum();
            assert!(
                sum <= want.total(),
                "counted {sum} tokens, more than the {} written\n{}",
                want.total(),
                container_report(name)
            );
            (got == want_total).then_some(())
        },
    );
}

fn wait_healthy(addr: &str, name: &str) {
    wait_until("the image's /healthz", Duration::from_secs(120), || {
        let running = podman_ok(&["inspect", "--format", "{{.State.Running}}", name]);
        assert_eq!(
            running,
            "true",
            "the container stopped\n{}",
            container_report(name)
        );
        matches!(get(addr, "/healthz"), Ok((200, _))).then_some(())
    });
}

fn write_lines(log: &Path, range: std::ops::Range<u64>, expected: &mut Expected) {
    let text: String = range.map(|i| cri(&record_line(i, expected))).collect();
    append(log, &text);
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_counts_exactly_stops_on_sigterm_and_resumes_exactly() {
    let image = image();
    // The binary is the entrypoint: `podman run IMAGE --version` runs `tokenmeter --version`.
    let version = podman_ok(&["run", "--rm", &image, "--version"]);
    assert!(
        version.starts_with(&format!(
            "tokenmeter {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let (pods, state, conf) = (
        tmp.path().join("pods"),
        tmp.path().join("state"),
        tmp.path().join("conf"),
    );
    for d in [&pods, &state, &conf] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The base ConfigMap's config, on a free port (the container shares the host's network).
    let port = free_port();
    let base =
        std::fs::read_to_string(repo().join("config/kubernetes/base/tokenmeter.toml")).unwrap();
    assert!(
        base.contains("listen = \"0.0.0.0:9464\""),
        "the base config's listen address moved"
    );
    std::fs::write(
        conf.join("tokenmeter.toml"),
        base.replace(
            "listen = \"0.0.0.0:9464\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let memory = podman_memory(&manifest_value("limits:", "memory"));
    let grace = manifest_value("spec:", "terminationGracePeriodSeconds");
    let name = format!("tokenmeter-image-test-{port}");
    let mount = |host: &Path, at: &str, ro: bool| {
        format!("{}:{at}{}", host.display(), if ro { ":ro" } else { "" })
    };
    let (pods_mount, state_mount, conf_mount) = (
        mount(&pods, "/var/log/pods", true),
        mount(&state, "/var/lib/tokenmeter", false),
        mount(&conf, "/etc/tokenmeter", true),
    );
    podman_ok(&[
        "create",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "0:0",
        "--memory",
        &memory,
        "-v",
        &pods_mount,
        "-v",
        &state_mount,
        "-v",
        &conf_mount,
        "-e",
        "NODE_NAME=node-a",
        "-e",
        "MIMIR_TENANT=team-a",
        "-e",
        "LOKI_TENANT=team-a",
        &image,
        "run",
        "--config",
        "/etc/tokenmeter/tokenmeter.toml",
    ]);
    let _cleanup = Container(name.clone());
    // `check-config` in the image, as docs/install.md runs it after an install.
    let checked = podman_ok(&[
        "run",
        "--rm",
        "--read-only",
        "--cap-drop",
        "all",
        "-v",
        &conf_mount,
        "-e",
        "MIMIR_TENANT=team-a",
        "-e",
        "LOKI_TENANT=team-a",
        &image,
        "check-config",
        "--config",
        "/etc/tokenmeter/tokenmeter.toml",
    ]);
    assert!(checked.contains("[source]"), "{checked}");
    podman_ok(&["start", &name]);
    wait_healthy(&addr, &name);

    // A gateway pod's log appears after the agent started: read from its start.
    let log = pod_dir(&pods, "gw-1").join("0.log");
    let mut expected = Expected::default();
    write_lines(&log, 0..400, &mut expected);
    wait_for_exact_counts(&addr, &name, &expected);

    // SIGTERM, as kubelet sends it: a clean exit (0) before the grace period's SIGKILL
    // (which would make it 137).
    podman_ok(&["stop", "--time", &grace, &name]);
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        code,
        "0",
        "SIGTERM within {grace}s\n{}",
        container_report(&name)
    );

    // Lines written while it is down, then a restart on the same state: each counted once.
    write_lines(&log, 400..700, &mut expected);
    podman_ok(&["start", &name]);
    wait_healthy(&addr, &name);
    wait_for_exact_counts(&addr, &name, &expected);
    let (_, status) = get(&addr, "/status").unwrap();
    assert!(
        status.contains("0.log"),
        "/status lists the pod log: {status}"
    );
}
