//! libpq keyword/value connection strings, as found in a standby's `primary_conninfo`: read
//! them, point them at another server under a given `application_name`, write them back.
//! Every other keyword (user, password, passfile, sslmode, …) is kept as it was.

/// Why a connection string cannot be re-pointed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    #[error("primary_conninfo is empty: the standby does not stream (configure it, or re-point it yourself)")]
    Empty,
    #[error("primary_conninfo is a URI; pgfailover re-points only keyword=value strings")]
    Uri,
    #[error("primary_conninfo cannot be read: {0}")]
    Syntax(String),
}

/// Parses `key=value key2='quoted value'` into pairs, in order.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, ConninfoError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ConninfoError::Empty);
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Err(ConninfoError::Uri);
    }
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConninfoError::Syntax(format!("missing \"=\" after {key:?}")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| ConninfoError::Syntax("dangling backslash".into()))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(ConninfoError::Syntax(format!("unterminated quote in the value of {key:?}"))),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| ConninfoError::Syntax("dangling backslash".into()))?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(ConninfoError::Syntax("empty keyword".into()));
        }
        out.push((key, value));
    }
}

/// Writes pairs back, every value quoted.
pub fn render(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))).collect::<Vec<_>>().join(" ")
}

/// The same connection string aimed at `host:port`, its receiver named `application_name`
/// (any `hostaddr` is dropped: it would override the new host).
pub fn repoint(s: &str, host: &str, port: u16, application_name: &str) -> Result<String, ConninfoError> {
    let mut pairs: Vec<(String, String)> =
        parse(s)?.into_iter().filter(|(k, _)| k != "host" && k != "hostaddr" && k != "port" && k != "application_name").collect();
    pairs.push(("host".into(), host.into()));
    pairs.push(("port".into(), port.to_string()));
    pairs.push(("application_name".into(), application_name.into()));
    Ok(render(&pairs))
}

/// The `application_name` a connection string sets, if any.
pub fn application_name(s: &str) -> Option<String> {
    parse(s).ok()?.into_iter().rev().find(|(k, _)| k == "application_name").map(|(_, v)| v)
}

/// `host:port` of a connection string, for comparing upstreams (defaults as libpq's).
pub fn address(s: &str) -> Option<(String, u16)> {
    let pairs = parse(s).ok()?;
    let get = |k: &str| pairs.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let host = get("hostaddr").or_else(|| get("host"))?;
    let port = get("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repoints_keeping_everything_else() {
        let pg = "user=postgres password='pa ss\\'x' channel_binding=prefer host=127.0.0.1 port=55432 sslmode=prefer";
        let out = repoint(pg, "10.0.0.2", 5433, "pg-b").unwrap();
        assert_eq!(out, "user='postgres' password='pa ss\\'x' channel_binding='prefer' sslmode='prefer' host='10.0.0.2' port='5433' application_name='pg-b'");
        assert_eq!(application_name(&out).as_deref(), Some("pg-b"));
        assert_eq!(application_name(pg), None);
        let renamed = repoint("host=a application_name=walreceiver port=1", "b", 2, "pg-c").unwrap();
        assert_eq!(renamed, "host='b' port='2' application_name='pg-c'", "an earlier name is replaced");
        let back = parse(&out).unwrap();
        assert!(back.contains(&("password".into(), "pa ss'x".into())));
        assert_eq!(address(&out), Some(("10.0.0.2".into(), 5433)));
        assert_eq!(address("host=a"), Some(("a".into(), 5432)));
    }

    #[test]
    fn odd_inputs() {
        assert_eq!(repoint("", "h", 1, "n"), Err(ConninfoError::Empty));
        assert_eq!(repoint("postgresql://u@h/db", "h", 1, "n"), Err(ConninfoError::Uri));
        assert!(matches!(parse("user='x"), Err(ConninfoError::Syntax(_))));
        assert!(matches!(parse("user"), Err(ConninfoError::Syntax(_))));
        assert_eq!(parse(" a = 1  b='' ").unwrap(), vec![("a".into(), "1".into()), ("b".into(), String::new())]);
        assert_eq!(parse("p=a\\ b").unwrap(), vec![("p".into(), "a b".into())]);
    }
}
