//! The `.couch` reader against the real CouchDB 3.5 fixture (every shard file, checked
//! against what CouchDB itself answered when the fixture was made: document counts, leaf
//! revisions, winners, conflicts, attachments and their digests, local documents,
//! `_security`), and against damaged and hostile files (errors, never panics).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use common::{fixtures, unpack_fixture, Rng};
use couchvault::couchdb::couchfile::{CouchFile, DocInfo};
use couchvault::couchdb::ejson;
use serde_json::Value;

fn open(path: &Path) -> CouchFile {
    CouchFile::new(std::fs::File::open(path).unwrap()).unwrap()
}

/// Every document of a database, from all its shard files.
fn docs_of(data: &Path, db: &str, suffix: &str) -> BTreeMap<String, (DocInfo, CouchFile)> {
    let mut out = BTreeMap::new();
    for range in std::fs::read_dir(data.join("shards")).unwrap() {
        let path = range.unwrap().path().join(format!("{db}{suffix}.couch"));
        if !path.exists() {
            continue;
        }
        let f = open(&path);
        let header = f.db_header().unwrap();
        let mut docs = Vec::new();
        f.fold_docs(&header, &mut |d| {
            docs.push(d);
            Ok(())
        })
        .unwrap();
        for d in docs {
            out.insert(d.id.clone(), (d, open(&path)));
        }
    }
    out
}

