//! Finding what to back up on a CouchDB node: its directories from the ini files, and the
//! files in the order a hot copy needs (view indexes, then database files, then config).

pub mod confine;
pub mod couchfile;
pub mod deep;
pub mod ejson;
pub mod etf;
pub mod http;
pub mod multipart;
pub mod shardmap;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the shard map {path}: {source}; pass --allow-incomplete to back up without the completeness check")]
    ShardMap {
        path: PathBuf,
        source: shardmap::ShardMapError,
    },
    #[error("the backup would be incomplete, and CouchDB would silently lose or empty databases after a restore; missing by the shard map: {}; fix the data directory (for a database deleted during the backup, run it again), or pass --allow-incomplete to back up anyway and record the gap", .gaps.join("; "))]
    Incomplete { gaps: Vec<String> },
    #[error("{what} {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not a directory")]
    NotDir { what: &'static str, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} resolves to {resolved}, outside the instance's registered directories ({roots}): refused, nothing was read from it (an ini setting or a symbolic link points elsewhere; if the node really moved, the admin registers the instance again)")]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        roots: String,
    },
    #[error("{path} does not look like a CouchDB data directory: it holds no _dbs.couch and no shards/ (point --data-dir or database_dir at the directory that does)")]
    NotCouchData { path: PathBuf },
    #[error("no CouchDB ini files in {dir}: expected default.ini and/or local.ini there")]
    NoIni { dir: PathBuf },
    #[error("{0}")]
    Spec(String),
    #[error("{path}:{line}: cannot parse ini line '{text}'")]
    IniSyntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a CouchDB node's data is: its config directory, or its data directory. The one
/// source type of the CLI (`--couchdb-config`/`--data-dir`), backups, schedules and
/// instances (their fields inline, by serde's flatten).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args, utoipa::ToSchema,
)]
#[group(skip)]
pub struct SourceSpec {
    /// CouchDB's config directory (e.g. /opt/couchdb/etc): the ini files name the data dirs.
    #[arg(long, value_name = "DIR", conflicts_with = "data_dir")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub couchdb_config: Option<PathBuf>,
    /// CouchDB's database_dir, when not read from the ini files.
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub data_dir: Option<PathBuf>,
    /// CouchDB's view_index_dir, when it differs from the data dir.
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub view_index_dir: Option<PathBuf>,
}

impl SourceSpec {
    /// No path at all: the request names a registered instance.
    pub fn is_empty(&self) -> bool {
        self.paths().next().is_none()
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.couchdb_config, &self.data_dir, &self.view_index_dir]
            .into_iter()
            .flatten()
    }

    /// One of `couchdb_config` and `data_dir`, every path absolute and without `..`.
    pub fn check_paths(&self) -> Result<(), SourceError> {
        if self.couchdb_config.is_some() == self.data_dir.is_some() {
            return Err(SourceError::Spec(
                "give couchdb_config or data_dir (one of them)".into(),
            ));
        }
        match self.paths().find(|p| {
            !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir)
        }) {
            Some(p) => Err(SourceError::Spec(format!(
                "{} must be an absolute path without '..'",
                p.display()
            ))),
            None => Ok(()),
        }
    }

    /// The same, with relative paths made absolute (a daemon does not share our directory).
    pub fn absolute(self) -> Result<SourceSpec, SourceError> {
        let abs = |p: Option<PathBuf>| {
            p.map(|p| std::path::absolute(&p).map_err(io_err(&p)))
                .transpose()
        };
        Ok(SourceSpec {
            couchdb_config: abs(self.couchdb_config)?,
            data_dir: abs(self.data_dir)?,
            view_index_dir: abs(self.view_index_dir)?,
        })
    }
}

/// A resolved CouchDB node on disk.
#[derive(Debug, Clone)]
pub struct Source {
    pub database_dir: PathBuf,
    /// Only when it differs from `database_dir`.
    pub view_index_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    /// Ini files in the order CouchDB reads them.
    pub ini_files: Vec<PathBuf>,
    pub node_name: Option<String>,
    /// For a registered instance: the only directories its files may be read from.
    pub confine: Option<confine::Confinement>,
    /// A cluster member's share: only these shard files (paths like
    /// `shards/<range>/<db><suffix>.couch`, relative to the database dir), their view
    /// indexes, the shard map and the config. None: the whole node.
    pub shards: Option<std::collections::BTreeSet<String>>,
}

