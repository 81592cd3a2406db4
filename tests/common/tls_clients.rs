//! Real TLS clients for the TLS tests: libpq 15 through `psql`, and libpq 18 through
//! psycopg's binary wheel (PostgreSQL 17's direct TLS), each as its own process.

use std::process::Command;

/// Runs `sql` through `psql` on `conninfo`: its output (unaligned, tuples only), or its error.
pub async fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let (conninfo, sql) = (conninfo.to_string(), sql.to_string());
    super::blocking(move || {
        let bin = pgfailover::localpg::find_bindir().expect("PostgreSQL's bin directory").join("psql");
        let out = Command::new(bin)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", &sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    })
    .await
}

/// Runs `sql` through psycopg (libpq 18) on `conninfo`: the first column of the first row, or
/// the error.
pub async fn psycopg(conninfo: &str, sql: &str) -> Result<String, String> {
    let (conninfo, sql) = (conninfo.to_string(), sql.to_string());
    super::blocking(move || {
        let script = "import sys, psycopg\n\
                      try:\n    c = psycopg.connect(sys.argv[1], connect_timeout=10)\nexcept Exception as e:\n    print('ERROR', e); sys.exit(1)\n\
                      print(c.execute(sys.argv[2]).fetchone()[0])\n";
        let out = Command::new("python3").args(["-c", script, &conninfo, &sql]).output().expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    })
    .await
}
