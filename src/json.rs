//! JSON string literals, for the two JSON files the crate writes by hand
//! (CDI specs and `kubelet-sim bench` results) without a JSON library.

use std::fmt::Write as _;

/// `s` as a JSON string literal, quoted and escaped.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
