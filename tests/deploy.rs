//! Deployment files stay true to the product: every metric a dashboard or alert uses is
//! exported by a running proxy, the shipped configs load, image names agree.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use pgfailover::config::{Config, Overrides};

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Metric names (ours and the seed's) mentioned in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut word = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            word.push(ch);
        } else {
            if word.starts_with("failover_") || word.starts_with("pgfailover_") {
                into.insert(word.clone());
            }
            word.clear();
        }
    }
}

fn used_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let alerts: serde_yaml::Value = serde_yaml::from_str(&repo("deploy/prometheus/alerts.yml")).unwrap();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            metric_names(rule["expr"].as_str().unwrap(), &mut names);
        }
    }
    let dash: serde_json::Value = serde_json::from_str(&repo("deploy/grafana/dashboards/pgfailover.json")).unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            metric_names(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let used = used_metrics();
    for seed in [
        "failover_state",
        "failover_total",
        "failover_primary_healthy",
        "failover_standby_healthy",
        "failover_recoveries_total",
        "failover_health_check_failures_total",
    ] {
        assert!(used.contains(seed), "dashboards/alerts do not use {seed}");
    }
    let c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    wait_status(&p, Duration::from_secs(20), "healthy", |s| s.current_primary.is_some()).await;
    // One session and one histogram sample, so every series has been written at least once.
    connect(p.client_addr, &c.options.password).await.batch_execute("select 1").await.unwrap();
    let text = get(p.admin_addr, "/metrics").await.body;
    let exported: BTreeSet<String> =
        text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).filter_map(|l| l.split(['{', ' ']).next()).map(str::to_string).collect();
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "used by deploy/ but not exported: {missing:?}\nexported: {exported:?}");
}

fn load_toml(text: &str) -> Config {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    let env = |k: &str| (k == "DB_PASSWORD").then(|| "x".to_string());
    Config::load(Some(f.path()), &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The Kubernetes ConfigMap's `proxy.toml`, its certificate files (the mounted TLS Secret's)
/// stood in for by files here: their contents are `tests/tls*.rs`'s business.
fn load_k8s_toml(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(f), "stand-in\n").unwrap();
    }
    load_toml(&text.replace("/run/secrets/pgfailover-tls/", &format!("{}/", dir.path().display())))
}

fn k8s_docs() -> Vec<serde_yaml::Value> {
    let mut docs = Vec::new();
    for file in ["deploy/kubernetes/pgfailover.yaml", "deploy/kubernetes/servicemonitor.yaml"] {
        for d in serde_yaml::Deserializer::from_str(&repo(file)) {
            docs.push(serde::Deserialize::deserialize(d).unwrap());
        }
    }
    docs
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind}/{name}"))
}

#[test]
fn shipped_configs_load_and_image_names_agree() {
    let compose = load_toml(&repo("deploy/compose/proxy.toml"));
    assert_eq!((compose.primary.host.as_str(), compose.standbys[0].host.as_str()), ("pg-primary", "pg-standby"));
    let docs = k8s_docs();
    let cm = find(&docs, "ConfigMap", "pgfailover-config");
    let k8s_text = cm["data"]["proxy.toml"].as_str().unwrap();
    let k8s = load_k8s_toml(k8s_text);
    // The certificate comes from the kubernetes.io/tls Secret, mounted where [tls] reads it.
    assert_eq!(k8s.tls.mode, pgfailover::config::TlsMode::Terminate);
    let secret = find(&docs, "Secret", "pgfailover-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let pod = &find(&docs, "Deployment", "pgfailover")["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["secret"]["secretName"] == "pgfailover-tls").expect("a volume of the TLS Secret");
    let mount = pod["containers"][0]["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == volume["name"]).expect("mounted");
    for key in ["cert_file = \"", "key_file = \""] {
        let path = k8s_text.split(key).nth(1).and_then(|r| r.split('"').next()).expect("a TLS file in the ConfigMap");
        assert!(path.starts_with(mount["mountPath"].as_str().unwrap()), "{path} is in the Secret's mount");
        let file = path.rsplit('/').next().unwrap();
        assert!(secret["stringData"][file].is_string(), "{file} is a key of the Secret");
    }
    assert_eq!(k8s.admin_listen.port(), 9432);
    // Several replicas, coordinated; a drain may evict one of them.
    let co = k8s.coordination.as_ref().expect("the Kubernetes replicas coordinate through etcd");
    assert_eq!(co.etcd_endpoints.len(), 3);
    let replicas = find(&docs, "Deployment", "pgfailover")["spec"]["replicas"].as_u64().unwrap();
    assert!((2..=3).contains(&replicas), "{replicas} replicas");
    let pdb = find(&docs, "PodDisruptionBudget", "pgfailover");
    assert!(pdb["spec"]["maxUnavailable"].as_u64().is_some_and(|n| n >= 1 && n < replicas), "the PDB lets a drain evict a replica");

    let dockerfile = repo("Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| l.split("org.opencontainers.image.ref.name=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("image name label in the Dockerfile");
    assert_eq!(image, format!("pgfailover:{}", env!("CARGO_PKG_VERSION")));
    let compose_file: serde_yaml::Value = serde_yaml::from_str(&repo("docker-compose.yml")).unwrap();
    assert_eq!(compose_file["services"]["pgfailover"]["image"].as_str(), Some(image));
    // Compose runs etcd and two coordinated proxies.
    let services = &compose_file["services"];
    assert!(services["etcd"]["image"].as_str().is_some_and(|i| i.contains("etcd")));
    assert_eq!(services["pgfailover"]["environment"]["PGFAILOVER_ETCD_ENDPOINTS"], "http://etcd:2379");
    assert!(services["pgfailover-2"].is_mapping(), "a second proxy");
    assert_ne!(services["pgfailover"]["hostname"], services["pgfailover-2"]["hostname"], "the proxies' names differ");
    let deploy = find(&docs, "Deployment", "pgfailover");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"].as_str(), Some(image));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(repo("deploy/systemd/pgfailover.service").contains(image));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"health\""));
}

