//! Backup and restore of real CouchDB data through the local store: byte-identical round
//! trips, hot copies of files that change underneath, hostile archives, replaced targets.

mod common;

use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{fixture_checksums, restore_opts, sha256_file, tree, Env};
use couchvault::catalog;
use couchvault::engine::{self, backup::StreamSettings, Progress};
use couchvault::format::{self, BackupMetadata, FileEntry};
use couchvault::Error;

#[test]
fn fixture_round_trip_is_byte_identical() {
    // Small chunks and segments so the stream spans many of each.
    let env = Env::new(8 << 10);
    let meta = env.backup(4096);
    let sums = fixture_checksums();
    assert_eq!(meta.totals.files as usize, sums.len());
    // Copy order: view indexes, then the shard map, then the rest.
    assert!(meta.files[0].path.starts_with("data/.shards/"));
    let first_db = meta
        .files
        .iter()
        .position(|f| !f.path.starts_with("data/.shards/"))
        .unwrap();
    assert_eq!(meta.files[first_db].path, "data/_dbs.couch");

    let loaded = catalog::load(&env.store, &env.keyring, "default", &meta.backup_id).unwrap();
    engine::verify(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&loaded),
        &Progress::default(),
    )
    .unwrap();

    let target = env.path("restored");
    let report = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&loaded),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap();
    assert!(report.previous_kept.is_empty());
    let restored = tree(&target);
    assert_eq!(restored.len(), sums.len());
    for (path, (size, sha)) in &sums {
        let rel = path.strip_prefix("data/").unwrap();
        let file = target.join(rel);
        assert_eq!(fs::metadata(&file).unwrap().len(), *size, "{path}");
        assert_eq!(&sha256_file(&file), sha, "{path}");
    }
    // mtime and mode survive.
    let src = fs::metadata(env.data.join("_dbs.couch")).unwrap();
    let dst = fs::metadata(target.join("_dbs.couch")).unwrap();
    assert_eq!(src.modified().unwrap(), dst.modified().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        src.permissions().mode() & 0o777,
        dst.permissions().mode() & 0o777
    );
    // No staging directory is left beside the target.
    let leftovers: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("couchvault-staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Issue 18: the tar stream is compressed as independent 512 KiB zstd frames by several
/// threads that finish in any order; with one thread and with three, over data of many frames
/// (text that compresses and random bytes that do not, in stretches of uneven length, so the
/// threads' work differs), the restore is byte-identical; the metadata's `tar_size` is the tar
/// stream's length before compression (it recorded the compressed length before).
#[test]
fn compression_threads_keep_frames_in_order_and_record_the_tar_size() {
    let mut sums = fixture_checksums();
    let env = Env::new(1 << 20);
    let mut bulk = Vec::new();
    let mut seed = 18u64;
    for stretch in 0..40u64 {
        let len = 37_000 + (stretch * 7919) % 150_000;
        for i in 0..len {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bulk.push(if stretch % 3 == 0 {
                (seed >> 56) as u8
            } else {
                b"{\"_id\":\"doc\",\"n\":0123456789}\n"[(i % 28) as usize] ^ (stretch as u8 & 1)
            });
        }
    }
    fs::write(env.data.join("bulk.couch"), &bulk).unwrap();
    let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bulk));
    sums.insert("data/bulk.couch".into(), (bulk.len() as u64, hash));
    let file_bytes: u64 = sums.values().map(|(size, _)| size).sum();
    assert!(file_bytes > 8 * (512 << 10), "many frames: {file_bytes}");
    for workers in [1, 3] {
        let stream = StreamSettings {
            zstd_workers: workers,
            chunk_size: 4096,
            ..StreamSettings::default()
        };
        let meta = common::backup_with(&env.store, &env.keyring, &env.data, "node1", stream, true)
            .unwrap();
        // Every file's bytes, a 512-byte header each, padded to 512, and the end blocks.
        assert!(
            meta.data.tar_size > file_bytes,
            "{workers}: {:?}",
            meta.data
        );
        assert_eq!(meta.data.tar_size % 512, 0, "{workers}");
        assert!(meta.data.size < meta.data.tar_size, "{workers}: compressed");
        restore_matches(&env, &meta, &format!("{workers}"), &sums);
    }
}

