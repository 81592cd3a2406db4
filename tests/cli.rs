//! The `pgfailover` binary: config errors, --check, status, SIGTERM drain, secrets in logs.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::binary::{command, free_addr, run, Cluster, Launch, Process, ProxyToml, Signal, Site};
use common::*;

const LIMIT: Duration = Duration::from_secs(20);

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Exit code 2 and a single stderr line containing every `needle`.
fn assert_config_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    assert!(!err.contains("panicked"));
}

#[test]
fn config_errors_are_one_line_with_exit_code_2() {
    assert_config_error(&run(&["--config", "/nonexistent/proxy.toml", "--check"], &[]), &["/nonexistent/proxy.toml", "cannot read"]);
    let f = config_file("[health]\nintervall = \"1s\"\n");
    let path = f.path().to_str().unwrap();
    assert_config_error(&run(&["--config", path, "--check"], &[]), &[path, "health", "unknown field `intervall`"]);
    let f = config_file("[failover]\nhold_timeout = \"forever\"\n");
    let path = f.path().to_str().unwrap();
    assert_config_error(&run(&["--config", path], &[]), &[path, "failover.hold_timeout", "expected a duration"]);
    let f = config_file("[primary]\nport = \"five\"\n");
    let path = f.path().to_str().unwrap();
    assert_config_error(&run(&["--config", path, "--check"], &[]), &[path, "primary.port"]);
    assert_config_error(&run(&["--check"], &[("DB_PORT", "99999")]), &["environment", "DB_PORT"]);
    assert_config_error(&run(&["--check", "--promote", "maybe"], &[]), &["--promote", "auto"]);
}

/// The README's sample error line is what the binary prints.
#[test]
fn the_readme_sample_error_is_real() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let sample = readme.lines().find(|l| l.starts_with("pgfailover: configuration error: proxy.toml: health.intervall")).expect("the sample");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.toml"), "[health]\nintervall = \"1s\"\n").unwrap();
    let out = command().args(["--config", "proxy.toml", "--check"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), sample);
}

/// `log_level`, `--log-level`, `PGFAILOVER_LOG_LEVEL` and `RUST_LOG` are checked like every
/// other value: a typo stops the start (exit 2) with one line naming where it came from.
#[test]
fn a_bad_log_level_stops_the_start_and_names_its_source() {
    let f = config_file("log_level = \"warnn\"\n");
    let path = f.path().to_str().unwrap();
    assert_config_error(&run(&["--config", path, "--check"], &[]), &[path, "log_level", "\"warnn\" is not a level"]);
    assert_config_error(&run(&["--config", path], &[]), &[path, "log_level"]);
    assert_config_error(&run(&["--check", "--log-level", "debugg"], &[]), &["command line", "--log-level", "debugg"]);
    assert_config_error(&run(&["--check"], &[("PGFAILOVER_LOG_LEVEL", "nonsense===")]), &["environment", "PGFAILOVER_LOG_LEVEL"]);
    assert_config_error(&run(&["--check"], &[("RUST_LOG", "pgfailover=loud")]), &["environment", "RUST_LOG", "loud"]);
    assert!(run(&["--check", "--log-level", "info,pgfailover::monitor=debug"], &[]).status.success());
}

/// Whole-configuration checks name the file, variable or flag the bad value came from.
#[test]
fn invalid_values_name_their_file_variable_or_flag() {
    let f = config_file("[health]\ninterval = \"0s\"\n");
    let path = f.path().to_str().unwrap();
    assert_config_error(&run(&["--config", path, "--check"], &[]), &[&format!("{path}: health.interval: must be at least 10ms")]);
    assert_config_error(
        &run(&["--check"], &[("FAILOVER_HEALTH_CHECK_INTERVAL", "0")]),
        &["environment: FAILOVER_HEALTH_CHECK_INTERVAL: must be at least 10ms"],
    );
    assert_config_error(
        &run(&["--check", "--listen", "127.0.0.1:7000", "--admin-listen", "127.0.0.1:7000"], &[]),
        &["command line: --admin-listen: must differ from listen"],
    );
}

/// A port in use stops the start with one message, exit 1.
#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = free_addr().to_string();
    let out = run(&["--listen", &addr, "--admin-listen", &admin], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("ddress already in use").count(), 1, "{err}");
    assert!(err.contains(&addr), "{err}");
}