#[test]
fn service_monitor_selects_the_metrics_service() {
    let docs = k8s_docs();
    let sm = find(&docs, "ServiceMonitor", "pgfailover");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let svc = find(&docs, "Service", "pgfailover-metrics");
    let labels = svc["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "ServiceMonitor selects label {k:?} the Service lacks");
    }
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["path"], "/metrics");
    let ports = svc["spec"]["ports"].as_sequence().unwrap();
    assert!(ports.iter().any(|p| p["name"] == ep["port"]), "endpoint port is not a Service port");
}

/// The compose stack's two bootstrap scripts, run for real against a local primary with the
/// variables the containers get: the primary's init script makes the replication role, slot
/// and pg_hba line; the standby's entrypoint takes a base backup through them; the standby
/// then streams through the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_bootstrap_scripts_make_a_streaming_standby() {
    let mut c = cluster(0).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = format!("{}:{}", c.bindir().display(), std::env::var("PATH").unwrap_or_default());
    let primary = c.nodes[0].clone();
    let sock = c.path().join("sock");
    let run = |script: &str, env: &[(&str, String)]| {
        let out = std::process::Command::new("bash")
            .arg(root.join(script))
            .env("PATH", &path)
            .env("REPLICATION_PASSWORD", "repl-pw")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    };
    run(
        "deploy/compose/primary-init.sh",
        &[
            ("POSTGRES_USER", "postgres".into()),
            ("PGDATA", primary.data.display().to_string()),
            ("PGHOST", sock.display().to_string()),
            ("PGPORT", primary.port.to_string()),
        ],
    );
    // The image's entrypoint restarts the server after its init scripts; a reload does here.
    c.psql(0, "select pg_reload_conf()").unwrap();
    let standby_data = c.path().join("compose-standby");
    run(
        "deploy/compose/standby-entrypoint.sh",
        &[("PGDATA", standby_data.display().to_string()), ("PRIMARY_HOST", "127.0.0.1".into()), ("PRIMARY_PORT", primary.port.to_string())],
    );
    let c = blocking(move || {
        c.start_external("compose-standby", standby_data).unwrap();
        c.wait_streaming(1, Duration::from_secs(30)).unwrap();
        c
    })
    .await;
    assert_eq!(c.psql(0, "select usename from pg_stat_replication").unwrap(), "replicator");
    assert_eq!(c.psql(0, "select active from pg_replication_slots where slot_name = 'standby_slot'").unwrap(), "t");
    assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t");
}

