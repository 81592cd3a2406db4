//! A running pgfailover process: its log (stderr) and stdout, read while it runs and printed
//! when the test fails; signals by PID; waits with deadlines (readiness, exit). When dropped
//! it is killed and reaped: only processes this harness started, or successors they started
//! that the test adopted (checked to run this binary before they are killed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::admin::{get, get_async, Reply, POLL};
use super::BIN;

/// The signals the tests send.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    /// Reload the configuration.
    Hup,
    /// Ctrl-C (the demo).
    Int,
    /// Stop: drain, then exit.
    Term,
    /// Hand over to a new process (an upgrade).
    Usr2,
    /// Freeze, like a host that stopped answering.
    Stop,
    /// Thaw after [`Signal::Stop`].
    Cont,
    /// End it at once (what a dropped [`Process`] gets).
    Kill,
}

impl Signal {
    fn number(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Signal::Hup => S::HUP,
            Signal::Int => S::INT,
            Signal::Term => S::TERM,
            Signal::Usr2 => S::USR2,
            Signal::Stop => S::STOP,
            Signal::Cont => S::CONT,
            Signal::Kill => S::KILL,
        }
    }
}

/// A running pgfailover process.
pub struct Process {
    /// Names it in failure messages.
    name: String,
    /// Where signals go; an adopted successor is known by nothing else.
    pid: u32,
    /// Ours to wait for; None for an adopted successor (its parent, or init, reaps it).
    child: Option<Child>,
    /// Its admin port, when known.
    admin: Option<SocketAddr>,
    /// The log (stderr).
    stderr: PathBuf,
    /// What it prints for people (the demo's instructions, `--check`'s summary).
    stdout: PathBuf,
    /// Frozen by [`Process::pause`]: thawed before it is killed.
    paused: bool,
    /// Prints its files when the test fails (an adopted successor's are its parent's).
    prints_log: bool,
    /// Holds the log files when no [`super::Site`] does.
    own_dir: Option<tempfile::TempDir>,
}

impl Process {
    /// The process [`super::Launch`] started, writing to `stderr` and `stdout`.
    pub(super) fn started(
        name: String,
        child: Child,
        admin: Option<SocketAddr>,
        stderr: PathBuf,
        stdout: PathBuf,
        own_dir: Option<tempfile::TempDir>,
    ) -> Process {
        Process { name, pid: child.id(), child: Some(child), admin, stderr, stdout, paused: false, prints_log: true, own_dir }
    }

    /// A successor `parent` started (a takeover), known by the PID it reports; it writes to
    /// `parent`'s files.
    pub fn adopt(parent: &Process, name: &str, pid: u32) -> Process {
        Process {
            name: name.into(),
            pid,
            child: None,
            admin: parent.admin,
            stderr: parent.stderr.clone(),
            stdout: parent.stdout.clone(),
            paused: false,
            prints_log: false,
            own_dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        assert!(kill(self.pid, sig), "{} (pid {}) is gone; cannot send {sig:?}", self.name, self.pid);
    }

    /// Freezes it (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&mut self) {
        self.signal(Signal::Stop);
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal(Signal::Cont);
        self.paused = false;
    }

    /// Whether it is still running (a zombie counts as gone).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("wait for our child").is_none(),
            None => running(self.pid),
        }
    }

    /// How it ended, if it did. Only for a process this harness started.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().expect("the exit status of a process we started").try_wait().expect("wait for our child")
    }

    /// Waits until it exits by itself.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_exit() {
                return st;
            }
            self.before(deadline, limit, "exits by itself");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until it is gone (for an adopted process, whose status is its parent's to read).
    pub async fn gone(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.alive() {
            self.before(deadline, limit, "ends");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `/ready` answers 200: it routes to a primary.
    pub async fn ready(&mut self, limit: Duration) {
        self.admin_until(limit, "/ready", |r| r.status == 200).await;
    }

    /// Waits until `/health` answers 200: the admin port serves (readiness may depend on
    /// other processes, as with coordination).
    pub async fn live(&mut self, limit: Duration) {
        self.admin_until(limit, "/health", |r| r.status == 200).await;
    }

    /// Polls `GET path` on its admin port until `accept` takes an answer; panics if the
    /// process exits first.
    pub async fn admin_until(&mut self, limit: Duration, path: &str, accept: impl Fn(&Reply) -> bool) -> Reply {
        let (admin, deadline) = (self.admin_addr(), Instant::now() + limit);
        loop {
            if let Some(r) = get_async(admin, path).await.filter(|r| accept(r)) {
                return r;
            }
            let what = format!("GET {path} answers as expected");
            self.running_for(&what);
            self.before(deadline, limit, &what);
            tokio::time::sleep(POLL).await;
        }
    }

    /// As [`Process::admin_until`], blocking the thread.
    pub fn admin_until_blocking(&mut self, limit: Duration, path: &str, accept: impl Fn(&Reply) -> bool) -> Reply {
        let (admin, deadline) = (self.admin_addr(), Instant::now() + limit);
        loop {
            if let Some(r) = get(admin, path).filter(|r| accept(r)) {
                return r;
            }
            let what = format!("GET {path} answers as expected");
            self.running_for(&what);
            self.before(deadline, limit, &what);
            std::thread::sleep(POLL);
        }
    }

    fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| panic!("{}: started without a known admin port", self.name))
    }

    /// Panics if the process ended while waiting until its admin port answers.
    fn running_for(&mut self, what: &str) {
        if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
            panic!("{} (pid {}) exited ({st}) while waiting until {what}", self.name, self.pid);
        }
    }

    /// Panics if `deadline` passed while waiting until the process `what`.
    fn before(&self, deadline: Instant, limit: Duration, what: &str) {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {} (pid {}) {what}", self.name, self.pid);
    }

    /// An adopted PID is killed only while it still runs this binary (not a reused PID).
    fn still_ours(&self) -> bool {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok();
        exe.is_some() && exe == std::fs::canonicalize(BIN).ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.paused {
            kill(self.pid, Signal::Cont);
        }
        match self.child.take() {
            // Not reaped yet, so the PID is still this process's.
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => {
                if running(self.pid) && self.still_ours() {
                    kill(self.pid, Signal::Kill);
                }
            }
        }
        if std::thread::panicking() && self.prints_log {
            eprintln!("---- {} (pid {}) log ----\n{}", self.name, self.pid, self.log());
            let out = self.stdout();
            if !out.is_empty() {
                eprintln!("---- {} (pid {}) stdout ----\n{out}", self.name, self.pid);
            }
        }
    }
}

/// Whether `pid` runs (not a zombie), read from /proc.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// kill(2); false when there is no such process.
fn kill(pid: u32, sig: Signal) -> bool {
    // The PID is one this harness started (or an adopted successor checked to run this binary).
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw).expect("a PID fits pid_t");
    rustix::process::kill_process(pid, sig.number()).is_ok()
}
