//! Files that hold a secret, and which of them other users can read. As PostgreSQL says of
//! a key file and ssh of a private key, but a warning rather than a refusal: Kubernetes
//! mounts a Secret `0644` unless told otherwise, and a proxy that refuses to start over it
//! would turn a hygiene problem into an outage.
//!
//! The rule is PostgreSQL's for `ssl_key_file`: a file is private when it belongs to this
//! process's user and nobody else has any access (`0600`, `0400`), or when it belongs to root
//! and its group may only read it (`0640`, `0440`: a key root manages and shares with the
//! service's group, which is also what a Kubernetes Secret volume with `defaultMode: 0400`
//! becomes under `fsGroup`).

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A file a secret comes from, and where the configuration names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    /// Where it is named, for the report: `proxy.toml: admin_token_file`,
    /// `environment: DB_PASSWORD_FILE`, or the configuration file itself with the secret keys
    /// it holds.
    pub key: String,
    /// The file, as the configuration resolved it.
    pub path: PathBuf,
}

/// A secret file that others can read (or that another user owns), as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LooseSecret {
    /// The file and where it is named.
    pub file: SecretFile,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner's uid.
    pub owner: u32,
    /// Who else has access, in words ("other users can read it").
    pub who: String,
}

impl fmt::Display for LooseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {} (mode {:04o}, owner uid {}), but it holds a password, token or key; chmod 600 it, owned by the user \
             pgfailover runs as (or 640, owned by root and that user's group)",
            self.file.key,
            self.file.path.display(),
            self.who,
            self.mode,
            self.owner
        )
    }
}

/// Those of `files` that are not private now (a file that cannot be read any more is left to
/// the next load to report).
pub(super) fn loose(files: &[SecretFile]) -> Vec<LooseSecret> {
    let uid = rustix::process::geteuid().as_raw();
    let mut out: Vec<LooseSecret> = Vec::new();
    for f in files {
        // A file named twice (a variable and the file) is reported once.
        if out.iter().any(|l| l.file.path == f.path) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&f.path) else { continue };
        let mode = meta.mode() & 0o7777;
        if let Some(who) = exposure(meta.uid(), mode, uid) {
            out.push(LooseSecret { file: f.clone(), mode, owner: meta.uid(), who });
        }
    }
    out
}

/// Who besides its rightful owner can get at a file owned by `owner` with `mode`, for a
/// process running as `uid`; `None` when it is private.
fn exposure(owner: u32, mode: u32, uid: u32) -> Option<String> {
    // Root may share a file with the group for reading; nobody else may share it at all.
    let allowed_group = if owner == 0 { 0o040 } else { 0 };
    let group = mode & 0o070 & !allowed_group;
    let others = mode & 0o007;
    let mut who = Vec::new();
    if owner != uid && owner != 0 {
        who.push(format!("belongs to another user (uid {owner}), who can change it"));
    }
    if group != 0 {
        who.push(format!("its group can {} it", access(group >> 3)));
    }
    if others != 0 {
        who.push(format!("every other user can {} it", access(others)));
    }
    (!who.is_empty()).then(|| who.join(" and "))
}

fn access(bits: u32) -> &'static str {
    match (bits & 4 != 0, bits & 2 != 0) {
        (true, true) => "read and write",
        (true, false) => "read",
        (false, true) => "write",
        // Execute alone: no read, but it is no private file either.
        (false, false) => "execute",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_is_the_owner_alone_or_root_sharing_read_with_its_group() {
        for (owner, mode) in [(1000, 0o600), (1000, 0o400), (0, 0o640), (0, 0o440), (0, 0o600)] {
            assert_eq!(exposure(owner, mode, 1000), None, "uid {owner} mode {mode:o}");
        }
        assert_eq!(exposure(1000, 0o644, 1000).as_deref(), Some("its group can read it and every other user can read it"));
        assert_eq!(exposure(1000, 0o640, 1000).as_deref(), Some("its group can read it"));
        assert_eq!(exposure(1000, 0o602, 1000).as_deref(), Some("every other user can write it"));
        assert_eq!(exposure(0, 0o644, 1000).as_deref(), Some("every other user can read it"));
        assert_eq!(exposure(0, 0o660, 1000).as_deref(), Some("its group can write it"));
        assert!(exposure(65534, 0o600, 0).expect("another user's file").contains("uid 65534"));
    }

    #[test]
    fn only_loose_files_are_reported_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, "s3cret").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            SecretFile { key: format!("proxy.toml: {name}"), path: p }
        };
        let (open, private) = (file("open", 0o644), file("private", 0o600));
        let gone = SecretFile { key: "environment: DB_PASSWORD_FILE".into(), path: dir.path().join("gone") };
        let got = loose(&[open.clone(), private, open.clone(), gone]);
        assert_eq!(got.len(), 1, "{got:?}");
        let line = got[0].to_string();
        // (Its group reads it too, which is allowed when the tests run as root.)
        assert!(line.starts_with(&format!("proxy.toml: open: {}: ", open.path.display())), "{line}");
        assert!(line.contains("every other user can read it"), "{line}");
        assert!(line.contains("mode 0644") && line.contains("chmod 600"), "{line}");
        assert!(!line.contains("s3cret"));
    }
}