/// Restores `meta` into `restored-{label}` and checks every file of `sums` (archive path:
/// size and SHA-256) there.
fn restore_matches(
    env: &Env,
    meta: &BackupMetadata,
    label: &str,
    sums: &std::collections::BTreeMap<String, (u64, String)>,
) {
    let target = env.path(&format!("restored-{label}"));
    engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(meta),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap();
    for (path, (size, sha)) in sums {
        let file = target.join(path.strip_prefix("data/").unwrap());
        assert_eq!(fs::metadata(&file).unwrap().len(), *size, "{label}: {path}");
        assert_eq!(&sha256_file(&file), sha, "{label}: {path}");
    }
}

/// Issue 18: a backup whose metadata names no `frame_size` (every backup made before
/// 2026-12-02: one zstd frame) is decompressed as a stream, not cut into frames; one that
/// names a frame size larger than a restore cuts is streamed too. Both restore byte-identical.
#[test]
fn backups_without_frames_restore_through_the_stream_decoder() {
    let env = Env::new(1 << 20);
    let sums = fixture_checksums();
    let made = env.backup(4096);
    assert_eq!(made.compression.frame_size, Some(512 << 10));
    let key = env
        .keyring
        .unlock(env.keyring.active("default").unwrap())
        .unwrap();
    for frame_size in [None, Some(1 << 30)] {
        let mut meta = made.clone();
        meta.compression.frame_size = frame_size;
        catalog::commit(&env.store, key.secret, &meta).unwrap();
        let meta = catalog::load(&env.store, &env.keyring, "default", &meta.backup_id).unwrap();
        assert_eq!(meta.compression.frame_size, frame_size);
        restore_matches(&env, &meta, &format!("{frame_size:?}"), &sums);
    }
}

#[test]
fn couchdb_config_discovery_backs_up_ini_files_and_restores_them_on_request() {
    let env = Env::new(1 << 20);
    let etc = env.path("etc");
    fs::create_dir_all(etc.join("local.d")).unwrap();
    fs::write(
        etc.join("default.ini"),
        "[couchdb]\ndatabase_dir = ./elsewhere\n",
    )
    .unwrap();
    fs::write(etc.join("local.ini"), "[couchdb]\ndatabase_dir = ./data\n").unwrap();
    fs::write(
        etc.join("local.d/admins.ini"),
        "[admins]\nadmin = -pbkdf2-x\n",
    )
    .unwrap();
    fs::write(etc.join("vm.args"), "-name couchdb@127.0.0.1\n").unwrap();
    let source = couchvault::couchdb::Source::discover(&couchvault::couchdb::SourceSpec {
        couchdb_config: Some(etc.clone()),
        ..Default::default()
    })
    .unwrap();
    let opts = engine::BackupOptions {
        id: None,
        // Synthetic files, no shard map.
        allow_incomplete: true,
        live: None,
        tenant: "default".into(),
        instance: "node1".into(),
        key_id: None,
        tags: Default::default(),
        stream: StreamSettings::default(),
        base: None,
    };
    let meta = engine::backup(
        &env.store,
        &env.keyring,
        &source,
        &opts,
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(meta.source.node_name.as_deref(), Some("couchdb@127.0.0.1"));
    let etc_files: Vec<_> = meta
        .files
        .iter()
        .filter(|f| f.path.starts_with("etc/"))
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        etc_files,
        [
            "etc/default.ini",
            "etc/local.ini",
            "etc/local.d/admins.ini",
            "etc/vm.args"
        ]
    );

    let mut opts = restore_opts(&env.path("r/data"));
    opts.config_target = Some(env.path("r/etc"));
    engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &opts,
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(env.path("r/etc/local.d/admins.ini")).unwrap(),
        "[admins]\nadmin = -pbkdf2-x\n"
    );
    assert_eq!(tree(&env.path("r/data")).len(), fixture_checksums().len());
}

