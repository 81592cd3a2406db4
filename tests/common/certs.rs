//! Real certificates for the TLS tests, made with the `openssl` CLI in a temporary directory: a
//! root CA, an intermediate CA, and leaves signed by the intermediate (their PEM files hold
//! the chain: leaf, then intermediate), plus a PostgreSQL server's certificate installed in
//! its data directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgfailover::localpg::Cluster;

/// A small PKI.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The root CA's certificate: what clients and the proxy trust.
    pub root: PathBuf,
    /// The intermediate CA, which signs the leaves.
    inter: PathBuf,
    inter_key: PathBuf,
}

/// A leaf certificate: its chain file (leaf, then intermediate) and its key.
#[derive(Clone)]
pub struct Leaf {
    pub chain: PathBuf,
    pub key: PathBuf,
    /// The leaf alone.
    pub cert: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A new P-256 key for `subject` (`/CN=...`) and its signing request.
fn key_and_request(subject: &str, key: &Path, csr: &Path) {
    openssl(&["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject, "-keyout", p(key), "-out", p(csr)]);
}

/// Signs `csr` with the CA `ca`/`ca_key` for two days, with the extensions in `ext`.
fn sign(csr: &Path, ca: &Path, ca_key: &Path, ext: &Path, out: &Path) {
    openssl(&["x509", "-req", "-in", p(csr), "-CA", p(ca), "-CAkey", p(ca_key), "-CAcreateserial", "-days", "2", "-extfile", p(ext), "-out", p(out)]);
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new().prefix("pgfailover-pki-").tempdir().unwrap();
        let d = dir.path();
        let (root, root_key) = (d.join("root.crt"), d.join("root.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} root"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            p(&root_key),
            "-out",
            p(&root),
        ]);
        let (inter, inter_key, csr) = (d.join("inter.crt"), d.join("inter.key"), d.join("inter.csr"));
        key_and_request(&format!("/CN={name} intermediate"), &inter_key, &csr);
        let ext = d.join("inter.ext");
        std::fs::write(&ext, "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n").unwrap();
        sign(&csr, &root, &root_key, &ext, &inter);
        Pki { dir, root, inter, inter_key }
    }

    /// A leaf for `cn` with subject alternative names `sans` (`DNS:localhost`, `IP:127.0.0.1`).
    pub fn leaf(&self, file: &str, cn: &str, sans: &[&str]) -> Leaf {
        let d = self.dir.path();
        let (cert, key, csr, ext, chain) = (
            d.join(format!("{file}.crt")),
            d.join(format!("{file}.key")),
            d.join(format!("{file}.csr")),
            d.join(format!("{file}.ext")),
            d.join(format!("{file}.chain.crt")),
        );
        key_and_request(&format!("/CN={cn}"), &key, &csr);
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        sign(&csr, &self.inter, &self.inter_key, &ext, &cert);
        let mut pem = std::fs::read(&cert).unwrap();
        pem.extend(std::fs::read(&self.inter).unwrap());
        std::fs::write(&chain, pem).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Leaf { chain, key, cert }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Gives node `i` of `c` the certificate `leaf` (its chain) and makes it reload: from then on
/// its TLS presents a certificate the PKI's root verifies.
pub fn install_server_cert(c: &Cluster, i: usize, leaf: &Leaf) {
    let data = &c.nodes[i].data;
    let owner = std::fs::metadata(data).unwrap();
    for (from, to) in [(&leaf.chain, "server.crt"), (&leaf.key, "server.key")] {
        let dest = data.join(to);
        std::fs::copy(from, &dest).unwrap();
        std::os::unix::fs::chown(&dest, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    c.psql(i, "SELECT pg_reload_conf()").unwrap();
}

/// The subject of the certificate the proxy (or server) at `port` presents after an
/// SSLRequest, as `openssl s_client -starttls postgres` shows it.
pub fn presented_subject(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -starttls postgres -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -subject"))
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
