//! The admin's TOML files (`schedules/*.toml`, `instances/*.toml`): read sorted, each
//! versioned, errors naming the file and line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {line}{message}")]
    Syntax {
        path: PathBuf,
        /// `line N: ` when known.
        line: String,
        message: String,
    },
    #[error("{path}: {field} = {found} is not supported (this couchvault reads 1)")]
    Version {
        path: PathBuf,
        field: &'static str,
        found: u32,
    },
}

/// The `*.toml` files of `dir`, sorted, with their text.
pub fn toml_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, FileError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Read { path, source }
    };
    let rd = std::fs::read_dir(dir).map_err(read(dir))?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(read(&f))?;
            Ok((f, text))
        })
        .collect()
}

/// Parses one file, an error saying where.
pub fn parse_toml<T: DeserializeOwned>(f: &Path, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError::Syntax {
        path: f.to_path_buf(),
        line: e
            .span()
            .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default(),
        message: e.message().to_string(),
    })
}

pub fn check_version(f: &Path, field: &'static str, found: u32) -> Result<(), FileError> {
    match found {
        1 => Ok(()),
        found => Err(FileError::Version {
            path: f.to_path_buf(),
            field,
            found,
        }),
    }
}
