//! How one process is started: its arguments, its only settings from the environment, a
//! socket passed as systemd passes one, and where its output goes.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{hermetic, socket_activated, Process, BIN};

/// How one process is started.
pub struct Launch {
    /// Names its log files and its log in a failing test's output.
    name: String,
    /// The command line after the program.
    args: Vec<OsString>,
    /// Its only settings from the environment (see [`super::command`]).
    env: Vec<(OsString, OsString)>,
    /// A listening socket passed as systemd passes a socket unit's (descriptor 3).
    socket: Option<RawFd>,
    /// Where readiness is polled; None when the test does not ask.
    admin: Option<SocketAddr>,
    /// Where the log files go; None: a directory of the process's own.
    dir: Option<PathBuf>,
    /// Another build of pgfailover (a benchmark's baseline); None: the binary under test.
    program: Option<PathBuf>,
    /// Programs it is started through, outermost first (another user, a umask), each with
    /// its arguments; the binary and its own arguments follow the last.
    through: Vec<Vec<OsString>>,
}

impl Launch {
    pub fn new(name: &str) -> Launch {
        Launch { name: name.into(), args: Vec::new(), env: Vec::new(), socket: None, admin: None, dir: None, program: None, through: Vec::new() }
    }

    pub fn args<A: Into<OsString>>(mut self, args: impl IntoIterator<Item = A>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts it on `fd` as systemd starts a socket-activated service.
    pub fn systemd_socket(mut self, fd: RawFd) -> Self {
        self.socket = Some(fd);
        self
    }

    /// The admin port the process will serve, for [`Process::ready`] and the like.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Runs another build of pgfailover instead of the one under test (not with a socket).
    pub fn program(mut self, path: &Path) -> Self {
        self.program = Some(path.to_path_buf());
        self
    }

    /// Runs it as OS user `user` (`runuser`; the PID is runuser's, which passes signals on).
    pub fn run_as(mut self, user: &str) -> Self {
        self.through.push(["runuser", "-u", user, "--"].map(OsString::from).to_vec());
        self
    }

    /// Runs it under umask `mask` (as some container and service setups do).
    pub fn umask(mut self, mask: u32) -> Self {
        // `exec`: the shell's PID becomes the binary's.
        self.through.push(vec!["/bin/sh".into(), "-c".into(), format!("umask {mask:04o} && exec \"$0\" \"$@\"").into()]);
        self
    }

    /// Writes the log files into `dir`.
    pub fn logs_in(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn start(self) -> Process {
        let (dir, own) = match self.dir {
            Some(dir) => (dir, None),
            None => {
                let own = tempfile::Builder::new().prefix("pgfailover-logs-").tempdir().expect("a directory for the logs");
                (own.path().to_path_buf(), Some(own))
            }
        };
        let (stderr, stdout) = (dir.join(format!("{}.log", self.name)), dir.join(format!("{}.out", self.name)));
        // Appending: a successor the process starts inherits both files and writes on.
        let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let bin = self.program.clone().unwrap_or_else(|| PathBuf::from(BIN));
        let mut cmd = match (self.socket, self.through.split_first()) {
            (None, None) => Command::new(&bin),
            (None, Some((first, rest))) => {
                let mut c = Command::new(&first[0]);
                c.args(&first[1..]).args(rest.iter().flatten()).arg(&bin);
                c
            }
            (Some(fd), None) => socket_activated(fd),
            (Some(_), Some(_)) => panic!("a socket-activated start runs the binary directly"),
        };
        hermetic(&mut cmd).args(&self.args).envs(self.env).stdin(Stdio::null()).stdout(open(&stdout)).stderr(open(&stderr));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {BIN}: {e}"));
        Process::started(self.name, child, self.admin, stderr, stdout, own)
    }
}
