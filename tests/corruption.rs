//! R3: flipped bytes, truncation, reordered chunks, a wrong key and swapped metadata are
//! caught by verify and by restore, with a clear message, before the target is touched.

mod common;

use std::fs;

use common::{restore_opts, Env, Rng};
use couchvault::catalog;
use couchvault::engine::{self, Progress};
use couchvault::format::{BackupMetadata, HEADER_LEN};
use couchvault::keyring::KeyRing;

const CHUNK: usize = 4096;
const FRAME: usize = CHUNK + 16;

/// Both verify and restore must fail with a message containing one of `expect`, leaving
/// the target absent and no staging directory behind.
fn assert_rejected(
    env: &Env,
    keyring: &KeyRing,
    meta: &BackupMetadata,
    expect: &[&str],
    label: &str,
) {
    let err = engine::verify(
        &env.store,
        keyring,
        std::slice::from_ref(meta),
        &Progress::default(),
    )
    .expect_err(label)
    .to_string();
    assert!(
        expect.iter().any(|e| err.contains(e)),
        "{label}: verify said: {err}"
    );
    let target = env.path("target");
    let err = engine::restore(
        &env.store,
        keyring,
        std::slice::from_ref(meta),
        &restore_opts(&target),
        &Progress::default(),
    )
    .expect_err(label)
    .to_string();
    assert!(
        expect.iter().any(|e| err.contains(e)),
        "{label}: restore said: {err}"
    );
    assert!(!target.exists(), "{label}: target untouched");
    let staging = fs::read_dir(env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("staging")
        })
        .count();
    assert_eq!(staging, 0, "{label}: staging removed");
}

#[test]
fn random_single_byte_flips_are_all_detected() {
    let env = Env::new(8 << 10);
    let meta = env.backup(CHUNK as u32);
    let good = env.read_data(&meta);
    assert!(good.len() > 3 * FRAME, "the stream spans several chunks");
    let mut rng = Rng(0x5eed);
    for i in 0..100 {
        let pos = rng.below(good.len() as u64) as usize;
        let flip = 1u8 << rng.below(8);
        let mut bad = good.clone();
        bad[pos] ^= flip;
        env.write_data(&meta, &bad);
        assert_rejected(
            &env,
            &env.keyring,
            &meta,
            &[
                "failed authentication",
                "header",
                "not a couchvault archive",
                "not supported",
                "another backup",
                "chunk size",
                "SHA-256",
            ],
            &format!("flip #{i} at byte {pos}"),
        );
    }
    env.write_data(&meta, &good);
    engine::verify(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&meta),
        &Progress::default(),
    )
    .unwrap();
}

#[test]
fn truncation_and_reordering_are_detected() {
    let env = Env::new(1 << 20);
    let meta = env.backup(CHUNK as u32);
    let good = env.read_data(&meta);
    let frames = (good.len() - HEADER_LEN).div_ceil(FRAME);
    assert!(frames >= 3);

    let at_boundary = HEADER_LEN + (frames - 1) * FRAME;
    for (label, cut) in [
        ("drop the final chunk", at_boundary),
        ("cut inside the final chunk", good.len() - 5),
        ("cut inside a middle chunk", HEADER_LEN + FRAME + 100),
        ("keep only the header", HEADER_LEN),
        ("cut inside the header", 10),
    ] {
        env.write_data(&meta, &good[..cut]);
        assert_rejected(
            &env,
            &env.keyring,
            &meta,
            &["truncated", "failed authentication"],
            label,
        );
    }

    let mut swapped = good.clone();
    let (a, b) = (HEADER_LEN, HEADER_LEN + FRAME);
    let first: Vec<u8> = swapped[a..a + FRAME].to_vec();
    swapped.copy_within(b..b + FRAME, a);
    swapped[b..b + FRAME].copy_from_slice(&first);
    env.write_data(&meta, &swapped);
    assert_rejected(
        &env,
        &env.keyring,
        &meta,
        &["chunk 0 of the data stream failed authentication"],
        "reordered chunks",
    );

    let mut extended = good.clone();
    extended.extend_from_slice(&good[HEADER_LEN..HEADER_LEN + FRAME]);
    env.write_data(&meta, &extended);
    assert_rejected(
        &env,
        &env.keyring,
        &meta,
        &["failed authentication"],
        "a chunk spliced onto the end",
    );
    env.write_data(&meta, &good);
}

#[test]
fn wrong_key_is_detected() {
    let env = Env::new(1 << 20);
    let meta = env.backup(CHUNK as u32);
    // A key ring with another secret under the same tenant and key id.
    let real = fs::read_to_string(env.path("keys.toml")).unwrap();
    let key_line = real.lines().find(|l| l.starts_with("key = ")).unwrap();
    let forged = real.replace(key_line, &format!("key = \"{}\"", "ab".repeat(32)));
    let path = env.path("wrong.toml");
    fs::write(&path, forged).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = KeyRing::load(&path).unwrap();

    let err = catalog::load(&env.store, &wrong, "default", &meta.backup_id).unwrap_err();
    assert!(
        err.to_string().contains("metadata MAC does not match"),
        "{err}"
    );
    assert_rejected(
        &env,
        &wrong,
        &meta,
        &["cannot unwrap the backup's data key"],
        "wrong key",
    );

    // A key ring without the key id at all.
    let other = KeyRing::create(&env.path("other.toml"), "default").unwrap();
    let err = catalog::load(&env.store, &other, "default", &meta.backup_id).unwrap_err();
    assert!(err.to_string().contains("not in this key ring"), "{err}");
}

#[test]
fn swapped_metadata_is_detected() {
    let env = Env::new(1 << 20);
    let a = env.backup(CHUNK as u32);
    let b = env.backup(CHUNK as u32);
    let name = |m: &BackupMetadata| couchvault::format::metadata_object(&m.instance, &m.backup_id);
    use couchvault::store::Store;
    let a_meta = env.store.get("default", &name(&a)).unwrap();
    env.store.put("default", &name(&b), &a_meta).unwrap();
    let err = catalog::load(&env.store, &env.keyring, "default", &b.backup_id).unwrap_err();
    assert!(err.to_string().contains("swapped metadata"), "{err}");

    // Pointing b's (authentic) metadata at a's data: the header names the other backup.
    let mut pointed = b.clone();
    pointed.data = a.data.clone();
    assert_rejected(
        &env,
        &env.keyring,
        &pointed,
        &["another backup", "cannot unwrap"],
        "data of another backup",
    );

    // An edited document fails its MAC.
    let mut text = String::from_utf8(env.store.get("default", &name(&a)).unwrap()).unwrap();
    text = text.replace("\"kind\":\"full\"", "\"kind\":\"fulL\"");
    env.store
        .put("default", &name(&a), text.as_bytes())
        .unwrap();
    let err = catalog::load(&env.store, &env.keyring, "default", &a.backup_id).unwrap_err();
    assert!(err.to_string().contains("MAC does not match"), "{err}");
    // And the listing shows it as invalid rather than hiding it.
    let listed = catalog::list(&env.store, &env.keyring, "default", None).unwrap();
    assert_eq!(listed.iter().filter(|l| l.error.is_some()).count(), 2);
}