/// Writes `len` bytes of the appender's deterministic content starting at `offset`.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i * 31 % 251) as u8)
        .collect()
}

#[test]
fn hot_copy_of_growing_and_swapped_files_restores_valid_prefixes() {
    let env = Env::new(64 << 20);
    let data = env.path("hot");
    fs::create_dir_all(data.join("shards/00000000-ffffffff")).unwrap();
    fs::write(data.join("_dbs.couch"), pattern(0, 4096)).unwrap();
    let growing = data.join("shards/00000000-ffffffff/a_growing.1.couch");
    fs::write(&growing, pattern(0, 1 << 20)).unwrap();
    let swapped = data.join("shards/00000000-ffffffff/z_swapped.1.couch");
    fs::write(&swapped, vec![0u8; 256 << 10]).unwrap();
    // Filler copied between the two, so both writers are busy during the copy.
    let mut rng = common::Rng(7);
    for i in 0..3 {
        let bytes: Vec<u8> = (0..(24 << 20)).map(|_| (rng.next() % 16) as u8).collect();
        fs::write(
            data.join(format!("shards/00000000-ffffffff/m_filler{i}.1.couch")),
            bytes,
        )
        .unwrap();
    }

    let stop = AtomicBool::new(false);
    let (meta, final_len, versions) = std::thread::scope(|s| {
        let appender = s.spawn(|| {
            let mut f = fs::OpenOptions::new().append(true).open(&growing).unwrap();
            let mut len = 1u64 << 20;
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&pattern(len, 4096)).unwrap();
                len += 4096;
                std::thread::sleep(Duration::from_micros(200));
            }
            len
        });
        let compactor = s.spawn(|| {
            // Like CouchDB compaction: write a new file beside, then rename over.
            let mut v = 0u8;
            while !stop.load(Ordering::Relaxed) {
                v = v.wrapping_add(1);
                let tmp = swapped.with_extension("couch.compact.data");
                fs::write(&tmp, vec![v; (256 << 10) + v as usize]).unwrap();
                fs::rename(&tmp, &swapped).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            v
        });
        std::thread::sleep(Duration::from_millis(20));
        let meta = env.backup_dir(&data, "hot", 1 << 20);
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        (meta, appender.join().unwrap(), compactor.join().unwrap())
    });
    assert!(versions > 1, "the compactor ran during the backup");
    assert!(
        meta.files.iter().all(|f| !f.path.contains(".compact")),
        "scratch files skipped"
    );

    let target = env.path("hot-restored");
    engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap();
    let got = fs::read(target.join("shards/00000000-ffffffff/a_growing.1.couch")).unwrap();
    assert!(
        got.len() as u64 >= 1 << 20 && (got.len() as u64) < final_len,
        "a prefix taken mid-growth: {} of {final_len}",
        got.len()
    );
    assert_eq!(
        got,
        pattern(0, got.len()),
        "an exact prefix of the appended file"
    );
    let sw = fs::read(target.join("shards/00000000-ffffffff/z_swapped.1.couch")).unwrap();
    let v = sw[0];
    assert!(
        sw.iter().all(|b| *b == v),
        "one whole version of the swapped file"
    );
    assert_eq!(
        sw.len(),
        if v == 0 {
            256 << 10
        } else {
            (256 << 10) + v as usize
        }
    );
}

