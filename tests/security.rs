//! Nobody takes over the proxy who should not (issue 23), with a real second OS user
//! (`nobody`, through `runuser`) and the real binary: the control socket and the state
//! directory locked to their owner, each side of a takeover checking the other's
//! credentials, secret files others can read reported, the admin read endpoints behind their
//! token. (etcd with a limited role: `tests/etcd_auth.rs`.)

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{self, free_addr, ProxyToml, Site};
use common::*;

const LIMIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// A takeover as an attacker would try it, run as `nobody`: connect to the control socket,
/// say `TAKEOVER`, take whatever comes (bytes and descriptors), say `READY` (a connection
/// closed on it ends the attempt). Prints
/// `EACCES` when it cannot connect, else `pid <its pid> bytes <n> fds <n>`. Debian's own
/// python3, which `nobody` can run.
const FOREIGN_TAKEOVER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.settimeout(20)
msg, fds = b"", []
try:
    s.sendall(b"TAKEOVER %d\n" % os.getpid())
    msg, fds, _, _ = socket.recv_fds(s, 256, 8)
    s.sendall(b"READY\n")
except (BrokenPipeError, ConnectionResetError):
    pass  # closed on it
print("pid", os.getpid(), "bytes", len(msg), "fds", len(fds))
"#;

/// These tests chown files and run processes as `nobody`: they need root, as the test
/// machines run them.
fn as_root() {
    assert_eq!(rustix::process::geteuid().as_raw(), 0, "tests/security.rs needs root (it chowns files and runs processes as nobody)");
}

