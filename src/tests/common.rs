//! What the end-to-end test targets share: temp dirs for one plugin run.

use std::path::PathBuf;

/// A temp dir with the three dirs a plugin needs: the device plugin dir,
/// the dev dir and the CDI dir. Removed on drop.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub plugin: PathBuf,
    pub dev: PathBuf,
    pub cdi: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new().prefix("kp-").tempdir().unwrap();
    let (plugin, dev, cdi) = (
        tmp.path().join("dp"),
        tmp.path().join("dev"),
        tmp.path().join("cdi"),
    );
    for d in [&plugin, &dev, &cdi] {
        std::fs::create_dir(d).unwrap();
    }
    Dirs {
        tmp,
        plugin,
        dev,
        cdi,
    }
}
