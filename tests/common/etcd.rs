//! A real etcd for the coordination tests ([`pgfailover::testkit::etcd`]), from async tests.

use std::time::Duration;

pub use pgfailover::testkit::etcd::Etcd;

/// Starts `n` members off the runtime's workers and waits until they are healthy.
pub async fn start(n: usize) -> Etcd {
    super::blocking(move || Etcd::start(n)).await.expect("start etcd")
}

/// As [`start`], each member with the flags `extra` besides.
pub async fn start_with(n: usize, extra: &'static [&'static str]) -> Etcd {
    super::blocking(move || Etcd::start_with(n, extra)).await.expect("start etcd")
}

/// Waits (off the workers) until every running member is healthy again.
pub fn wait_ready(e: &Etcd, limit: Duration) {
    tokio::task::block_in_place(|| e.wait_ready(limit)).expect("etcd healthy again");
}

/// A client for the test's own reads of the keys.
pub async fn client(e: &Etcd) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
    etcd_client::Client::connect(e.endpoints(), Some(opts)).await.expect("etcd client")
}

/// etcd's superuser, which every auth-enabled etcd needs.
pub const ROOT: (&str, &str) = ("root", "root-password");

/// Turns authentication on, with `root` and one user per entry of `users`: (name, password,
/// the permission of its own role on `prefix`), as the README's etcdctl commands do.
pub async fn enable_auth(e: &Etcd, prefix: &str, users: &[(&str, &str, etcd_client::PermissionType)]) {
    use etcd_client::Permission;
    let mut c = client(e).await;
    c.user_add(ROOT.0, ROOT.1, None).await.expect("add root");
    c.user_grant_role(ROOT.0, "root").await.expect("root gets the root role");
    for (user, password, perm) in users {
        let role = format!("{user}-role");
        c.role_add(role.as_str()).await.expect("add a role");
        c.role_grant_permission(role.as_str(), Permission::new(*perm, prefix).with_prefix()).await.expect("grant the prefix");
        c.user_add(*user, *password, None).await.expect("add a user");
        c.user_grant_role(*user, role.as_str()).await.expect("grant the role");
    }
    c.auth_enable().await.expect("enable authentication");
}

/// A client with a user's credentials.
pub async fn client_as(e: &Etcd, user: &str, password: &str) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2)).with_user(user, password);
    etcd_client::Client::connect(e.endpoints(), Some(opts)).await.expect("etcd client with a user")
}
