//! Confinement of a registered instance's backups: every path actually opened (after ini
//! files are read and symbolic links resolved) must lie inside the directories the admin
//! registered. A CouchDB admin can rewrite `database_dir` through `_config`, and a tenant
//! may plant symbolic links in its data directory: both end here, with the file named.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::SourceError;

/// Canonical directories a backup may read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    roots: Vec<PathBuf>,
}

impl Confinement {
    /// The roots must exist: they are canonicalized once, here.
    pub fn new(dirs: &[PathBuf]) -> Result<Confinement, SourceError> {
        let roots = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|source| SourceError::Io {
                    path: d.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Confinement { roots })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn contains(&self, resolved: &Path) -> bool {
        self.roots.iter().any(|r| resolved.starts_with(r))
    }

    fn outside(&self, path: &Path, resolved: PathBuf) -> SourceError {
        SourceError::Outside {
            path: path.to_path_buf(),
            resolved,
            roots: self
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Resolves `path` (symbolic links included) and refuses it outside the roots.
    pub fn check(&self, path: &Path) -> Result<PathBuf, SourceError> {
        let resolved = std::fs::canonicalize(path).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if self.contains(&resolved) {
            Ok(resolved)
        } else {
            Err(self.outside(path, resolved))
        }
    }

    /// Opens `path` for reading and checks the file actually opened (by its descriptor,
    /// so a link swapped in between cannot redirect the read).
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let file = open_nonblocking(path)?;
        let resolved = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        if self.contains(&resolved) {
            Ok(file)
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                self.outside(path, resolved).to_string(),
            ))
        }
    }
}

/// Opens a file, confined when a confinement is given.
pub fn open(confine: Option<&Confinement>, path: &Path) -> io::Result<File> {
    match confine {
        Some(c) => c.open(path),
        None => open_nonblocking(path),
    }
}

/// Opens for reading without blocking: a FIFO swapped in for a data file must not hang the
/// backup (the caller skips anything but a regular file; regular files ignore the flag).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_the_roots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let inside = d.path().join("inside");
        let secret = d.path().join("secret");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("key"), b"s").unwrap();
        std::fs::write(inside.join("ok"), b"x").unwrap();
        std::os::unix::fs::symlink(secret.join("key"), inside.join("link")).unwrap();
        std::os::unix::fs::symlink(&secret, inside.join("dir")).unwrap();
        let c = Confinement::new(std::slice::from_ref(&inside)).unwrap();
        assert!(c.open(&inside.join("ok")).is_ok());
        for bad in [inside.join("link"), inside.join("dir/key")] {
            let e = c.open(&bad).unwrap_err().to_string();
            assert!(
                e.contains("outside the instance's registered directories"),
                "{e}"
            );
            assert!(c.check(&bad).is_err());
        }
    }
}
