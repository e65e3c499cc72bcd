//! Shell globs for `--device` patterns: `*`, `?` and `[...]` classes with
//! ranges and `!`/`^` negation, matched against one path component; a
//! name starting with `.` matches only a glob that starts with `.`, as in
//! the shell.

/// Checks a glob's syntax: every `[` closed.
pub fn check_glob(glob: &str) -> std::result::Result<(), String> {
    let b = glob.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let end = class_end(b, i).ok_or_else(|| format!("unclosed '[' in {glob:?}"))?;
            i = end;
        }
        i += 1;
    }
    Ok(())
}

/// The index of the `]` closing the class that opens at `open`.
fn class_end(b: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if i < b.len() && (b[i] == b'!' || b[i] == b'^') {
        i += 1;
    }
    // A `]` first in the class is a member.
    if i < b.len() && b[i] == b']' {
        i += 1;
    }
    (i..b.len()).find(|&j| b[j] == b']')
}

/// Whether `name` matches the shell glob `glob` (`*`, `?`, `[...]` with
/// ranges and `!`/`^` negation). As in the shell, a name starting with `.`
/// matches only a glob starting with `.`.
pub fn glob_match(glob: &str, name: &str) -> bool {
    if name.starts_with('.') && !glob.starts_with('.') {
        return false;
    }
    matches(glob.as_bytes(), name.as_bytes())
}

fn matches(g: &[u8], n: &[u8]) -> bool {
    let (mut gi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is retried from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match g.get(gi) {
            Some(b'*') => {
                star = Some((gi, ni));
                gi += 1;
                continue;
            }
            Some(b'?') => Some(gi + 1),
            Some(b'[') => class_end(g, gi).and_then(|end| {
                let (negate, from) = match g.get(gi + 1) {
                    Some(b'!' | b'^') => (true, gi + 2),
                    _ => (false, gi + 1),
                };
                let set = &g[from..end];
                let mut hit = false;
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == b'-' {
                        hit |= (set[k]..=set[k + 2]).contains(&n[ni]);
                        k += 3;
                    } else {
                        hit |= set[k] == n[ni];
                        k += 1;
                    }
                }
                (hit != negate).then_some(end + 1)
            }),
            Some(&c) if c == n[ni] => Some(gi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                gi = next;
                ni += 1;
            }
            (None, Some((sg, sn))) => {
                gi = sg + 1;
                ni = sn + 1;
                star = Some((sg, sn + 1));
            }
            (None, None) => return false,
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_globs_like_the_shell() {
        for (g, n, want) in [
            ("ttyUSB*", "ttyUSB0", true),
            ("ttyUSB*", "ttyUSB", true),
            ("ttyUSB*", "ttyACM0", false),
            ("video[0-9]*", "video12", true),
            ("video[0-9]*", "videox", false),
            ("video[!0-9]*", "videox", true),
            ("tty?", "tty1", true),
            ("tty?", "tty10", false),
            ("*", ".hidden", false),
            (".*", ".hidden", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("[]]x", "]x", true),
            ("tun", "tun", true),
        ] {
            assert_eq!(glob_match(g, n), want, "{g} {n}");
        }
    }

    #[test]
    fn test_unclosed_classes_are_refused() {
        assert!(check_glob("video[0-9]*").is_ok());
        assert!(check_glob("[]]x").is_ok());
        assert_eq!(
            check_glob("video[0-9").unwrap_err(),
            "unclosed '[' in \"video[0-9\""
        );
    }
}
