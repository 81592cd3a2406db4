//! Who leads the coordinated proxies, read from the election's keys (etcd's v3election: every
//! candidate's key lives on its lease, and the oldest key leads). This proxy leads while its
//! own key, the one its campaign won, is still the oldest.

use std::collections::BTreeMap;

use super::event::Event;

/// The election's keys as this proxy last saw them.
#[derive(Debug, Default)]
pub(super) struct Election {
    /// Every candidate's key → its create revision and the candidate's name.
    candidates: BTreeMap<String, (i64, String)>,
    /// This proxy's own key and its create revision, once its campaign won: the fencing
    /// token its transactions compare.
    own: Option<(String, i64)>,
}

impl Election {
    /// The oldest candidate's name.
    pub fn leader(&self) -> Option<String> {
        self.candidates.values().min_by_key(|(rev, _)| *rev).map(|(_, name)| name.clone())
    }

    /// This proxy's key and its create revision, while it holds one.
    pub fn own(&self) -> Option<&(String, i64)> {
        self.own.as_ref()
    }

    /// Leads: won the election, and its key is still the oldest.
    pub fn leadership(&self, me: &str) -> Event {
        let leader = self.leader();
        let own = self.own.as_ref().is_some_and(|(k, _)| self.candidates.contains_key(k));
        Event::Leadership { is_leader: own && leader.as_deref() == Some(me), leader }
    }

    /// Forgets every candidate (a new session reads them all again).
    pub fn clear(&mut self) {
        self.candidates.clear();
    }

    /// A candidate's key appeared (`Some`) or went.
    pub fn set(&mut self, key: String, candidate: Option<(i64, String)>) {
        match candidate {
            Some(c) => self.candidates.insert(key, c),
            None => self.candidates.remove(&key),
        };
    }

    /// This proxy's campaign won with `key` (created at `rev`). Its own put, and the deletion
    /// of every older key (the campaign waited for them), may still be on their way through
    /// the watch.
    pub fn won(&mut self, key: String, rev: i64, me: &str) {
        self.candidates.retain(|_, (r, _)| *r >= rev);
        self.candidates.insert(key.clone(), (rev, me.to_string()));
        self.own = Some((key, rev));
    }

    /// This proxy's own key is gone: it leads no more (the session ends).
    pub fn lost(&self) -> bool {
        self.own.as_ref().is_some_and(|(k, _)| !self.candidates.contains_key(k))
    }

    /// The session ended: this proxy holds no key any more. Returns whether it led.
    pub fn step_down(&mut self) -> bool {
        self.own.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leads(e: &Election) -> bool {
        matches!(e.leadership("me"), Event::Leadership { is_leader: true, .. })
    }

    #[test]
    fn the_oldest_key_leads() {
        let mut e = Election::default();
        assert_eq!(e.leadership("me"), Event::Leadership { leader: None, is_leader: false });
        e.set("k/2".into(), Some((20, "p2".into())));
        e.set("k/1".into(), Some((10, "p1".into())));
        assert_eq!(e.leader().as_deref(), Some("p1"));
        e.set("k/1".into(), None);
        assert_eq!(e.leader().as_deref(), Some("p2"));
        assert!(!leads(&e), "a candidate that did not win does not lead");
    }

    #[test]
    fn a_won_campaign_leads_until_its_key_goes() {
        let mut e = Election::default();
        e.set("k/1".into(), Some((10, "p1".into())));
        e.won("k/3".into(), 30, "me");
        assert!(leads(&e), "older keys are gone once the campaign answers");
        assert_eq!(e.own(), Some(&("k/3".to_string(), 30)));
        // A late put of an older key (still in the watch) does not take the lead back.
        e.set("k/2".into(), Some((20, "p2".into())));
        assert!(!leads(&e));
        e.set("k/2".into(), None);
        assert!(leads(&e) && !e.lost());
        e.set("k/3".into(), None);
        assert!(e.lost() && !leads(&e));
        assert!(e.step_down());
        assert!(!e.step_down());
    }
}
