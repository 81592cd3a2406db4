//! Where the coordinated proxies keep things in etcd, under `/pgfailover/<cluster>/` (the
//! values are [`crate::cluster`]'s):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `leader/<lease>` | the election (etcd's v3election): the oldest key is the leader; value = its name | the leader's |
//! | `primary` | [`PrimaryRecord`](crate::cluster::PrimaryRecord): the one primary every proxy routes to | none |
//! | `fences/<backend>` | [`FenceRecord`](crate::cluster::FenceRecord): a backend no proxy may route to | none |
//! | `members/<name>` | [`MemberView`](crate::cluster::MemberView): a proxy's own view of the backends | the proxy's |
//! | `requests/<id>` | [`Request`](crate::cluster::Request): an admin request a follower hands to the leader | the follower's |
//! | `responses/<id>` | [`Response`](crate::cluster::Response): the leader's answer to it | the leader's |

/// The key names of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys { prefix: format!("/pgfailover/{cluster}/") }
    }
    pub fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn primary(&self) -> String {
        format!("{}primary", self.prefix)
    }
    pub fn fence(&self, backend: &str) -> String {
        format!("{}fences/{backend}", self.prefix)
    }
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }
    pub fn request(&self, id: &str) -> String {
        format!("{}requests/{id}", self.prefix)
    }
    pub fn response(&self, id: &str) -> String {
        format!("{}responses/{id}", self.prefix)
    }

    /// What a key under the prefix names.
    pub fn parse<'k>(&self, key: &'k str) -> Option<KeyKind<'k>> {
        let rest = key.strip_prefix(&self.prefix)?;
        Some(match rest.split_once('/') {
            None if rest == "primary" => KeyKind::Primary,
            Some(("leader", k)) => KeyKind::Election(k),
            Some(("fences", b)) => KeyKind::Fence(b),
            Some(("members", n)) => KeyKind::Member(n),
            Some(("requests", id)) => KeyKind::Request(id),
            Some(("responses", id)) => KeyKind::Response(id),
            _ => return None,
        })
    }
}

/// The kinds of keys under the prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'k> {
    Primary,
    Election(&'k str),
    Fence(&'k str),
    Member(&'k str),
    Request(&'k str),
    Response(&'k str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("main");
        assert_eq!(k.primary(), "/pgfailover/main/primary");
        assert_eq!(k.parse(&k.primary()), Some(KeyKind::Primary));
        assert_eq!(k.parse(&k.fence("pg-a")), Some(KeyKind::Fence("pg-a")));
        assert_eq!(k.parse(&k.member("p1")), Some(KeyKind::Member("p1")));
        assert_eq!(k.parse("/pgfailover/main/leader/694d7b"), Some(KeyKind::Election("694d7b")));
        assert_eq!(k.parse("/pgfailover/other/primary"), None);
        assert_eq!(k.parse("/pgfailover/main/what/x"), None);
    }
}
