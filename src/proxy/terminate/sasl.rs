//! The SASL messages a terminated session looks into: the server's `AuthenticationSASL`
//! offer (withholding `SCRAM-SHA-256-PLUS`) and the client's `SASLInitialResponse` (its
//! channel-binding flag). See [`super::auth`] for why.

/// The authentication request code of `AuthenticationSASL`.
const AUTH_SASL: u32 = 10;
/// The mechanism withheld from clients.
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// The mechanisms of an `AuthenticationSASL` message, if `msg` begins with one.
pub(super) fn sasl_mechanisms(msg: &[u8]) -> Option<Vec<&[u8]>> {
    if msg.first() != Some(&b'R') || msg.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
    if len < 8 || u32::from_be_bytes([msg[5], msg[6], msg[7], msg[8]]) != AUTH_SASL || msg.len() < len + 1 {
        return None;
    }
    let list = &msg[9..len + 1];
    Some(list.split(|b| *b == 0).take_while(|m| !m.is_empty()).collect())
}

/// Removes `SCRAM-SHA-256-PLUS` from the server's `AuthenticationSASL` offer, if `first`
/// begins with one (it is whole: the leg reads the first message whole).
pub fn withhold_channel_binding(first: &mut Vec<u8>) {
    let Some(mechanisms) = sasl_mechanisms(first) else { return };
    if !mechanisms.contains(&SCRAM_PLUS) {
        return;
    }
    let len = u32::from_be_bytes([first[1], first[2], first[3], first[4]]) as usize;
    let mut body = AUTH_SASL.to_be_bytes().to_vec();
    for m in mechanisms.into_iter().filter(|m| *m != SCRAM_PLUS) {
        body.extend_from_slice(m);
        body.push(0);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'R');
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    // Whatever followed the message in the same read stays behind it.
    msg.extend_from_slice(&first[len + 1..]);
    *first = msg;
}

/// Whether a client's `SASLInitialResponse` carries the `y` flag: "I support channel
/// binding, and think the server does not".
pub(super) fn says_binding_unsupported(msg: &[u8]) -> bool {
    if msg.first() != Some(&b'p') || msg.len() < 6 {
        return false;
    }
    let body = &msg[5..];
    let Some(end) = body.iter().position(|b| *b == 0) else { return false };
    // The mechanism name, its NUL, then the data's length (4 bytes) and the data.
    body.get(end + 5..).is_some_and(|data| data.starts_with(b"y,"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(mechs: &[&str]) -> Vec<u8> {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        for m in mechs {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'R'];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn the_plus_mechanism_is_withheld_and_the_length_follows() {
        let mut first = sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        first.extend_from_slice(b"tail");
        withhold_channel_binding(&mut first);
        let mut want = sasl(&["SCRAM-SHA-256"]);
        want.extend_from_slice(b"tail");
        assert_eq!(first, want);
        // Nothing to change: an offer without it, another request, a partial message.
        for mut other in [sasl(&["SCRAM-SHA-256"]), b"R\0\0\0\x0c\0\0\0\x05salt".to_vec(), sasl(&["SCRAM-SHA-256-PLUS"])[..7].to_vec()] {
            let before = other.clone();
            withhold_channel_binding(&mut other);
            assert_eq!(other, before);
        }
    }
}