impl Source {
    /// Checks the copy plan against the node's shard map (`_dbs.couch`, read offline): what
    /// it lacks (every shard file the map places on this node, and the map itself whenever
    /// shards are copied), and which nodes the map names. The node is this source's
    /// (`vm.args`), else the map's own when it names exactly one. An unreadable map is an
    /// error: without it nothing can be checked.
    pub fn check_map(&self, plan: &[PlannedFile]) -> Result<MapCheck, SourceError> {
        let present: std::collections::BTreeSet<String> = plan
            .iter()
            .filter_map(|f| f.archive_path.strip_prefix("data/"))
            .map(str::to_string)
            .collect();
        let map_path = self.database_dir.join("_dbs.couch");
        let map = if present.contains("_dbs.couch") {
            let file = self.open(&map_path).map_err(io_err(&map_path))?;
            Some(
                shardmap::read_file(file, &map_path).map_err(|source| SourceError::ShardMap {
                    path: map_path.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let nodes: Vec<String> = map
            .iter()
            .flatten()
            .flat_map(|db| db.by_range.values().flatten().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let node = match (&self.node_name, nodes.as_slice()) {
            (Some(n), _) => Some(n.clone()),
            (None, [only]) => Some(only.clone()),
            (None, _) => None,
        };
        let gaps = match &self.shards {
            // A share is complete when every file planned for it is there.
            Some(share) => shardmap::Gaps {
                no_shard_map: map.is_none(),
                missing: share
                    .iter()
                    .filter(|f| !present.contains(*f))
                    .map(|f| format!("planned shard {f}"))
                    .collect(),
            },
            None => shardmap::gaps(map.as_deref(), &present, node.as_deref()),
        };
        Ok(MapCheck { gaps, node, nodes })
    }
}

/// A copy plan checked against the shard map.
#[derive(Debug, Clone, Default)]
pub struct MapCheck {
    pub gaps: shardmap::Gaps,
    /// The node the data belongs to: `vm.args`'s, else the only node the map names.
    pub node: Option<String>,
    /// Every node the shard map names (sorted).
    pub nodes: Vec<String>,
}

/// One file to copy, with its path inside the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub source: PathBuf,
    pub archive_path: String,
}

fn require_dir(what: &'static str, path: &Path) -> Result<PathBuf, SourceError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
        Ok(_) => Err(SourceError::NotDir {
            what,
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SourceError::Missing {
            what,
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn looks_like_couch_data(dir: &Path) -> bool {
    dir.join("_dbs.couch").is_file() || dir.join("shards").is_dir()
}

/// Sorted directory entries; a missing directory is empty.
fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, SourceError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut v = rd.collect::<Result<Vec<_>, _>>().map_err(io_err(dir))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// The ini files of a config dir in CouchDB's order: default.ini, default.d/*.ini,
/// local.ini, local.d/*.ini. `COUCHDB_INI_FILES` (space-separated), when set, replaces it.
pub fn ini_files(
    config_dir: &Path,
    env_override: Option<&str>,
) -> Result<Vec<PathBuf>, SourceError> {
    if let Some(list) = env_override.filter(|s| !s.trim().is_empty()) {
        let files: Vec<PathBuf> = list.split_whitespace().map(PathBuf::from).collect();
        for f in &files {
            if !f.is_file() {
                return Err(SourceError::Missing {
                    what: "ini file (from COUCHDB_INI_FILES)",
                    path: f.clone(),
                });
            }
        }
        return Ok(files);
    }
    let mut files = Vec::new();
    for stem in ["default", "local"] {
        let single = config_dir.join(format!("{stem}.ini"));
        if single.is_file() {
            files.push(single);
        }
        for e in sorted_entries(&config_dir.join(format!("{stem}.d")))? {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "ini") && p.is_file() {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        return Err(SourceError::NoIni {
            dir: config_dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// The value of `[section] key` after reading all files in order (later wins).
pub fn ini_lookup(
    files: &[PathBuf],
    section: &str,
    key: &str,
) -> Result<Option<String>, SourceError> {
    let mut found = None;
    for path in files {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let mut current = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| SourceError::IniSyntax {
                        path: path.clone(),
                        line: i + 1,
                        text: raw.to_string(),
                    })?;
                current = name.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                // CouchDB ignores such lines too (continuations of multi-line values).
                continue;
            };
            if current == section && k.trim() == key {
                // Inline comments start with " ;".
                let v = v.split(" ;").next().unwrap_or("").trim();
                found = Some(v.to_string());
            }
        }
    }
    Ok(found)
}

/// The Erlang node name from `vm.args` (`-name couchdb@HOST` or `-sname`).
pub fn node_name(config_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(config_dir.join("vm.args")).ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        match parts.next() {
            Some("-name") | Some("-sname") => parts.next().map(str::to_string),
            _ => None,
        }
    })
}

impl Source {
    pub fn discover(spec: &SourceSpec) -> Result<Source, SourceError> {
        Self::discover_with_env(spec, std::env::var("COUCHDB_INI_FILES").ok().as_deref())
    }

    /// A registered instance's source: every directory and file it resolves to, and every
    /// file the backup opens later, must lie inside `confine`.
    pub fn discover_confined(
        spec: &SourceSpec,
        confine: confine::Confinement,
    ) -> Result<Source, SourceError> {
        Self::discover_in(
            spec,
            std::env::var("COUCHDB_INI_FILES").ok().as_deref(),
            Some(confine),
        )
    }

    pub fn discover_with_env(
        spec: &SourceSpec,
        ini_env: Option<&str>,
    ) -> Result<Source, SourceError> {
        Self::discover_in(spec, ini_env, None)
    }

    /// Opens one of the source's files for reading, confined for a registered instance.
    pub fn open(&self, path: &Path) -> io::Result<fs::File> {
        confine::open(self.confine.as_ref(), path)
    }

    fn discover_in(
        spec: &SourceSpec,
        ini_env: Option<&str>,
        confine: Option<confine::Confinement>,
    ) -> Result<Source, SourceError> {
        // Checked before it is read: an ini file or vm.args may be a link out.
        let check = |p: &Path| -> Result<(), SourceError> {
            match &confine {
                Some(c) => c.check(p).map(drop),
                None => Ok(()),
            }
        };
        let (database_dir, mut view_index_dir, config_dir, ini_files, node_name) =
            match &spec.couchdb_config {
                Some(cfg) => {
                    let cfg = require_dir("CouchDB config directory", cfg)?;
                    check(&cfg)?;
                    let files = ini_files(&cfg, ini_env)?;
                    for f in &files {
                        check(f)?;
                    }
                    // Relative paths in the ini files are relative to the install root, the
                    // parent of etc/.
                    let root = cfg.parent().unwrap_or(Path::new("/")).to_path_buf();
                    let resolve = |v: Option<String>| -> PathBuf {
                        let p = PathBuf::from(v.unwrap_or_else(|| "./data".into()));
                        if p.is_absolute() {
                            p
                        } else {
                            root.join(p)
                        }
                    };
                    let db = resolve(ini_lookup(&files, "couchdb", "database_dir")?);
                    // CouchDB keeps indexes beside the databases unless told otherwise.
                    let views = match ini_lookup(&files, "couchdb", "view_index_dir")? {
                        Some(v) => resolve(Some(v)),
                        None => db.clone(),
                    };
                    let vm_args = cfg.join("vm.args");
                    if vm_args.exists() {
                        check(&vm_args)?;
                    }
                    let node = node_name(&cfg);
                    (db, Some(views), Some(cfg), files, node)
                }
                None => {
                    let db = spec.data_dir.clone().ok_or_else(|| SourceError::Missing {
                        what: "data directory (give --data-dir or --couchdb-config)",
                        path: PathBuf::new(),
                    })?;
                    (db, None, None, Vec::new(), None)
                }
            };
        if let Some(v) = &spec.view_index_dir {
            view_index_dir = Some(v.clone());
        }
        let database_dir = require_dir("CouchDB data directory", &database_dir)?;
        check(&database_dir)?;
        let database_dir = fs::canonicalize(&database_dir).map_err(io_err(&database_dir))?;
        if !looks_like_couch_data(&database_dir) {
            return Err(SourceError::NotCouchData { path: database_dir });
        }
        let view_index_dir = match view_index_dir {
            Some(v) => {
                let v = require_dir("CouchDB view index directory", &v)?;
                check(&v)?;
                let v = fs::canonicalize(&v).map_err(io_err(&v))?;
                (v != database_dir).then_some(v)
            }
            None => None,
        };
        Ok(Source {
            database_dir,
            view_index_dir,
            config_dir,
            ini_files,
            node_name,
            confine,
            shards: None,
        })
    }

    /// Files in copy order: view indexes, node-level database files (`_dbs.couch` first
    /// among them), shard files, then the config files. With a share ([`Source::shards`]),
    /// only its shard files and their indexes of the data.
    pub fn plan(&self) -> Result<Vec<PlannedFile>, SourceError> {
        let mut out = self.plan_all()?;
        if let Some(share) = &self.shards {
            out.retain(|f| in_share(share, &f.archive_path));
        }
        Ok(out)
    }

    fn plan_all(&self) -> Result<Vec<PlannedFile>, SourceError> {
        let mut out = Vec::new();
        match &self.view_index_dir {
            Some(v) => walk(&v.join(".shards"), "views/.shards", &mut out)?,
            None => walk(&self.database_dir.join(".shards"), "data/.shards", &mut out)?,
        }
        let mut top_files = Vec::new();
        let mut top_dirs = Vec::new();
        for e in sorted_entries(&self.database_dir)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".shards" || skip_name(&name) {
                continue;
            }
            let ft = e.file_type().map_err(io_err(&e.path()))?;
            if ft.is_dir() {
                top_dirs.push(name);
            } else if ft.is_file() {
                top_files.push(name);
            }
        }
        // The shard map first: it must never name a shard that the backup lacks.
        top_files.sort_by_key(|n| (n != "_dbs.couch", n.clone()));
        for name in top_files {
            out.push(PlannedFile {
                source: self.database_dir.join(&name),
                archive_path: format!("data/{name}"),
            });
        }
        for name in top_dirs {
            walk(
                &self.database_dir.join(&name),
                &format!("data/{name}"),
                &mut out,
            )?;
        }
        if let Some(cfg) = &self.config_dir {
            for (i, f) in self.ini_files.iter().enumerate() {
                let archive_path = match f.strip_prefix(cfg) {
                    Ok(rel) => format!("etc/{}", rel.to_string_lossy()),
                    Err(_) => format!(
                        "etc/extra/{i:02}-{}",
                        f.file_name().unwrap_or_default().to_string_lossy()
                    ),
                };
                out.push(PlannedFile {
                    source: f.clone(),
                    archive_path,
                });
            }
            let vm_args = cfg.join("vm.args");
            if vm_args.is_file() {
                out.push(PlannedFile {
                    source: vm_args,
                    archive_path: "etc/vm.args".into(),
                });
            }
        }
        Ok(out)
    }
}

/// Whether a planned file (by its archive path) belongs to a cluster member's share.
fn in_share(share: &std::collections::BTreeSet<String>, archive_path: &str) -> bool {
    if archive_path.starts_with("etc/") || archive_path == "data/_dbs.couch" {
        return true;
    }
    let Some(rel) = archive_path
        .strip_prefix("data/")
        .or_else(|| archive_path.strip_prefix("views/"))
    else {
        return false;
    };
    match rel.strip_prefix(".shards/") {
        // `<range>/<db><suffix>_design/mrview/<sig>.view`: the last `_design/` ends the
        // shard's name (a database's own name may hold one).
        Some(index) => index
            .rsplit_once("_design/")
            .is_some_and(|(stem, _)| share.contains(&format!("shards/{stem}.couch"))),
        None => share.contains(rel),
    }
}

#[cfg(test)]
mod share_tests {
    #[test]
    fn a_share_keeps_its_shards_their_indexes_the_map_and_the_config() {
        let share = ["shards/00000000-7fffffff/a_design/b.1795703450.couch".to_string()]
            .into_iter()
            .collect();
        for (path, kept) in [
            (
                "data/shards/00000000-7fffffff/a_design/b.1795703450.couch",
                true,
            ),
            (
                "data/shards/80000000-ffffffff/a_design/b.1795703450.couch",
                false,
            ),
            (
                "data/.shards/00000000-7fffffff/a_design/b.1795703450_design/mrview/1f.view",
                true,
            ),
            (
                "views/.shards/00000000-7fffffff/a_design/b.1795703450_design/mrview/1f.view",
                true,
            ),
            (
                "data/.shards/80000000-ffffffff/a_design/b.1795703450_design/mrview/1f.view",
                false,
            ),
            ("data/_dbs.couch", true),
            ("data/_nodes.couch", false),
            ("etc/local.ini", true),
        ] {
            assert_eq!(super::in_share(&share, path), kept, "{path}");
        }
    }
}

/// Bytes of the planned files as they are now.
pub fn total_size(plan: &[PlannedFile]) -> u64 {
    plan.iter()
        .filter_map(|f| fs::metadata(&f.source).ok())
        .map(|m| m.len())
        .sum()
}

/// `.delete/` holds deleted databases; `*.compact*` are compaction scratch files.
fn skip_name(name: &str) -> bool {
    name == ".delete" || name.ends_with(".compact") || name.contains(".compact.")
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<PlannedFile>) -> Result<(), SourceError> {
    for e in sorted_entries(dir)? {
        let name = e.file_name().to_string_lossy().into_owned();
        if skip_name(&name) {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().map_err(io_err(&path))?;
        let archive_path = format!("{prefix}/{name}");
        if ft.is_dir() {
            walk(&path, &archive_path, out)?;
        } else if ft.is_file() {
            out.push(PlannedFile {
                source: path,
                archive_path,
            });
        } else {
            tracing::warn!(path = %path.display(), "skipping: not a regular file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn ini_order_and_relative_dirs() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir_all(etc.join("local.d")).unwrap();
        fs::write(
            etc.join("default.ini"),
            "[couchdb]\ndatabase_dir = ./data\nview_index_dir = ./data\n",
        )
        .unwrap();
        fs::write(
            etc.join("local.ini"),
            "; c\n[couchdb]\ndatabase_dir = ./wrong\n",
        )
        .unwrap();
        fs::write(etc.join("local.d/10-x.ini"), "[couchdb]\ndatabase_dir = ./db ; comment\nview_index_dir = ./db\n[other]\ndatabase_dir = ./no\n").unwrap();
        fs::write(etc.join("vm.args"), "-name couchdb@127.0.0.1\n").unwrap();
        touch(&root.path().join("db/_dbs.couch"));
        let src = Source::discover_with_env(
            &SourceSpec {
                couchdb_config: Some(etc.clone()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(src.database_dir.ends_with("db"));
        assert_eq!(src.node_name.as_deref(), Some("couchdb@127.0.0.1"));
        assert_eq!(src.ini_files.len(), 3);
        assert!(src.view_index_dir.is_none(), "same dir as the databases");
    }

    #[test]
    fn plan_order_and_skips() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path();
        for p in [
            "_nodes.couch",
            "_dbs.couch",
            "_users.couch",
            "shards/00-7f/a.1.couch",
            "shards/00-7f/a.1.couch.compact.data",
            "shards/00-7f/a.1.couch.compact.meta",
            ".delete/old.couch",
            ".shards/00-7f/a.1_design/mrview/x.view",
            ".shards/00-7f/a.1_design/mrview/x.compact.view",
        ] {
            touch(&data.join(p));
        }
        let src = Source::discover_with_env(
            &SourceSpec {
                data_dir: Some(data.to_path_buf()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let order: Vec<_> = src
            .plan()
            .unwrap()
            .into_iter()
            .map(|f| f.archive_path)
            .collect();
        assert_eq!(
            order,
            [
                "data/.shards/00-7f/a.1_design/mrview/x.view",
                "data/_dbs.couch",
                "data/_nodes.couch",
                "data/_users.couch",
                "data/shards/00-7f/a.1.couch",
            ]
        );
    }

    #[test]
    fn not_couch_data() {
        let d = tempfile::tempdir().unwrap();
        let err = Source::discover_with_env(
            &SourceSpec {
                data_dir: Some(d.path().to_path_buf()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("does not look like a CouchDB data directory"));
    }
}
