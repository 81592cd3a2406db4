use super::*;
use std::collections::HashMap;
use std::io::Write;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load(text: &str, env: &[(&str, &str)], flags: &Overrides) -> Result<Config, ConfigError> {
    let f = file_with(text);
    Config::load(Some(f.path()), &env_of(env), flags)
}

const FULL: &str = r#"
listen = "127.0.0.1:7000"
admin_listen = "127.0.0.1:7001"

[health]
interval = "250ms"
timeout = "500ms"
failure_threshold = 5

[failover]
promote = "never"
hold_timeout = "3s"
max_lag_bytes = 1024

[primary]
name = "pg-a"
host = "10.0.0.1"
port = 5432
database = "app"
user = "monitor"
password = "s3cret"
ssl = true

[[standbys]]
name = "pg-b"
host = "10.0.0.2"
port = 5433
"#;

#[test]
fn defaults_without_file() {
    let c = Config::load(None, &env_of(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:6432");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9432");
    assert_eq!(c.health.interval, Duration::from_secs(1));
    assert_eq!(c.health.failure_threshold, 3);
    assert_eq!(c.failover.promote, PromoteMode::Auto);
    assert_eq!(c.failover.hold_timeout, Duration::from_secs(5));
    assert_eq!(c.failover.max_lag_bytes, 16_777_216);
    assert!(c.standbys.is_empty());
}

#[test]
fn file_values_and_standby_inheritance() {
    let c = load(FULL, &[], &Overrides::default()).unwrap();
    assert_eq!(c.listen.port(), 7000);
    assert_eq!(c.health.interval, Duration::from_millis(250));
    assert_eq!(c.health.timeout, Duration::from_millis(500));
    assert_eq!(c.health.failure_threshold, 5);
    assert_eq!(c.failover.promote, PromoteMode::Never);
    assert_eq!(c.failover.max_lag_bytes, 1024);
    assert_eq!(c.primary.name, "pg-a");
    let s = &c.standbys[0];
    assert_eq!((s.name.as_str(), s.host.as_str(), s.port), ("pg-b", "10.0.0.2", 5433));
    // Credentials default to the primary's.
    assert_eq!((s.database.as_str(), s.user.as_str()), ("app", "monitor"));
    assert_eq!(s.password.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(s.ssl);
}

#[test]
fn env_beats_file_and_flags_beat_env() {
    let env = [
        ("DB_HOST", "db.internal"),
        ("DB_PORT", "6543"),
        ("DB_PASSWORD", "fromenv"),
        ("FAILOVER_HEALTH_CHECK_INTERVAL", "10000"),
        ("PGFAILOVER_LISTEN", "127.0.0.1:7100"),
        ("PGFAILOVER_ADMIN_TOKEN", "tok"),
    ];
    let c = load(FULL, &env, &Overrides::default()).unwrap();
    assert_eq!(c.primary.host, "db.internal");
    assert_eq!(c.primary.port, 6543);
    assert_eq!(c.primary.password.as_ref().map(Secret::expose), Some("fromenv"));
    assert_eq!(c.standbys[0].password.as_ref().map(Secret::expose), Some("fromenv"));
    assert_eq!(c.health.interval, Duration::from_secs(10));
    assert_eq!(c.listen.port(), 7100);
    assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("tok"));

    let flags = Overrides { listen: Some("127.0.0.1:7200".parse().unwrap()), promote: Some("auto".into()), ..Default::default() };
    let c = load(FULL, &env, &flags).unwrap();
    assert_eq!(c.listen.port(), 7200);
    assert_eq!(c.failover.promote, PromoteMode::Auto);
}

#[test]
fn standbys_from_env_and_flags() {
    let env = [("PGFAILOVER_STANDBYS", "pg-x=127.0.0.1:6001, [::1]:6002")];
    let c = load(FULL, &env, &Overrides::default()).unwrap();
    assert_eq!(c.standbys.len(), 2);
    assert_eq!((c.standbys[0].name.as_str(), c.standbys[0].port), ("pg-x", 6001));
    assert_eq!((c.standbys[1].name.as_str(), c.standbys[1].host.as_str()), ("standby-1", "::1"));
    assert_eq!(c.standbys[1].address(), "[::1]:6002");
    let flags = Overrides { standbys: vec!["pg-y=h:7".into()], ..Default::default() };
    let c = load(FULL, &env, &flags).unwrap();
    assert_eq!(c.standbys.len(), 1);
    assert_eq!(c.standbys[0].name, "pg-y");
}

fn err(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env, &Overrides::default()).unwrap_err().to_string()
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = err("[health]\nintervl = \"1s\"\n", &[]);
    assert!(e.contains("health.intervl") || e.contains("health"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    assert!(!e.contains('\n'));
    let e = err("bogus = 1\n", &[]);
    assert!(e.contains("unknown field `bogus`"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let e = err("[health]\ninterval = \"soon\"\n", &[]);
    assert!(e.contains("health.interval") && e.contains("expected a duration"), "{e}");
    let e = err("[health]\ninterval = \"100\"\n", &[]);
    assert!(e.contains("\"100\", expected a duration"), "a bare number has no unit: {e}");
    let e = err("[failover]\npromote = \"sometimes\"\n", &[]);
    assert!(e.contains("failover.promote") && e.contains("auto"), "{e}");
    let e = err("listen = \"nowhere\"\n", &[]);
    assert!(e.starts_with(std::env::temp_dir().to_str().unwrap()) && e.contains("listen"), "{e}");
    let e = err("[primary]\nport = 70000\n", &[]);
    assert!(e.contains("primary.port"), "{e}");
    let e = err("[health]\nfailure_threshold = 0\n", &[]);
    assert!(e.contains("failure_threshold") && e.contains("at least 1"), "{e}");
    let e = err("x = [\n", &[]);
    assert!(e.contains("line"), "{e}");
    let e = err("", &[("DB_PORT", "abc")]);
    assert!(e.contains("environment: DB_PORT"), "{e}");
    let e = err("", &[("FAILOVER_HEALTH_CHECK_INTERVAL", "1s")]);
    assert!(e.contains("FAILOVER_HEALTH_CHECK_INTERVAL"), "{e}");
    let e = err("[[standbys]]\nname = \"primary\"\n", &[]);
    assert!(e.contains("used by two backends"), "{e}");
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let e = Config::load(Some(Path::new("/nonexistent/proxy.toml")), &env_of(&[]), &Overrides::default()).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/proxy.toml: cannot read"), "{e}");
}

#[test]
fn password_file_and_secrets_never_debug_print() {
    let pw = file_with("filepw\n");
    let text = format!("[primary]\npassword_file = {:?}\n", pw.path());
    let c = load(&text, &[], &Overrides::default()).unwrap();
    assert_eq!(c.primary.password.as_ref().map(Secret::expose), Some("filepw"));
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("filepw"), "{dbg}");
}

#[test]
fn repo_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let c = Config::load(Some(&path), &env_of(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.primary.name, "pg-a");
    assert_eq!(c.standbys[0].name, "pg-b");
}

#[test]
fn coordination_from_file_env_and_flags() {
    let none = load("", &[], &Overrides::default()).unwrap();
    assert_eq!(none.coordination, None, "without [coordination], today's behaviour");
    let text = "[coordination]\netcd_endpoints = [\"http://10.0.0.1:2379\", \"10.0.0.2:2379\"]\ncluster = \"orders\"\nname = \"p1\"\nlease_ttl = \"5s\"\nuser = \"pgf\"\npassword = \"etcdpw\"\n\n[failover]\nquorum = \"leader\"\n";
    let c = load(text, &[], &Overrides::default()).unwrap();
    let co = c.coordination.as_ref().unwrap();
    assert_eq!(co.etcd_endpoints, ["http://10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!((co.cluster.as_str(), co.name.as_str(), co.lease_ttl), ("orders", "p1", Duration::from_secs(5)));
    assert_eq!(c.failover.quorum, crate::config::Quorum::Leader);
    assert!(!format!("{c:?}").contains("etcdpw"), "the etcd password is never printed");

    // The endpoints variable alone turns coordination on, with the defaults for the rest.
    let c = load("", &[("PGFAILOVER_ETCD_ENDPOINTS", "http://e1:2379, http://e2:2379"), ("PGFAILOVER_NAME", "px")], &Overrides::default()).unwrap();
    let co = c.coordination.unwrap();
    assert_eq!(co.etcd_endpoints, ["http://e1:2379", "http://e2:2379"]);
    assert_eq!((co.cluster.as_str(), co.name.as_str(), co.lease_ttl), ("main", "px", Duration::from_secs(3)));
    assert_eq!(c.failover.quorum, crate::config::Quorum::Majority);

    // Flags beat the environment, which beats the file.
    let flags = Overrides { etcd_endpoints: vec!["http://f:2379".into()], cluster: Some("fc".into()), ..Default::default() };
    let c = load(text, &[("PGFAILOVER_CLUSTER", "ec"), ("PGFAILOVER_LEASE_TTL", "4s")], &flags).unwrap();
    let co = c.coordination.unwrap();
    assert_eq!((co.etcd_endpoints[0].as_str(), co.cluster.as_str(), co.lease_ttl), ("http://f:2379", "fc", Duration::from_secs(4)));
}

#[test]
fn bad_coordination_values_are_named() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        ("[coordination]\netcd_endpoints = []\n", &[], &["coordination.etcd_endpoints", "at least one"]),
        ("[coordination]\netcd_endpoints = [\"ftp://e:2379\"]\n", &[], &["coordination.etcd_endpoints", "http or https"]),
        ("[coordination]\netcd_endpoints = [\"http://e\"]\n", &[], &["coordination.etcd_endpoints", "etcd client URL"]),
        ("[coordination]\ncluster = \"a/b\"\n", &[], &["coordination.cluster", "without \"/\""]),
        ("[coordination]\nlease_ttl = \"500ms\"\n", &[], &["coordination.lease_ttl", "at least 2s"]),
        ("[coordination]\nca_file = \"/etc/hostname\"\n", &[], &["coordination.ca_file", "https"]),
        ("[coordination]\netcd_endpoints = [\"https://e:2379\"]\ncert_file = \"/etc/hostname\"\n", &[], &["coordination.cert_file", "key_file"]),
        ("[coordination]\netcd_endpoints = [\"https://e:2379\"]\nca_file = \"/nonexistent/ca.pem\"\n", &[], &["coordination.ca_file", "/nonexistent/ca.pem"]),
        ("[coordination]\npassword = \"x\"\n", &[], &["coordination.user", "needs a user"]),
        ("[coordination]\nwhat = 1\n", &[], &["what"]),
        ("[failover]\nquorum = \"most\"\n", &[], &["failover.quorum"]),
        ("", &[("PGFAILOVER_ETCD_ENDPOINTS", "http://e:2379"), ("PGFAILOVER_LEASE_TTL", "1s")], &["PGFAILOVER_LEASE_TTL", "at least 2s"]),
        ("", &[("PGFAILOVER_QUORUM", "all")], &["PGFAILOVER_QUORUM"]),
    ];
    for (text, env, needles) in cases {
        let e = err(text, env);
        for n in *needles {
            assert!(e.contains(n), "{text:?} {env:?}: {e:?} lacks {n:?}");
        }
    }
}

#[test]
fn the_read_token_and_the_metrics_switch_from_file_and_env() {
    let c = load("admin_read_token = \"r1\"\n", &[], &Overrides::default()).unwrap();
    assert_eq!(c.admin_read_token.as_ref().map(Secret::expose), Some("r1"));
    assert!(!c.admin_metrics_open, "with a read token, /metrics is closed unless opened");
    let tok = file_with("from-file\n");
    let text = format!("admin_read_token_file = {:?}\nadmin_metrics_open = true\n", tok.path());
    let c = load(&text, &[], &Overrides::default()).unwrap();
    assert_eq!(c.admin_read_token.as_ref().map(Secret::expose), Some("from-file"));
    assert!(c.admin_metrics_open);
    let c = load(&text, &[("PGFAILOVER_ADMIN_READ_TOKEN", "r2"), ("PGFAILOVER_ADMIN_METRICS_OPEN", "false")], &Overrides::default()).unwrap();
    assert_eq!(c.admin_read_token.as_ref().map(Secret::expose), Some("r2"));
    assert!(!c.admin_metrics_open);
    assert!(!format!("{c:?}").contains("r2"));
}

#[test]
fn an_empty_token_is_refused_not_taken_for_none() {
    let empty = file_with("\n");
    let e = err(&format!("admin_token_file = {:?}\n", empty.path()), &[]);
    assert!(e.contains("admin_token: is empty"), "{e}");
    let e = err("", &[("PGFAILOVER_ADMIN_READ_TOKEN_FILE", empty.path().to_str().unwrap())]);
    assert!(e.starts_with("environment: PGFAILOVER_ADMIN_READ_TOKEN_FILE: is empty"), "{e}");
    let e = err("", &[("PGFAILOVER_ADMIN_TOKEN", "")]);
    assert!(e.starts_with("environment: PGFAILOVER_ADMIN_TOKEN: is empty"), "{e}");
}

#[test]
fn every_file_a_secret_comes_from_is_remembered_with_its_key() {
    let (a, b, d) = (file_with("t\n"), file_with("pw\n"), file_with("dbpw\n"));
    let text = format!("admin_token_file = {:?}\n[coordination]\nuser = \"u\"\npassword_file = {:?}\n[primary]\npassword = \"inline\"\n", a.path(), b.path());
    let f = file_with(&text);
    let label = f.path().display().to_string();
    let c = Config::load(Some(f.path()), &env_of(&[("DB_PASSWORD_FILE", d.path().to_str().unwrap())]), &Overrides::default()).unwrap();
    let got: Vec<(String, &Path)> = c.secret_files.iter().map(|s| (s.key.clone(), s.path.as_path())).collect();
    assert_eq!(
        got,
        vec![
            (format!("{label} (it holds primary.password)"), f.path()),
            (format!("{label}: coordination.password_file"), b.path()),
            (format!("{label}: admin_token_file"), a.path()),
            ("environment: DB_PASSWORD_FILE".to_string(), d.path()),
        ]
    );
    // Temporary files are 0600: nothing to report.
    assert!(c.loose_secret_files().is_empty(), "{:?}", c.loose_secret_files());
    // A configuration without any secret in it is no secret file.
    let c = load("log_level = \"info\"\n", &[], &Overrides::default()).unwrap();
    assert!(c.secret_files.is_empty());
}

#[test]
fn tls_table_environment_and_checks() {
    let (cert, key) = (file_with("cert\n"), file_with("key\n"));
    let text = format!(
        "[tls]\nmode = \"terminate\"\ncert_file = {:?}\nkey_file = {:?}\nrequire_client_tls = true\nserver_sslmode = \"verify-full\"\nserver_ca_file = {:?}\n[primary]\nhost = \"db\"\n[[standbys]]\nssl_root_cert = {:?}\n",
        cert.path(),
        key.path(),
        cert.path(),
        key.path()
    );
    let c = load(&text, &[], &Overrides::default()).unwrap();
    assert_eq!((c.tls.mode, c.tls.server_sslmode, c.tls.require_client_tls), (TlsMode::Terminate, ServerSslMode::VerifyFull, true));
    // Folded into the backends: the standby's own CA wins.
    assert_eq!((c.primary.sslmode, c.primary.ca_file.as_deref()), (ServerSslMode::VerifyFull, Some(cert.path())));
    assert_eq!(c.standbys[0].ca_file.as_deref(), Some(key.path()));
    // Folding again (the server does, for configurations built in code) changes nothing.
    let mut again = c.clone();
    again.apply_server_tls();
    assert_eq!(again, c);
    assert!(c.secret_files.iter().any(|s| s.key.ends_with("tls.key_file") && s.path == key.path()), "the key is a secret file");
    // The environment; `ssl = true` (DB_SSL) raises the floor over a lower server_sslmode.
    let c = Config::load(None, &env_of(&[("PGFAILOVER_SERVER_SSLMODE", "disable"), ("DB_SSL", "true")]), &Overrides::default()).unwrap();
    assert_eq!((c.tls.server_sslmode, c.primary.sslmode), (ServerSslMode::Disable, ServerSslMode::Require));
    assert_eq!(Config::load(None, &env_of(&[]), &Overrides::default()).unwrap().primary.sslmode, ServerSslMode::Prefer, "prefer by default");
    let e = |text: &str, env: &[(&str, &str)]| load(text, env, &Overrides::default()).unwrap_err().to_string();
    assert!(e("[tls]\nmode = \"terminate\"\n", &[]).contains("tls.cert_file: is required"));
    assert!(e("[tls]\nmode = \"tls\"\n", &[]).contains("tls.mode"));
    assert!(e("[tls]\nserver_sslmode = \"allow\"\n", &[]).contains("tls.server_sslmode"));
    assert!(e("[tls]\nrequire_client_tls = true\n", &[]).contains("applies only with mode = \"terminate\""));
    assert!(e("[tls]\nserver_sslmode = \"verify-ca\"\n", &[]).contains("needs a CA"));
    assert!(e("[tls]\nserver_ca_file = \"/nonexistent/ca.crt\"\n", &[]).contains("/nonexistent/ca.crt"));
    assert!(e("", &[("PGFAILOVER_TLS_MODE", "both")]).starts_with("environment: PGFAILOVER_TLS_MODE"));
}

#[test]
fn read_listeners_and_min_lsn_wait() {
    let text = "[read]\nmin_lsn_wait = \"250ms\"\n[[read.listeners]]\nlisten = \"127.0.0.1:7433\"\nmax_lag_bytes = 0\n[[read.listeners]]\nlisten = \"127.0.0.1:7434\"\nmax_lag = \"1h\"\n";
    let c = load(text, &[], &Overrides::default()).unwrap();
    assert_eq!(c.read.min_lsn_wait, Duration::from_millis(250));
    assert_eq!(c.read.listeners.len(), 2);
    assert_eq!((c.read.listeners[0].max_lag_bytes, c.read.listeners[0].max_lag), (Some(0), None));
    assert_eq!(c.read.listeners[1].max_lag, Some(Duration::from_secs(3600)));
    assert_eq!(Config::default().read.min_lsn_wait, Duration::from_secs(1));
    let e = load("[[read.listeners]]\nlisten = \"127.0.0.1:6432\"\n", &[], &Overrides::default()).unwrap_err().to_string();
    assert!(e.contains("read.listeners[0].listen") && e.contains("already another port's address"), "{e}");
    let e = load("[[read.listeners]]\nlisten = \"x\"\n", &[], &Overrides::default()).unwrap_err().to_string();
    assert!(e.contains("read.listeners[0].listen"), "{e}");
}

const POLICY: &str = r#"
[failover]
synchronous = "strict"
synchronous_count = 2
zone_policy = "same_only"

[primary]
name = "pg-a"
zone = "eu-west-1a"

[[standbys]]
name = "pg-b"
port = 5433
zone = "eu-west-1a"
priority = 10

[[standbys]]
name = "pg-c"
port = 5434
zone = "eu-west-1b"

[[standbys]]
name = "pg-d"
port = 5435
nofailover = true
"#;

#[test]
fn synchronous_mode_and_the_promotion_policy_from_file_and_env() {
    let c = load(POLICY, &[], &Overrides::default()).unwrap();
    assert_eq!((c.failover.synchronous, c.failover.synchronous_count, c.failover.zone_policy), (SyncMode::Strict, 2, ZonePolicy::SameOnly));
    assert_eq!(c.primary.policy, PromotionPolicy { priority: 1, nofailover: false, zone: Some("eu-west-1a".into()) });
    assert_eq!(c.standbys[0].policy.priority, 10);
    assert_eq!(c.standbys[2].policy, PromotionPolicy { nofailover: true, ..Default::default() }, "a standby does not inherit the primary's zone");
    let d = Config::load(None, &env_of(&[]), &Overrides::default()).unwrap();
    assert_eq!((d.failover.synchronous, d.failover.synchronous_count, d.failover.zone_policy), (SyncMode::Off, 1, ZonePolicy::PreferSame));
    let env = [("PGFAILOVER_SYNCHRONOUS", "on"), ("PGFAILOVER_SYNCHRONOUS_COUNT", "1"), ("PGFAILOVER_ZONE_POLICY", "any")];
    let c = load(POLICY, &env, &Overrides::default()).unwrap();
    assert_eq!((c.failover.synchronous, c.failover.synchronous_count, c.failover.zone_policy), (SyncMode::On, 1, ZonePolicy::Any));
    // The policy is not what identifies a server: a reload that changes only it applies live.
    let mut other = c.clone();
    other.standbys[0].policy.priority = 3;
    assert_eq!(c.servers(), other.servers());
    assert_ne!(c.backends(), other.backends());
}

#[test]
fn bad_policy_values_are_named() {
    let e = err("[failover]\nsynchronous = \"yes\"\n", &[]);
    assert!(e.contains("failover.synchronous") && e.contains("\"off\", \"on\", \"strict\""), "{e}");
    let e = err("[failover]\nsynchronous = true\n", &[]);
    assert!(e.contains("failover.synchronous"), "{e}");
    let e = err("[failover]\nzone_policy = \"nearby\"\n", &[]);
    assert!(e.contains("failover.zone_policy") && e.contains("prefer_same"), "{e}");
    let e = err("[failover]\nsynchronous_count = 0\n", &[]);
    assert!(e.contains("failover.synchronous_count") && e.contains("at least 1"), "{e}");
    let e = err("[[standbys]]\nname = \"b\"\npriority = 1001\n", &[]);
    assert!(e.contains("standbys[0].priority") && e.contains("0 to 1000"), "{e}");
    let e = err("[[standbys]]\nname = \"b\"\npriority = -1\n", &[]);
    assert!(e.contains("standbys[0].priority"), "{e}");
    let e = err("[primary]\nzone = \" \"\n", &[]);
    assert!(e.contains("primary.zone") && e.contains("empty"), "{e}");
    let e = err("[[standbys]]\nname = \"b\"\nnofailover = \"yes\"\n", &[]);
    assert!(e.contains("standbys[0].nofailover"), "{e}");
    // Synchronous mode: pgfailover must promote, and some standby must be promotable.
    let e = err("[failover]\nsynchronous = \"on\"\npromote = \"never\"\n[[standbys]]\nname = \"b\"\n", &[]);
    assert!(e.contains("failover.synchronous") && e.contains("promote"), "{e}");
    let e = err("[failover]\nsynchronous = \"on\"\n[[standbys]]\nname = \"b\"\nnofailover = true\n", &[]);
    assert!(e.contains("failover.synchronous") && e.contains("nofailover"), "{e}");
    let e = err("[failover]\nsynchronous = \"on\"\nsynchronous_count = 2\n[[standbys]]\nname = \"b\"\n", &[]);
    assert!(e.contains("failover.synchronous_count") && e.contains("more than the 1"), "{e}");
    let e = err("[failover]\nsynchronous = \"on\"\n[[standbys]]\nname = \"bé\"\n", &[]);
    assert!(e.contains("standbys[0].name") && e.contains("application_name"), "{e}");
    let e = err("", &[("PGFAILOVER_SYNCHRONOUS", "sometimes")]);
    assert!(e.contains("environment: PGFAILOVER_SYNCHRONOUS"), "{e}");
    let e = err("[[standbys]]\nname = \"b\"\n", &[("PGFAILOVER_SYNCHRONOUS", "on"), ("PGFAILOVER_SYNCHRONOUS_COUNT", "3")]);
    assert!(e.contains("environment: PGFAILOVER_SYNCHRONOUS_COUNT"), "{e}");
}