/// Every shipped deployment locks what the README's Security section says it locks: the
/// admin port private (loopback publishing, or a NetworkPolicy and the read token), secrets
/// as files no other user can read, the state directory the service user's alone.
#[test]
fn shipped_deployments_lock_the_admin_port_the_secrets_and_the_state() {
    // systemd: credentials, a private state directory, a umask.
    let unit = repo("deploy/systemd/pgfailover.service");
    for line in [
        "UMask=0077",
        "StateDirectoryMode=0700",
        "LoadCredential=db-password:/etc/pgfailover/db-password",
        "LoadCredential=admin-token:/etc/pgfailover/admin-token",
        "Environment=DB_PASSWORD_FILE=%d/db-password PGFAILOVER_ADMIN_TOKEN_FILE=%d/admin-token",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} not in the systemd unit");
    }

    // Kubernetes: secrets mounted 0400 and read through *_FILE, no secret in a variable.
    let docs = k8s_docs();
    let pod = &find(&docs, "Deployment", "pgfailover")["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["fsGroup"], spec["securityContext"]["runAsGroup"], "fsGroup makes a 0400 Secret 0440 root:<the pod's group>");
    let volumes = spec["volumes"].as_sequence().unwrap();
    let secret_vol = volumes.iter().find(|v| v["secret"]["secretName"] == "pgfailover-secrets").expect("the Secret as a volume");
    assert_eq!(secret_vol["secret"]["defaultMode"].as_u64(), Some(0o400));
    let container = &spec["containers"][0];
    assert!(container["envFrom"].is_null(), "no secret as environment variables");
    let mount = container["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == secret_vol["name"]).expect("mounted");
    let dir = mount["mountPath"].as_str().unwrap();
    let secret = find(&docs, "Secret", "pgfailover-secrets");
    let keys = secret["stringData"].as_mapping().unwrap();
    let env = container["env"].as_sequence().unwrap();
    for var in ["DB_PASSWORD_FILE", "PGFAILOVER_ADMIN_TOKEN_FILE", "PGFAILOVER_ADMIN_READ_TOKEN_FILE"] {
        let value = env.iter().find(|e| e["name"] == var).unwrap_or_else(|| panic!("{var}"))["value"].as_str().unwrap();
        let key = value.strip_prefix(&format!("{dir}/")).unwrap_or_else(|| panic!("{var}={value} is not in {dir}"));
        assert!(keys.contains_key(key), "{var} names {key}, which the Secret lacks");
    }
    // The state directory is one pgfailover creates inside the (world-writable) emptyDir.
    let cm = find(&docs, "ConfigMap", "pgfailover-config");
    let state = load_k8s_toml(cm["data"]["proxy.toml"].as_str().unwrap()).state_dir.expect("a state_dir");
    let state_vol = container["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == "state").unwrap()["mountPath"].as_str().unwrap();
    assert!(state.starts_with(state_vol) && state != Path::new(state_vol), "{} must be below {state_vol}", state.display());
    let dockerfile = repo("Dockerfile");
    assert!(dockerfile.contains(&format!("PGFAILOVER_STATE_DIR={}", state.display())), "the image's variable agrees (it wins over the file)");

    // The admin port: only Prometheus may reach it, with the read token.
    let np = find(&docs, "NetworkPolicy", "pgfailover");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]);
    let rules = np["spec"]["ingress"].as_sequence().unwrap();
    let admin_rules: Vec<_> = rules.iter().filter(|r| r["ports"].as_sequence().unwrap().iter().any(|p| p["port"] == "admin" || p["port"] == 9432)).collect();
    assert!(
        !admin_rules.is_empty() && admin_rules.iter().all(|r| r["from"].as_sequence().is_some_and(|f| !f.is_empty())),
        "the admin port is open to named peers only"
    );
    assert!(rules.iter().all(|r| r["ports"].is_sequence()), "no rule opens every port");
    let sm = find(&docs, "ServiceMonitor", "pgfailover");
    let cred = &sm["spec"]["endpoints"][0]["authorization"]["credentials"];
    assert_eq!(cred["name"], "pgfailover-secrets");
    assert!(keys.contains_key(cred["key"].as_str().unwrap()), "the scrape sends a token the Secret has");

    // docker-compose: admin ports, Prometheus and Grafana on the host's loopback only.
    let compose: serde_yaml::Value = serde_yaml::from_str(&repo("docker-compose.yml")).unwrap();
    for (service, container_port) in [("pgfailover", "9432"), ("pgfailover-2", "9432"), ("prometheus", "9090"), ("grafana", "3000")] {
        let ports = compose["services"][service]["ports"].as_sequence().unwrap_or_else(|| panic!("{service} ports"));
        for p in ports.iter().map(|p| p.as_str().unwrap()).filter(|p| p.ends_with(&format!(":{container_port}"))) {
            assert!(p.starts_with("127.0.0.1:"), "{service} publishes {p} beyond the host");
        }
    }
}
