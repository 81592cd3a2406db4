//! What tests do to a cluster's servers: stop, restart, crash, freeze, promote, rebuild.
//! Only with the `testkit` feature: the demo never needs it.

use std::time::{Duration, Instant};

use super::procs::{self, Pid, Signal};
use super::{Cluster, LocalPgError};

impl Cluster {
    /// Clean, fast shutdown of node `i` (SIGINT).
    pub fn stop(&self, i: usize) -> Result<(), LocalPgError> {
        self.signal_and_wait(i, Signal::INT, Duration::from_secs(30))
    }

    /// Fast restart of node `i` (`pg_ctl restart -m fast`: clean shutdown, start): the port
    /// refuses connections meanwhile.
    pub fn restart(&self, i: usize) -> Result<(), LocalPgError> {
        let n = &self.nodes[i];
        self.run(self.tool("pg_ctl").args(["-D", &n.data.to_string_lossy(), "-l", &n.log.to_string_lossy(), "-m", "fast", "-w", "-t", "60", "restart"]))?;
        Ok(())
    }

    /// A crash restart of node `i`: one backend is killed with SIGKILL, so the postmaster
    /// ends every session, reinitialises shared memory and replays WAL (answering 57P03
    /// meanwhile). Returns once a new session is possible.
    pub fn crash_restart(&self, i: usize) -> Result<(), LocalPgError> {
        // A session of our own that sleeps, so the kill lands on a live backend.
        let mut sleep = self.psql_command(i, "select pg_sleep(30)");
        let sleeper = std::thread::spawn(move || {
            let _ = sleep.output();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = loop {
            if let Some(p) = self.process(i, "SELECT") {
                break p;
            }
            if Instant::now() > deadline {
                return Err(LocalPgError::Timeout("the sleeping session did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        procs::signal(target, Signal::KILL);
        let _ = sleeper.join();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql(i, "select 1").is_err() {
            if Instant::now() > deadline {
                return Err(LocalPgError::Timeout("node did not come back after a crash restart".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// A child process of node `i`'s postmaster whose title contains `title` (e.g.
    /// "startup", "walsender", "walreceiver").
    pub fn process(&self, i: usize, title: &str) -> Option<Pid> {
        let pm = self.postmaster(i)?;
        procs::children(pm).into_iter().find(|c| procs::title(*c).is_some_and(|t| t.contains(title)))
    }

    /// Freezes one process (SIGSTOP), e.g. a standby's startup process or a WAL sender.
    pub fn pause_process(&self, pid: Pid) {
        procs::signal(pid, Signal::STOP);
    }

    /// Undoes [`pause_process`](Self::pause_process).
    pub fn resume_process(&self, pid: Pid) {
        procs::signal(pid, Signal::CONT);
    }

    /// Freezes node `i` like a hung host: SIGSTOP to the postmaster and all its children.
    /// Connections stay open but nothing answers.
    pub fn hang(&self, i: usize) -> Result<(), LocalPgError> {
        let pm = self.postmaster(i).ok_or_else(|| LocalPgError::Timeout("node is not running".into()))?;
        procs::stop_tree(pm);
        Ok(())
    }

    /// Undoes [`hang`](Self::hang).
    pub fn resume(&self, i: usize) {
        if let Some(pm) = self.postmaster(i) {
            procs::resume_tree(pm);
        }
    }

    /// Promotes standby `i` with `pg_ctl promote` and waits until it accepts writes.
    pub fn promote(&self, i: usize) -> Result<(), LocalPgError> {
        let n = &self.nodes[i];
        self.run(self.tool("pg_ctl").args(["-D", &n.data.to_string_lossy(), "-w", "-t", "60", "promote"]))?;
        Ok(())
    }

    /// Rebuilds node `i` as a fresh standby of node `from`, as an operator replaces a failed
    /// server: stopped if it runs, its data directory replaced by a base backup of `from`
    /// (`-R`: it streams from `from`, under the default `application_name`), started again
    /// on its own port.
    pub fn rebuild_as_standby(&self, i: usize, from: usize) -> Result<(), LocalPgError> {
        self.kill(i)?;
        let n = &self.nodes[i];
        std::fs::remove_dir_all(&n.data)?;
        let source = format!("host=127.0.0.1 port={} user=postgres password={}", self.nodes[from].port, self.options.password);
        self.run(self.tool("pg_basebackup").args(["-D", &n.data.to_string_lossy(), "-d", &source, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]))?;
        // The copy carries `from`'s port; the node keeps its own (clients know it by it).
        super::append(&n.data.join("postgresql.conf"), &format!("port = {}\n", n.port))?;
        self.run(self.tool("pg_ctl").args(["-D", &n.data.to_string_lossy(), "-l", &n.log.to_string_lossy(), "-w", "-t", "60", "start"]))?;
        Ok(())
    }
}