#[test]
fn non_empty_target_is_refused_without_force_and_kept_on_failure_with_it() {
    let env = Env::new(1 << 20);
    let meta = env.backup(4096);
    let target = env.path("live");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("old.couch"), b"old data").unwrap();

    let err = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::TargetNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(tree(&target), ["old.couch"]);

    // A failure late in the stream (a flipped byte in the last chunk) with --force.
    let mut bytes = env.read_data(&meta);
    let good = bytes.clone();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    env.write_data(&meta, &bytes);
    let mut opts = restore_opts(&target);
    opts.force = true;
    let err = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &opts,
        &Progress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("failed authentication"), "{err}");
    assert_eq!(tree(&target), ["old.couch"]);
    assert_eq!(fs::read(target.join("old.couch")).unwrap(), b"old data");
    let siblings = tree(env.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("store/") && p.contains("couchvault-"))
        .count();
    assert_eq!(siblings, 0, "no staging or old copy left behind");

    // Repaired, --force swaps in the new data and keeps the old aside.
    env.write_data(&meta, &good);
    let report = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &opts,
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(tree(&target).len(), fixture_checksums().len());
    assert_eq!(report.previous_kept.len(), 1);
    assert_eq!(
        fs::read(report.previous_kept[0].join("old.couch")).unwrap(),
        b"old data"
    );

    // --discard-old removes the copy it moves aside once the new data is in place, and
    // never an older kept-aside directory.
    let first_kept = report.previous_kept[0].clone();
    opts.discard_old = true;
    let report = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &opts,
        &Progress::default(),
    )
    .unwrap();
    assert!(report.previous_kept.is_empty() && !report.already_restored);
    assert_eq!(fs::read(first_kept.join("old.couch")).unwrap(), b"old data");
    let kept = tree(env.dir.path())
        .into_iter()
        .filter(|p| p.contains("couchvault-old"))
        .count();
    assert_eq!(kept, 1, "only the first kept copy remains");
}

/// Builds a raw tar entry whose name bypasses the tar crate's own path checks.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

/// Seals `tar_bytes` as a validly encrypted, MAC'd, committed backup listing `files`.
fn commit_hostile(
    env: &Env,
    instance: &str,
    tar_bytes: Vec<u8>,
    files: Vec<FileEntry>,
) -> BackupMetadata {
    let key = env
        .keyring
        .unlock(env.keyring.active("default").unwrap())
        .unwrap();
    let id = ulid::Ulid::new();
    let (sealed, ()) = engine::backup::store_stream(
        &env.store,
        key,
        "default",
        instance,
        id,
        &StreamSettings::default(),
        |out| out.write_all(&tar_bytes).map_err(|e| Error::io("test", e)),
    )
    .unwrap();
    let now = chrono::Utc::now();
    let meta = BackupMetadata {
        format: format::FORMAT_VERSION,
        tool: "test".into(),
        backup_id: id.to_string(),
        tenant: "default".into(),
        instance: instance.into(),
        kind: format::Kind::Full,
        parent: None,
        prefix_check: None,
        started_at: now,
        finished_at: now,
        source: format::SourceInfo {
            hostname: None,
            node_name: None,
            shard_map_nodes: vec![],
            database_dir: "/x".into(),
            view_index_dir: None,
            config_dir: None,
            ini_files: vec![],
        },
        tags: Default::default(),
        compression: sealed.compression,
        encryption: sealed.encryption,
        data: sealed.data,
        totals: format::Totals {
            files: files.len() as u64,
            bytes: 0,
            stored_bytes: 0,
        },
        files,
        gone: vec![],
        vanished: vec![],
        incomplete: vec![],
        couchdb: None,
    };
    catalog::commit(&env.store, key.secret, &meta).unwrap();
    catalog::load(&env.store, &env.keyring, "default", &meta.backup_id).unwrap()
}

