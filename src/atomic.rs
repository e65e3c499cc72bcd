//! Writing a file atomically: to a dot-named temp file beside it (mode 0644
//! whatever the umask), then renamed over it, so a reader that watches the
//! dir (a container runtime, node_exporter) never sees half a file, and
//! skips the temp file (a dot name, not ending in `.json`, `.yaml` or
//! `.prom`). Used for the CDI specs and the metrics file.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Writes `content` to `path` atomically. With `durable`, the file and its
/// dir are synced too, so the new content survives a crash (a CDI spec);
/// without, a crash may keep the old one (metrics, rewritten anyway). A
/// failure leaves the old file and no temp file.
pub fn write(path: &Path, content: &[u8], durable: bool) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(content)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        match path.parent() {
            Some(dir) if durable => File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all(),
            _ => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
