//! `synchronous_standby_names`, as PostgreSQL reads it: which standbys a primary's commits
//! wait for, and how many of them. pgfailover writes `ANY n ("a", "b")`; it reads whatever an
//! operator wrote too (`FIRST n (…)`, `n (…)`, a bare list, `*`), to know which standbys may
//! hold an acknowledged write.

/// A parsed, non-empty `synchronous_standby_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyNames {
    /// How many of the listed standbys each commit waits for.
    pub num: u32,
    /// `ANY` (a quorum of `num`) rather than `FIRST` (the `num` first connected).
    pub quorum: bool,
    /// The names as written: quoted ones match exactly, others ignoring case; `*` matches
    /// every standby.
    pub names: Vec<Name>,
}

/// One name of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// The name (without its quotes).
    pub text: String,
    /// Written in double quotes: matched exactly (else case-insensitively).
    pub quoted: bool,
}

impl StandbyNames {
    /// Whether a standby whose `application_name` is `name` is one of these.
    pub fn matches(&self, name: &str) -> bool {
        self.names.iter().any(|n| if n.quoted { n.text == name } else { n.text == "*" || n.text.eq_ignore_ascii_case(name) })
    }

    /// Lists every standby (`*`).
    pub fn any_standby(&self) -> bool {
        self.names.iter().any(|n| !n.quoted && n.text == "*")
    }
}

/// What pgfailover writes: `ANY num ("a", "b")`, names in the order given (`num` at least 1).
pub fn render(num: usize, names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("ANY {} ({})", num.max(1), quoted.join(", "))
}

/// Reads a setting; `Ok(None)` when empty (no synchronous replication), `Err` when PostgreSQL
/// would not accept it either.
pub fn parse(s: &str) -> Result<Option<StandbyNames>, String> {
    let tokens = tokenize(s)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut t = tokens.as_slice();
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x, false) if x.eq_ignore_ascii_case(w));
    let (quorum, num) = match t {
        [k, Token::Word(n, false), Token::Open, ..] if (word(k, "any") || word(k, "first")) && n.parse::<u32>().is_ok() => {
            let q = word(k, "any");
            let n = n.parse().unwrap_or(1);
            t = &t[3..];
            (q, n)
        }
        [Token::Word(n, false), Token::Open, ..] if n.parse::<u32>().is_ok() => {
            let n = n.parse().unwrap_or(1);
            t = &t[2..];
            (false, n)
        }
        _ => {
            // A bare list: the first one connected is synchronous.
            return Ok(Some(StandbyNames { num: 1, quorum: false, names: list(t)? }));
        }
    };
    match t.split_last() {
        Some((Token::Close, inner)) => Ok(Some(StandbyNames { num, quorum, names: list(inner)? })),
        _ => Err("a list after a number must end with \")\"".into()),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A name or a keyword or a number; `true` when double-quoted.
    Word(String, bool),
    Open,
    Close,
    Comma,
}

fn list(t: &[Token]) -> Result<Vec<Name>, String> {
    let mut names = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        match (i % 2, tok) {
            (0, Token::Word(w, q)) => names.push(Name { text: w.clone(), quoted: *q }),
            (1, Token::Comma) => {}
            _ => return Err(format!("unexpected {tok:?} in the list of names")),
        }
    }
    if names.is_empty() || t.len() % 2 == 0 {
        return Err("the list of names is empty or ends with a comma".into());
    }
    Ok(names)
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '"' => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            w.push('"');
                        }
                        Some('"') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated quoted name".into()),
                    }
                }
                out.push(Token::Word(w, true));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "(),\"".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w, false));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> StandbyNames {
        parse(s).unwrap().unwrap()
    }

    #[test]
    fn what_pgfailover_writes_reads_back() {
        let s = render(1, &["pg-b", "odd\"name"]);
        assert_eq!(s, r#"ANY 1 ("pg-b", "odd""name")"#);
        let n = names(&s);
        assert!(n.quorum && n.num == 1);
        assert!(n.matches("pg-b") && n.matches("odd\"name") && !n.matches("PG-B") && !n.any_standby());
        assert_eq!(render(0, &["a"]), r#"ANY 1 ("a")"#, "at least one");
    }

    #[test]
    fn every_form_postgres_accepts() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  ").unwrap(), None);
        let n = names("ANY 2 (a, B, c)");
        assert!(n.quorum && n.num == 2 && n.matches("b") && n.matches("A"));
        let n = names("first 1 (s1, s2)");
        assert!(!n.quorum && n.num == 1);
        let n = names("2 (s1, s2)");
        assert!(!n.quorum && n.num == 2);
        let n = names("s1, s2");
        assert!(!n.quorum && n.num == 1 && n.matches("s2") && !n.matches("s3"));
        let n = names("ANY 1 (*)");
        assert!(n.any_standby() && n.matches("whatever"));
        assert!(names("*").any_standby());
        assert!(names("\"*\"").matches("*") && !names("\"*\"").matches("x"), "a quoted star is a name");
    }

    #[test]
    fn broken_settings_are_errors() {
        for bad in ["ANY 1 (a", "ANY 1 ()", "a,", "ANY 1 (a,,b)", "\"open", "(a)"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
