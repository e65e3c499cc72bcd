//! The binary's own machine code in memory: once everything runs, the
//! code pages start-up touched are given back, and from then on only the
//! pages that run are mapped.
//!
//! Why: the kernel maps the pages around each page of code a process runs
//! (fault-around, 64 KiB by default), so starting grpc, TLS and the rest
//! leaves most of a 5 MB text segment mapped and counted in RSS, though
//! the idle loops run a small part of it. Those pages are clean copies of
//! the file: dropping them loses nothing, and a page needed again comes
//! back from the page cache on its next use (a minor fault).

use std::{ffi::c_void, path::Path, ptr::NonNull};

use nix::sys::mman::{MmapAdvise, madvise};

/// Drops the mapped pages of our executable's code segments and turns
/// fault-around off for them; returns how many bytes of mappings that
/// covered. Only `r-xp` mappings of the executable itself: code is never
/// written, unlike the read-only data that relocation wrote at start.
pub fn trim_code() -> usize {
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return 0;
    };
    let mut covered = 0;
    for (start, len) in maps.lines().filter_map(|l| code_mapping(l, &exe)) {
        let Some(addr) = NonNull::new(start as *mut c_void) else {
            continue;
        };
        // SAFETY: the range is a private, read-only mapping of the
        // executable file: its pages hold exactly the file's bytes, so
        // MADV_DONTNEED only unmaps them and the next access reads the
        // same bytes back. Nothing is freed or written.
        let done = unsafe {
            madvise(addr, len, MmapAdvise::MADV_RANDOM)
                .and_then(|()| madvise(addr, len, MmapAdvise::MADV_DONTNEED))
        };
        match done {
            Ok(()) => covered += len,
            Err(e) => log::debug!("cannot trim code pages: {e}"),
        }
    }
    covered
}

/// The start and length of `line` of /proc/self/maps when it maps code of
/// the file `exe`: `start-end r-xp offset dev inode path`.
fn code_mapping(line: &str, exe: &Path) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let path = fields.nth(3)?;
    if perms != "r-xp" || Path::new(path) != exe {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end.checked_sub(start)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_code_of_the_executable_is_chosen() {
        let exe = Path::new("/usr/bin/kp");
        let line = |s: &str| code_mapping(s, exe);
        assert_eq!(
            line("7f51ed1eb000-7f51ed668000 r-xp 001ea000 fe:00 5308446   /usr/bin/kp"),
            Some((0x7f51ed1eb000, 0x47d000))
        );
        // Read-only data (relocated at start), other files, anonymous maps.
        assert_eq!(
            line("7f51ed668000-7f51ed68e000 r--p 00666000 fe:00 5308446 /usr/bin/kp"),
            None
        );
        assert_eq!(
            line("7f51ed1eb000-7f51ed668000 r-xp 00000000 fe:00 1 /usr/lib/other"),
            None
        );
        assert_eq!(
            line("7f51e8000000-7f51e80db000 rw-p 00000000 00:00 0"),
            None
        );
        assert_eq!(line("garbage"), None);
    }

    /// In this very process: the code is still there to run after it.
    #[test]
    fn test_trimming_keeps_the_code_running() {
        assert!(trim_code() > 0, "no code mapping of the test binary found");
        assert_eq!(
            code_mapping("1-2 r-xp 0 0:0 0 /x", Path::new("/x")),
            Some((1, 1))
        );
    }
}