#[test]
fn hostile_tar_entries_are_refused_and_nothing_escapes_staging() {
    let env = Env::new(1 << 20);
    let outside = env.path("outside-marker");
    let ok_sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"fine"));
    let entry = |path: &str, sha: &str| FileEntry {
        path: path.into(),
        size: 4,
        mode: 0o644,
        mtime: 0,
        sha256: Some(sha.into()),
        ..Default::default()
    };
    let abs = outside.display().to_string();
    let cases: Vec<(&str, String, tar::EntryType, String, &str)> = vec![
        (
            "absolute",
            abs.clone(),
            tar::EntryType::Regular,
            String::new(),
            "absolute path",
        ),
        (
            "dotdot",
            "data/../../outside-marker".into(),
            tar::EntryType::Regular,
            String::new(),
            "'..'",
        ),
        (
            "symlink",
            "data/link".into(),
            tar::EntryType::Symlink,
            abs.clone(),
            "symbolic links",
        ),
        (
            "hardlink",
            "data/hard".into(),
            tar::EntryType::Link,
            abs.clone(),
            "hard links",
        ),
        (
            "device",
            "data/dev".into(),
            tar::EntryType::Char,
            String::new(),
            "device",
        ),
        (
            "fifo",
            "data/fifo".into(),
            tar::EntryType::Fifo,
            String::new(),
            "device and fifo",
        ),
        (
            "unlisted",
            "data/extra.couch".into(),
            tar::EntryType::Regular,
            String::new(),
            "not in the backup's file list",
        ),
    ];
    for (label, name, kind, link, expect) in cases {
        let mut tar = tar::Builder::new(Vec::new());
        // A good entry first: it must not reach the target either.
        raw_entry(
            &mut tar,
            "data/ok.couch",
            tar::EntryType::Regular,
            "",
            b"fine",
        );
        let body: &[u8] = if kind == tar::EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        raw_entry(&mut tar, &name, kind, &link, body);
        let bytes = tar.into_inner().unwrap();
        let mut files = vec![entry("data/ok.couch", &ok_sha)];
        if label != "unlisted" {
            files.push(entry(&name, &ok_sha));
        }
        let meta = commit_hostile(&env, label, bytes, files);

        let target = env.path(&format!("t-{label}"));
        let err = engine::restore(
            &env.store,
            &env.keyring,
            std::slice::from_ref(&meta),
            &restore_opts(&target),
            &Progress::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Hostile { .. }), "{label}: {err}");
        assert!(err.to_string().contains(expect), "{label}: {err}");
        let err = engine::verify(
            &env.store,
            &env.keyring,
            std::slice::from_ref(&meta),
            &Progress::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Hostile { .. }),
            "{label} verify: {err}"
        );
        assert!(!target.exists(), "{label}: target untouched");
        assert!(
            !outside.exists() && fs::symlink_metadata(&outside).is_err(),
            "{label}: nothing outside"
        );
        let stray: Vec<_> = tree(env.dir.path())
            .into_iter()
            // The key ring and its lock file (a commit holds it) are expected.
            .filter(|p| {
                !p.starts_with("store/") && !p.starts_with("data/") && !p.starts_with("keys.")
            })
            .collect();
        assert!(stray.is_empty(), "{label}: stray files {stray:?}");
    }
}

/// Issue 10, finding 5: a file list naming one file twice in two spellings (`data/x`,
/// `data/./x`) passed verify, and restore then refused it. Verify applies restore's rules.
#[test]
fn verify_refuses_a_file_list_that_restore_would_refuse() {
    let env = Env::new(1 << 20);
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"fine"));
    let entry = |path: &str| FileEntry {
        path: path.into(),
        size: 4,
        mode: 0o644,
        mtime: 0,
        sha256: Some(sha.clone()),
        ..Default::default()
    };
    for (label, second) in [
        ("dot", "data/./x.couch"),
        ("double-slash", "data//x.couch"),
        ("same", "data/x.couch"),
        ("prefix", "other/x.couch"),
    ] {
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(
            &mut tar,
            "data/x.couch",
            tar::EntryType::Regular,
            "",
            b"fine",
        );
        raw_entry(&mut tar, second, tar::EntryType::Regular, "", b"fine");
        let meta = commit_hostile(
            &env,
            label,
            tar.into_inner().unwrap(),
            vec![entry("data/x.couch"), entry(second)],
        );
        let verified = engine::verify(
            &env.store,
            &env.keyring,
            std::slice::from_ref(&meta),
            &Progress::default(),
        );
        let target = env.path(&format!("t-{label}"));
        let restored = engine::restore(
            &env.store,
            &env.keyring,
            std::slice::from_ref(&meta),
            &restore_opts(&target),
            &Progress::default(),
        );
        let (Err(v), Err(r)) = (&verified, &restored) else {
            panic!("{label}: verify {verified:?} and restore {restored:?} must both refuse");
        };
        assert!(matches!(v, Error::Hostile { .. }), "{label}: {v}");
        assert_eq!(v.to_string(), r.to_string(), "{label}: the same rule");
        assert!(!target.exists(), "{label}: target untouched");
    }
}