#[test]
fn every_fixture_database_reads_as_couchdb_answered() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_fixture(dir.path());
    let text = std::fs::read_to_string(fixtures().join("couchdb-3-datadir.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let mut attachments_checked = 0;
    for (db, want) in expected["databases"].as_object().unwrap() {
        let suffix = want["shard_suffix"].as_str().unwrap();
        let docs = docs_of(&data, db, suffix);
        let live = docs.values().filter(|(d, _)| !d.deleted).count() as u64;
        let deleted = docs.values().filter(|(d, _)| d.deleted).count() as u64;
        assert_eq!(live, want["doc_count"].as_u64().unwrap(), "{db}: doc_count");
        assert_eq!(
            deleted,
            want["doc_del_count"].as_u64().unwrap(),
            "{db}: doc_del_count"
        );
        for (id, w) in want["docs"].as_object().unwrap() {
            let (doc, file) = &docs[id];
            let mut leaves: Vec<&str> = doc.leaves.iter().map(|l| l.rev.as_str()).collect();
            let mut want_leaves: Vec<&str> = w["leaf_revs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            leaves.sort();
            want_leaves.sort();
            assert_eq!(leaves, want_leaves, "{db}/{id}: leaves");
            assert_eq!(doc.deleted, w["deleted"] == true, "{db}/{id}: deleted");
            if let Some(winner) = w["winning_rev"].as_str() {
                assert_eq!(doc.winner().rev, winner, "{db}/{id}: winner");
            }
            let conflicts: Vec<&str> = doc.conflicts().map(|l| l.rev.as_str()).collect();
            let want_conflicts: Vec<&str> = w["conflicts"]
                .as_array()
                .map(|c| c.iter().map(|r| r.as_str().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(conflicts, want_conflicts, "{db}/{id}: conflicts");
            let winner = doc.winner();
            assert_eq!(winner.path[0], winner.rev.split_once('-').unwrap().1);
            assert_eq!(
                winner.path.len() as u64,
                winner.pos(),
                "{db}/{id}: full history kept"
            );
            if doc.deleted {
                continue;
            }
            // The body is JSON; the attachments' bytes match CouchDB's digests.
            let (body, atts) = file.doc_body(winner.body_ptr.unwrap()).unwrap();
            let json: Value = serde_json::from_str(&ejson::to_json(&body).unwrap()).unwrap();
            assert!(json.is_object(), "{db}/{id}: {json}");
            let want_atts = w["attachments"].as_object().cloned().unwrap_or_default();
            assert_eq!(atts.len(), want_atts.len(), "{db}/{id}: attachments");
            for att in &atts {
                let wa = &want_atts[&att.name];
                assert_eq!(att.content_type, wa["content_type"].as_str().unwrap());
                assert_eq!(att.att_len, wa["length"].as_u64().unwrap());
                assert_eq!(att.revpos, wa["revpos"].as_u64().unwrap());
                assert_eq!(att.encoding, wa["encoding"].as_str().unwrap_or("identity"));
                let mut bytes = Vec::new();
                file.attachment(att, &mut |b| {
                    bytes.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
                let digest = base64::engine::general_purpose::STANDARD.encode(&att.md5);
                assert_eq!(format!("md5-{digest}"), wa["digest"].as_str().unwrap());
                assert_eq!(
                    bytes.len() as u64,
                    wa["encoded_length"].as_u64().unwrap_or(att.att_len)
                );
                attachments_checked += 1;
            }
        }
    }
    assert_eq!(attachments_checked, 3);
}

#[test]
fn headers_security_and_local_docs() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_fixture(dir.path());
    let mut locals = Vec::new();
    let mut docs = 0;
    for range in ["00000000-7fffffff", "80000000-ffffffff"] {
        let f = open(&data.join(format!("shards/{range}/fixture_basic.1795703450.couch")));
        let h = f.db_header().unwrap();
        assert!((6..=8).contains(&h.disk_version), "{h:?}");
        docs += h.doc_count + h.doc_del_count;
        let sec = ejson::to_json(&f.security(&h).unwrap().unwrap()).unwrap();
        let sec: Value = serde_json::from_str(&sec).unwrap();
        assert_eq!(sec["admins"]["names"][0], "fixture_admin", "{sec}");
        assert_eq!(sec["members"]["roles"][0], "fixture_reader", "{sec}");
        f.fold_local_docs(&h, &mut |id, _| {
            locals.push(id);
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(docs, 10, "header reductions: 8 live + 2 deleted");
    assert_eq!(locals, vec!["_local/checkpoint-1".to_string()]);
    // Properties: only the partitioned database says so; the default revs limit.
    for (db, partitioned) in [
        ("fixture_partitioned.1795703453", true),
        ("fixture_basic.1795703450", false),
    ] {
        let f = open(&data.join(format!("shards/00000000-7fffffff/{db}.couch")));
        let h = f.db_header().unwrap();
        assert_eq!(f.partitioned(&h).unwrap(), partitioned, "{db}");
        assert_eq!(h.revs_limit, Some(1000), "{db}");
    }
}

/// Every file of the fixture, damaged a thousand ways (bytes flipped, cut short, garbage
/// appended): reading it whole gives an error or a result, never a panic or a hang.
#[test]
fn damaged_and_hostile_files_give_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_fixture(dir.path());
    let originals: Vec<Vec<u8>> = [
        "shards/00000000-7fffffff/fixture_basic.1795703450.couch",
        "_dbs.couch",
    ]
    .iter()
    .map(|p| std::fs::read(data.join(p)).unwrap())
    .collect();
    let mut rng = Rng(7);
    let path = dir.path().join("damaged.couch");
    let mut errors = 0;
    for round in 0..600 {
        let mut bytes = originals[round % originals.len()].clone();
        match round % 3 {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            _ => {
                let at = rng.below(bytes.len() as u64) as usize;
                let end = (at + 64).min(bytes.len());
                for b in &mut bytes[at..end] {
                    *b = rng.below(256) as u8;
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        if read_everything(&path).is_err() {
            errors += 1;
        }
    }
    // Damage to superseded parts of an append-only file, or a cut that leaves an earlier
    // valid header, reads as CouchDB would read it: only damage to what is live is an error.
    assert!(errors > 20, "damage was noticed: {errors} of 600");
    // Hand-made: a header whose tree points at itself, absurd lengths.
    std::fs::write(&path, [1u8, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(read_everything(&path).is_err());
}

/// An attachment whose chunk list names one chunk over and over (a hostile file) is an
/// error once it adds up to more than the file, not gigabytes read and held.
#[test]
fn an_attachment_cannot_read_more_than_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_fixture(dir.path());
    for range in ["00000000-7fffffff", "80000000-ffffffff"] {
        let f = open(&data.join(format!("shards/{range}/fixture_basic.1795703450.couch")));
        let h = f.db_header().unwrap();
        let mut found = None;
        f.fold_docs(&h, &mut |d| {
            if let Some(p) = d.winner().body_ptr.filter(|_| !d.deleted) {
                let (_, atts) = f.doc_body(p).unwrap();
                found = found
                    .take()
                    .or(atts.into_iter().find(|a| a.encoding == "identity"));
            }
            Ok(())
        })
        .unwrap();
        let Some(mut att) = found else { continue };
        let chunk = att.chunks[0];
        att.chunks = vec![chunk; 100_000];
        att.disk_len = chunk.1 * 100_000;
        let mut read = 0u64;
        let e = f
            .attachment(&att, &mut |b| {
                read += b.len() as u64;
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("more than the file holds"), "{e}");
        assert!(
            read <= f.len(),
            "{read} bytes read from a {}-byte file",
            f.len()
        );
        return;
    }
    panic!("no attachment in the fixture");
}

/// Reads every document, body, attachment and local document of a file.
fn read_everything(path: &Path) -> couchvault::couchdb::couchfile::Result<()> {
    let f = open(path);
    let h = f.db_header()?;
    let mut infos = Vec::new();
    f.fold_docs(&h, &mut |d| {
        infos.push(d);
        Ok(())
    })?;
    for d in infos {
        for leaf in &d.leaves {
            if let Some(p) = leaf.body_ptr {
                let (body, atts) = f.doc_body(p)?;
                let _ = ejson::to_json(&body);
                for a in atts {
                    f.attachment(&a, &mut |_| Ok(()))?;
                }
            }
        }
    }
    f.security(&h)?;
    f.fold_local_docs(&h, &mut |_, _| Ok(()))
}

/// Flips one byte inside the item stored at `pos` (past its length and checksum).
fn damage_item(path: &Path, pos: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut at = pos as usize + 24;
    if at % 4096 == 0 {
        at += 1;
    }
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// `backup verify --deep` of backups of damaged files names each damage (file, offset,
/// document, attachment) and fails; `backup databases` reads only headers and lists them.
#[test]
fn deep_verify_names_damaged_bodies_trees_attachments_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = unpack_fixture(cwd);
    let id_of = |out: &str| -> String {
        let v: Value = serde_json::from_str(out).unwrap();
        v["backup_id"].as_str().unwrap().to_string()
    };
    let backup = || {
        id_of(&common::ok(
            cwd,
            &[
                "--json",
                "backup",
                "create",
                "--instance",
                "n1",
                "--data-dir",
                "data",
            ],
        ))
    };
    // A clean backup verifies deep, and lists its databases.
    let clean = backup();
    let out = common::ok(cwd, &["backup", "verify", "--deep", &clean]);
    assert!(
        out.contains("database file(s) read whole") && out.contains("3 attachments"),
        "{out}"
    );
    let listed: Value =
        serde_json::from_str(&common::ok(cwd, &["--json", "backup", "databases", &clean])).unwrap();
    let basic = listed["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "fixture_basic")
        .unwrap()
        .clone();
    assert_eq!(
        (basic["doc_count"].as_u64(), basic["doc_del_count"].as_u64()),
        (Some(8), Some(2))
    );

    // Find a document body, the by-id root and an attachment chunk in fixture_basic's shards.
    let mut body = None;
    let mut att = None;
    let mut root = None;
    for range in ["00000000-7fffffff", "80000000-ffffffff"] {
        let rel = format!("shards/{range}/fixture_basic.1795703450.couch");
        let f = open(&data.join(&rel));
        let h = f.db_header().unwrap();
        root.get_or_insert((rel.clone(), h.id_root.unwrap()));
        f.fold_docs(&h, &mut |d| {
            let ptr = d.winner().body_ptr;
            if let Some(p) = ptr.filter(|_| !d.deleted) {
                let (_, atts) = f.doc_body(p).unwrap();
                match atts.first() {
                    Some(a) if att.is_none() => {
                        att = Some((rel.clone(), d.id.clone(), a.name.clone(), a.chunks[0].0))
                    }
                    None if body.is_none() => body = Some((rel.clone(), d.id.clone(), p)),
                    _ => {}
                }
            }
            Ok(())
        })
        .unwrap();
    }
    let (body_file, body_doc, body_ptr) = body.unwrap();
    let (att_file, att_doc, att_name, att_ptr) = att.unwrap();
    let (root_file, root_ptr) = root.unwrap();

    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "a corrupted document body",
            Box::new(|| damage_item(&data.join(&body_file), body_ptr)),
            vec![
                format!("document {body_doc}"),
                format!("checksum mismatch in the item at {body_ptr}"),
            ],
        ),
        (
            "a damaged attachment",
            Box::new(|| damage_item(&data.join(&att_file), att_ptr)),
            vec![
                format!("document {att_doc}"),
                format!("attachment '{att_name}'"),
            ],
        ),
        (
            "a damaged B-tree node",
            Box::new(|| damage_item(&data.join(&root_file), root_ptr)),
            vec![format!("by-id tree: node at {root_ptr}: ")],
        ),
        (
            "a file cut before its first header",
            Box::new(|| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(data.join("shards/00000000-ffffffff/fixture_q1.1795703453.couch"))
                    .unwrap();
                f.set_len(2000).unwrap();
            }),
            vec!["fixture_q1.1795703453.couch: no valid header".to_string()],
        ),
    ];
    for (what, damage, want) in cases {
        // Each case on a fresh copy of the fixture.
        std::fs::remove_dir_all(&data).unwrap();
        unpack_fixture(cwd);
        damage();
        let id = backup();
        let (code, out, err) = common::cli_with_env(cwd, &["backup", "verify", "--deep", &id], &[]);
        assert_eq!(code, Some(1), "{what}: {out}{err}");
        for w in &want {
            assert!(out.contains(w.as_str()), "{what}: want '{w}' in:\n{out}");
        }
        assert!(
            out.contains("DAMAGED") && err.contains("problem(s)"),
            "{what}: {out}{err}"
        );
    }
    assert!(
        !cwd.join("couchvault-data/scratch")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "scratch space cleaned up"
    );
}

/// A revision's `multipart/related` body reads its attachments from the file while it is
/// sent: exactly the length it announces, the stored bytes as they are (gzip kept), and
/// a read error, not a body, when an attachment's bytes or recorded length are wrong.
#[test]
fn a_multipart_body_streams_checked_attachment_bytes() {
    use couchvault::couchdb::multipart::MultipartBody;
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_fixture(dir.path());
    let docs = docs_of(&data, "fixture_basic", ".1795703450");
    let (doc, _) = &docs["doc-001"];
    let path = std::fs::read_dir(data.join("shards"))
        .unwrap()
        .map(|r| r.unwrap().path().join("fixture_basic.1795703450.couch"))
        .filter(|p| p.exists())
        .find(|p| {
            let f = open(p);
            let h = f.db_header().unwrap();
            let mut has = false;
            f.fold_docs(&h, &mut |d| {
                has |= d.id == "doc-001";
                Ok(())
            })
            .unwrap();
            has
        })
        .unwrap();
    let file = std::sync::Arc::new(open(&path));
    let (_, atts) = file.doc_body(doc.winner().body_ptr.unwrap()).unwrap();
    assert_eq!(atts.len(), 2);
    assert!(atts.iter().any(|a| a.encoding == "gzip"));
    let read = |atts: &[couchvault::couchdb::couchfile::AttInfo]| {
        let mut body = MultipartBody::new("b", "{}".into(), &file, atts);
        let len = body.content_length();
        let mut out = Vec::new();
        body.read_to_end(&mut out).map(|_| (len, out))
    };
    let (len, out) = read(&atts).unwrap();
    assert_eq!(len, out.len() as u64);
    for a in &atts {
        let mut stored = Vec::new();
        file.attachment(a, &mut |b| {
            stored.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(out.windows(stored.len()).any(|w| w == stored), "{}", a.name);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\r\n"));
    assert!(text.ends_with("\r\n--b--"));

    let mut wrong_md5 = atts.clone();
    wrong_md5[0].md5[0] ^= 1;
    let e = read(&wrong_md5).unwrap_err();
    assert!(e.to_string().contains("do not match its MD5"), "{e}");
    let gz = atts.iter().position(|a| a.encoding == "gzip").unwrap();
    let mut wrong_len = atts.clone();
    wrong_len[gz].att_len -= 1;
    let e = read(&wrong_len).unwrap_err();
    assert!(e.to_string().contains("inflates to more than"), "{e}");
    wrong_len[gz].att_len += 2;
    let e = read(&wrong_len).unwrap_err();
    assert!(e.to_string().contains("inflates to"), "{e}");
}
