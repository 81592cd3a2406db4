//! The state directory is the door to the proxy: whoever can write in it can put a control
//! socket of their own there (and answer the next process's takeover), or rewrite the
//! history. So it must belong to this process's user and be writable by nobody else. A
//! missing one is created `0700`, whatever the umask; an existing one is never changed, only
//! refused (with what to do) when it is not safe.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::peer::own_uid;

/// The mode a created state directory gets: its owner only.
pub const MODE: u32 = 0o700;

/// Creates `dir` (`0700`, parents included) if it is missing, then checks it.
pub fn prepare(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        // `mode` is filtered by the umask (which can only take bits away); parents created
        // here get it too, and nothing in them is shared either.
        std::fs::DirBuilder::new().recursive(true).mode(MODE).create(dir)?;
        // Exactly 0700, even under an odd umask such as 0277 that would leave it unusable.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))?;
    }
    check(dir)
}

/// Refuses a state directory another user could write to, or that belongs to another user.
/// Does not create it (`--check` asks too).
pub fn check(dir: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is not a directory"));
    }
    problem(meta.uid(), meta.mode(), own_uid()).map_or(Ok(()), |why| Err(io::Error::new(io::ErrorKind::PermissionDenied, why)))
}

/// Why a directory owned by `owner` with `mode` is unsafe for a process running as `uid`.
fn problem(owner: u32, mode: u32, uid: u32) -> Option<String> {
    let perms = mode & 0o7777;
    if owner != uid {
        return Some(format!(
            "is owned by uid {owner}, but pgfailover runs as uid {uid}: that user could take over the proxy's sockets; \
             chown it to uid {uid} (or let pgfailover create it) and chmod {MODE:o} it"
        ));
    }
    if perms & 0o022 != 0 {
        let who = match (perms & 0o020 != 0, perms & 0o002 != 0) {
            (true, true) => "its group and every other user",
            (true, false) => "its group",
            _ => "every other user",
        };
        return Some(format!(
            "is writable by {who} (mode {perms:04o}): they could take over the proxy's sockets through the control socket \
             or rewrite its history; chmod {MODE:o} it (a missing state_dir is created {MODE:04o})"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_alone_may_write() {
        for mode in [0o40700, 0o40755, 0o40750, 0o40711, 0o40500] {
            assert_eq!(problem(1000, mode, 1000), None, "{mode:o}");
        }
        for mode in [0o40777, 0o41777, 0o40770, 0o40702, 0o40720] {
            let why = problem(1000, mode, 1000).expect("refused");
            assert!(why.contains("writable by") && why.contains("chmod 700"), "{why}");
        }
        let why = problem(65534, 0o40700, 0).expect("another user's directory is refused, even for root");
        assert!(why.contains("owned by uid 65534"), "{why}");
    }

    #[test]
    fn a_missing_directory_is_created_0700_whatever_the_umask_allowed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/state");
        prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, MODE);
        // An existing, shared one is refused and left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o777);
    }
}