fn foreign_takeover(socket: &Path) -> String {
    let out = Command::new("runuser").args(["-u", "nobody", "--", "/usr/bin/python3", "-c", FOREIGN_TAKEOVER]).arg(socket).output().expect("runuser python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn sock(state: &Path) -> PathBuf {
    state.join("pgfailover.sock")
}

/// A configuration whose one backend nobody serves: the admin port and the control socket
/// work all the same.
fn no_backend() -> ProxyToml {
    ProxyToml::new().backend("pg-a", free_addr().port()).health_interval(Duration::from_millis(250)).shutdown_grace(Duration::from_millis(200))
}

/// `pgfailover_takeover_refused_total` as the admin port reports it.
async fn refused_total(admin: std::net::SocketAddr) -> f64 {
    let text = get(admin, "/metrics").await.body;
    text.lines().find_map(|l| l.strip_prefix("pgfailover_takeover_refused_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_user_gets_no_socket_and_the_proxy_keeps_serving() {
    as_root();
    let c = cluster(0).await;
    let mut site = Site::new();
    let state = site.state();
    site.write(&ProxyToml::new().cluster(&c, 1).state_dir(&state).health_interval(Duration::from_millis(250)).shutdown_grace(Duration::from_millis(200)));
    // As some container and service setups run it: nothing the process creates is private
    // by the umask's grace.
    let mut p = site.launch("p1").umask(0o000).start();
    p.ready(LIMIT).await;
    assert_eq!(mode(&state), 0o700, "the state directory it created");
    assert_eq!(mode(&sock(&state)), 0o600, "the control socket");
    assert_eq!(mode(&state.join("pgfailover.lock")), 0o600, "the lock file");

    // Layer by layer, each lock alone keeps `nobody` out. The site itself is opened to
    // traversal, so only the state directory's mode stands in the way...
    chmod(site.path(), 0o711);
    assert_eq!(foreign_takeover(&sock(&state)), "EACCES", "the 0700 state directory");
    // ...then only the socket's...
    chmod(&state, 0o711);
    assert_eq!(foreign_takeover(&sock(&state)), "EACCES", "the 0600 control socket");
    // ...then only the credentials check: connected, `nobody` is answered with nothing.
    chmod(&sock(&state), 0o666);
    let got = foreign_takeover(&sock(&state));
    let words: Vec<&str> = got.split_whitespace().collect();
    assert!(matches!(words.as_slice(), ["pid", _, "bytes", "0", "fds", "0"]), "no answer, no descriptor: {got}");
    let log = p.log();
    assert!(log.contains("refused a takeover from a process of another user"), "{log}");
    assert!(log.contains(&format!("uid={NOBODY}")) && log.contains(&format!("pid={}", words[1])), "uid and pid logged: {log}");
    assert!(log.contains("WARN"), "{log}");
    assert_eq!(refused_total(site.admin()).await, 1.0);

    // The proxy serves on: a query through it, its readiness, the same process.
    let client = connect(site.listen(), &c.options.password).await;
    assert_eq!(client.query_one("select 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
    assert_eq!(get(site.admin(), "/ready").await.status, 200);
    assert!(p.alive());
    assert!(!log.contains("handing over"), "{log}");

    // Its own user still takes over: the control socket kept listening.
    let mut p2 = site.start("p2");
    let code = p.exit(LIMIT).await;
    assert!(code.success(), "the old process hands over and exits 0: {code}");
    p2.ready(LIMIT).await;
    let s = get(site.admin(), "/failover/status").await.json();
    assert_eq!(s["config"]["pid"], p2.pid(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_sockets_from_its_own_user_only() {
    as_root();
    let mut site = Site::new();
    chmod(site.path(), 0o755);
    let state = site.state();
    std::fs::create_dir(&state).unwrap();
    chown(&state, NOBODY);
    chmod(&state, 0o700);
    site.write(&no_backend().state_dir(&state));
    chmod(&site.config_path(), 0o644);
    // An impostor of another user (root here) listens on the control socket of `nobody`'s
    // state directory and records whatever a new process would tell it.
    let mut impostor = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import os, socket, sys\n\
             s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666); s.listen(1); s.settimeout(30)\n\
             print('listening', flush=True)\n\
             c, _ = s.accept(); c.settimeout(20)\n\
             print('received', repr(c.recv(256)), flush=True)",
        ])
        .arg(sock(&state))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(impostor.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    let mut p = site.launch("nobody").run_as("nobody").start();
    let code = p.exit(LIMIT).await;
    let log = p.log();
    assert_eq!(code.code(), Some(1), "{log}");
    assert!(
        log.contains("runs as uid 0") && log.contains("not as this process's user (uid 65534)") && log.contains("refusing to take sockets from it"),
        "{log}"
    );
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "received b''", "the impostor was told nothing");
    assert!(impostor.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_others_may_write_to_is_refused_at_start_check_and_takeover() {
    as_root();
    let mut site = Site::new();
    let state = site.state();
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o777);
    site.write(&no_backend().state_dir(&state));
    let cfg = site.config_path();
    let cfg = cfg.to_str().unwrap();

    let out = binary::run(&["--config", cfg, "--check"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let why = format!("state_dir {}: is writable by its group and every other user (mode 0777)", state.display());
    assert!(err.contains(&why) && err.contains("chmod 700"), "{err}");

    let mut p = site.start("shared");
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    assert!(p.log().contains(&why), "{}", p.log());
    assert!(!sock(&state).exists(), "refused before the control socket is touched");
    assert_eq!(mode(&state), 0o777, "an existing directory is never changed");

    // Another user's directory, however private, is refused too.
    chown(&state, NOBODY);
    chmod(&state, 0o700);
    let mut p = site.start("foreign-owner");
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    assert!(p.log().contains(&format!("is owned by uid {NOBODY}, but pgfailover runs as uid 0")), "{}", p.log());

    // A state directory loosened while a proxy runs stops the process that would take
    // over (the check runs on that path too) before it asks for anything; the running
    // proxy serves on.
    chown(&state, 0);
    let mut running = site.start("running");
    running.live(LIMIT).await;
    chmod(&state, 0o770);
    let mut taker = site.start("taker");
    assert_eq!(taker.exit(LIMIT).await.code(), Some(1));
    assert!(taker.log().contains("is writable by its group (mode 0770)"), "{}", taker.log());
    assert!(running.alive());
    assert_eq!(get(site.admin(), "/health").await.status, 200);
    assert!(!running.log().contains("handing over"), "{}", running.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_others_can_read_are_reported_at_check_start_and_reload() {
    as_root();
    let mut site = Site::new();
    let dir = site.path().to_path_buf();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, mode);
        p
    };
    let token = write("admin-token", "token-value-1\n", 0o644);
    let private = write("db-password", "private-value\n", 0o600);
    // `nobody`'s file, however private: that user can change the password pgfailover uses.
    let foreign = write("foreign-password", "foreign-value\n", 0o600);
    chown(&foreign, NOBODY);
    // The TLS key under termination, left readable by everyone (as `openssl` may leave it).
    let pki = certs::Pki::new("security");
    let leaf = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    chmod(&leaf.key, 0o644);
    let cfg = no_backend()
        .set("", "admin_token_file", token.to_str().unwrap())
        .set("", "admin_read_token", "inline-read-value")
        .set("primary", "password_file", private.to_str().unwrap())
        .set("tls", "mode", "terminate")
        .set("tls", "cert_file", leaf.chain.to_str().unwrap())
        .set("tls", "key_file", leaf.key.to_str().unwrap());
    site.write(&cfg);
    chmod(&site.config_path(), 0o644);
    let env = [("DB_PASSWORD_FILE", foreign.to_str().unwrap())];
    let config = site.config_path();

    let out = binary::run(&[std::ffi::OsStr::new("--config"), config.as_os_str(), std::ffi::OsStr::new("--check")], &env);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a warning, not a refusal: {stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    let expected = [
        format!("{0} (it holds admin_read_token): {0}: every other user can read it (mode 0644", config.display()),
        format!("{}: admin_token_file: {}: every other user can read it (mode 0644", config.display(), token.display()),
        format!("environment: DB_PASSWORD_FILE: {}: belongs to another user (uid {NOBODY}), who can change it (mode 0600", foreign.display()),
        format!("{}: tls.key_file: {}: every other user can read it (mode 0644", config.display(), leaf.key.display()),
    ];
    for e in &expected {
        assert!(stderr.contains(&format!("pgfailover: warning: {e}")), "{e:?} not in {stderr}");
    }
    assert!(!stderr.contains(&private.display().to_string()), "a private file is not reported: {stderr}");
    for secret in ["token-value-1", "inline-read-value", "private-value", "foreign-value"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed");
    }

    let mut p = site.launch("p").env("DB_PASSWORD_FILE", &foreign).start();
    p.live(LIMIT).await;
    let log = p.log();
    for e in &expected {
        assert!(log.lines().any(|l| l.contains("WARN") && l.contains(e.as_str())), "{e:?} not logged at WARN: {log}");
    }

    // Fixed on disk, then a reload: reported as they are now.
    chmod(&token, 0o600);
    chmod(&leaf.key, 0o600);
    chown(&foreign, 0);
    chmod(&site.config_path(), 0o600);
    let before = p.log().len();
    p.signal(binary::Signal::Hup);
    let reloaded = eventually(LIMIT, "the reload", || async {
        let log = p.log();
        log[before..].contains("configuration reloaded").then(|| log[before..].to_string())
    })
    .await;
    assert!(!reloaded.contains("holds a password"), "nothing left to report: {reloaded}");
    // And loosened again: the next reload reports it.
    chmod(&token, 0o640);
    chown(&token, NOBODY);
    let before = p.log().len();
    p.signal(binary::Signal::Hup);
    let reloaded = eventually(LIMIT, "the second reload", || async {
        let log = p.log();
        log[before..].contains("configuration reloaded").then(|| log[before..].to_string())
    })
    .await;
    assert!(
        reloaded
            .contains(&format!("admin_token_file: {}: belongs to another user (uid {NOBODY}), who can change it and its group can read it", token.display())),
        "{reloaded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_read_token_guards_what_the_read_endpoints_show() {
    as_root();
    let mut site = Site::new();
    let read_file = site.path().join("read-token");
    std::fs::write(&read_file, "read-1\n").unwrap();
    chmod(&read_file, 0o600);
    let cfg = no_backend().admin_token("admin-1").set("", "admin_read_token_file", read_file.to_str().unwrap());
    site.write(&cfg);
    let a = site.admin();
    let mut p = site.start("p");
    p.live(LIMIT).await;
    let call = |path: &'static str, token: Option<&'static str>| async move {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|h| vec![("Authorization", h)]).unwrap_or_default();
        http(a, "GET", path, &headers, b"").await
    };

    let guarded = ["/failover/status", "/failover/metrics", "/failover/health", "/failover/history", "/metrics"];
    for path in guarded {
        let r = call(path, None).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains("admin read token"), "{path}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"pgfailover\""), "{path}");
        assert_eq!(call(path, Some("wrong")).await.status, 401, "{path}");
        assert_eq!(call(path, Some("read-1")).await.status, 200, "{path}");
        assert_eq!(call(path, Some("admin-1")).await.status, 200, "{path}: the admin token reads too");
    }
    // What a 401 hides: the backend's address and its last error are in the 200 only.
    assert!(!call("/failover/health", None).await.body.contains("127.0.0.1"));
    assert!(call("/failover/health", Some("read-1")).await.body.contains("127.0.0.1"));
    // Load balancers and orchestrators need no token.
    assert_eq!(call("/health", None).await.status, 200);
    assert_eq!(call("/ready", None).await.status, 503, "no primary: 503, not 401");
    assert_eq!(call("/ready/ro", None).await.status, 404, "no read-only port: 404, not 401");
    // The read token acts on nothing.
    let r = post(a, "/failover/check-health", Some("read-1"), "").await;
    assert_eq!(r.status, 401, "{}", r.body);

    // `pgfailover status` reads with the configuration's token, or the variable's.
    let config = site.config_path();
    let url = format!("http://{a}");
    let with_config = binary::run(&[std::ffi::OsStr::new("--config"), config.as_os_str(), std::ffi::OsStr::new("status")], &[]);
    assert!(with_config.status.success(), "{}", String::from_utf8_lossy(&with_config.stderr));
    assert!(String::from_utf8_lossy(&with_config.stdout).contains("pg-a"));
    let bare = binary::run(&["status", "--admin", &url], &[]);
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success() && err.contains("answered 401"), "{err}");
    assert!(binary::run(&["status", "--admin", &url], &[("PGFAILOVER_ADMIN_READ_TOKEN", "read-1")]).status.success());

    // A reload rotates the read token and opens /metrics by its own key.
    std::fs::write(&read_file, "read-2\n").unwrap();
    site.write(&cfg.clone().set("", "admin_metrics_open", true));
    p.signal(binary::Signal::Hup);
    eventually(LIMIT, "the reload applied", || async { (call("/metrics", None).await.status == 200).then_some(()) }).await;
    assert!(call("/metrics", None).await.body.contains("pgfailover_takeover_refused_total 0"));
    assert_eq!(call("/failover/status", Some("read-1")).await.status, 401, "the old read token is gone");
    assert_eq!(call("/failover/status", Some("read-2")).await.status, 200);
    assert_eq!(call("/failover/status", None).await.status, 401, "only /metrics opened");
}