#[test]
fn check_prints_a_summary_without_secrets() {
    let f = config_file("[primary]\nname = \"pg-a\"\npassword = \"file-secret\"\n[[standbys]]\nname = \"pg-b\"\nport = 5433\n");
    let out = run(&["--config", f.path().to_str().unwrap(), "--check"], &[("DB_PASSWORD", "env-secret")]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration OK") && text.contains("pg-a") && text.contains("pg-b"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// The harness's typed config builder writes keys the binary knows, with the values meant.
#[test]
fn the_harness_writes_a_config_the_binary_accepts() {
    let mut site = Site::new();
    let cfg = ProxyToml::new()
        .with_listen_ro()
        .backend("pg-a", 5432)
        .backend("pg-b", 5433)
        .backend_port(1, 5434)
        .admin_token("a-token")
        .state_dir(&site.state())
        .log_level("debug")
        .health_interval(Duration::from_millis(150))
        .health_timeout(Duration::from_millis(700))
        .failure_threshold(4)
        .promote("never")
        .hold_timeout(Duration::from_secs(7))
        .drain_timeout(Duration::from_secs(3))
        .quorum("majority")
        .shutdown_grace(Duration::from_millis(1500))
        .shutdown_delay(Duration::from_secs(2))
        .coordination(&["http://127.0.0.1:2379".to_string()], "main", "p1")
        .lease_ttl(Duration::from_secs(3))
        .set("read", "include_primary", true);
    site.write(&cfg);
    let out = run(&[std::ffi::OsStr::new("--config"), site.config_path().as_os_str(), std::ffi::OsStr::new("--check")], &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\n{}", cfg.render());
    let head = format!("listen {}, admin {}, health every 150ms (timeout 700ms, threshold 4), promote never, hold 7s, drain 3s", cfg.listen(), cfg.admin());
    assert!(text.contains(&head), "{head:?} not in {text}");
    assert!(text.contains("primary pg-a at 127.0.0.1:5432") && text.contains("standby pg-b at 127.0.0.1:5434"), "{text}");
}

/// The binary running in the background on a site of its own.
struct Running {
    /// Killed when the test ends (fields drop in order, before the site).
    process: Process,
    /// Its admin port.
    admin: SocketAddr,
    /// Its client port.
    client: SocketAddr,
    /// Its config file and log.
    _site: Site,
}

fn spawn_proxy(c: &Cluster, grace: Duration) -> Running {
    spawn_proxy_with(c, grace, &[])
}

/// The primary of `c` behind the binary, its password from `DB_PASSWORD`, logging at debug.
fn spawn_proxy_with(c: &Cluster, grace: Duration, env: &[(&str, &str)]) -> Running {
    let mut site = Site::new();
    site.write(&ProxyToml::new().health_interval(Duration::from_millis(250)).shutdown_grace(grace).backend("pg-a", c.nodes[0].port));
    let mut launch = site.launch("proxy").env("DB_PASSWORD", &c.options.password).env("RUST_LOG", "debug");
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    Running { process: launch.start(), admin: site.admin(), client: site.listen(), _site: site }
}

fn exit_code(r: &mut Running) -> Option<i32> {
    r.process.try_exit().map(|s| s.code().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_sessions_and_exits_0() {
    let c = cluster(0).await;
    let mut r = spawn_proxy(&c, Duration::from_secs(30));
    r.process.ready(LIMIT).await;
    let status = run(&["status", "--admin", &format!("http://{}", r.admin)], &[]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert!(table.contains("state: degraded") && table.contains("pg-a") && table.contains("primary"), "{table}");

    let pw = &c.options.password;
    let client = connect(r.client, pw).await;
    client.batch_execute("create table d(i int); begin; insert into d values (1)").await.unwrap();
    r.process.signal(Signal::Term);
    eventually(LIMIT, "listener closed", || async { tokio::net::TcpStream::connect(r.client).await.is_err().then_some(()) }).await;
    assert_eq!(exit_code(&mut r), None, "still draining the open session");
    // The open session keeps working through the drain.
    client.batch_execute("insert into d values (2); commit").await.unwrap();
    drop(client);
    let code = eventually(LIMIT, "process exit", || std::future::ready(exit_code(&mut r))).await;
    assert_eq!(code, 0);
    assert_eq!(c.psql(0, "select count(*) from d").unwrap(), "2");
    let log = r.process.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains(pw.as_str()), "the password appears in the log");
    assert!(!log.contains('\x1b'), "a log written to a file has no colour codes");
    assert!(log.contains("promote=auto"), "values print as people read them: {log}");
    let ours = log.lines().filter(|l| l.contains(" pgfailover::"));
    for l in ours {
        assert!(!l.contains("Some(") && !l.contains("None"), "a Rust internal in a log field: {l}");
    }
}

/// The health monitor dying (here by the debug build's fault injection) stops the process
/// with a non-zero exit, so a supervisor restarts it; meanwhile it routed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_monitor_makes_the_process_exit_non_zero() {
    let c = cluster(0).await;
    let mut r = spawn_proxy_with(&c, Duration::from_millis(300), &[("PGFAILOVER_DEBUG_CRASH_MONITOR_AFTER", "1s")]);
    r.process.ready(LIMIT).await;
    let code = eventually(LIMIT, "process exit", || std::future::ready(exit_code(&mut r))).await;
    assert_eq!(code, 70, "EX_SOFTWARE");
    let log = r.process.log();
    assert!(log.contains("health monitor died"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_left_after_the_grace_period() {
    let c = cluster(0).await;
    let mut r = spawn_proxy(&c, Duration::from_millis(300));
    r.process.ready(LIMIT).await;
    let client = connect(r.client, &c.options.password).await;
    r.process.signal(Signal::Term);
    let code = eventually(LIMIT, "process exit", || std::future::ready(exit_code(&mut r))).await;
    assert_eq!(code, 0);
    eventually(LIMIT, "session closed", || async { client.is_closed().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_cluster_and_removes_it_on_ctrl_c() {
    let (listen, admin) = (free_addr().to_string(), free_addr().to_string());
    let mut demo = Launch::new("demo").args(["demo", "--listen", &listen, "--admin-listen", &admin]).start();
    // The demo prints where its cluster lives, the psql line to connect with and the curl
    // line for a switchover.
    let (dir, url, trigger) = eventually(Duration::from_secs(60), "the demo prints its cluster, psql and curl lines", || {
        let out = demo.stdout();
        async move {
            let (mut dir, mut url, mut trigger) = (None, None, None);
            for line in out.lines() {
                if let Some(rest) = line.split("deletes the cluster in ").nth(1) {
                    dir = Some(rest.trim_end_matches(").").to_string());
                }
                if let Some(rest) = line.trim().strip_prefix("psql \"") {
                    url = Some(rest.trim_end_matches('"').to_string());
                }
                if line.contains("/failover/trigger") {
                    trigger = Some(line.trim().to_string());
                }
            }
            Some((dir?, url?, trigger?))
        }
    })
    .await;
    assert!(url.contains(&listen), "{url}");
    assert!(Path::new(&dir).exists());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect through the demo");
    tokio::spawn(conn);
    let in_recovery: bool = client.query_one("select pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery, "the demo routes to the primary");
    let status = get(admin.parse().unwrap(), "/failover/status").await.json();
    assert_eq!(status["standbys"][0]["name"], "pg-b");
    drop(client);
    // The printed curl line works as written: a switchover to pg-b.
    let out = Command::new("sh").args(["-c", &format!("{trigger} -w ' %{{http_code}}'")]).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.ends_with(" 200"), "{trigger}: {answer}");
    assert!(answer.contains("\"to\": \"pg-b\""), "{answer}");
    demo.signal(Signal::Int);
    assert_eq!(demo.exit(LIMIT).await.code(), Some(0));
    assert!(!Path::new(&dir).exists(), "the demo removed its cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_emits_one_json_object_per_line() {
    let c = cluster(0).await;
    let admin = free_addr();
    let mut p = Launch::new("json")
        .args(["--listen", &free_addr().to_string(), "--admin-listen", &admin.to_string(), "--log-format", "json"])
        .env("DB_PORT", c.nodes[0].port.to_string())
        .env("DB_PASSWORD", &c.options.password)
        .admin(admin)
        .start();
    p.ready(LIMIT).await;
    p.signal(Signal::Term);
    assert!(p.exit(LIMIT).await.success());
    let text = p.log();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(!text.contains(&c.options.password));
}
