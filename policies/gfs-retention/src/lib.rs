//! couchvault's default retention policy as a WebAssembly component; the algorithm is in
//! gfs.rs (plain Rust, so the host's benchmark can run it natively too).

wit_bindgen::generate!({ path: "../../wit", world: "retention-policy" });

mod arena;

#[global_allocator]
static ALLOC: arena::Arena = arena::Arena::new();

mod gfs;

struct Gfs;

impl Guest for Gfs {
    fn retain(input: RetentionInput) -> Result<Vec<Keep>, String> {
        let snapshots: Vec<gfs::Snapshot<'_>> = input
            .backups
            .iter()
            .map(|b| gfs::Snapshot {
                id: &b.id,
                created_at: b.created_at,
            })
            .collect();
        Ok(gfs::retain(&input.params, &snapshots)?
            .into_iter()
            .map(|(id, reason)| Keep { id, reason })
            .collect())
    }
}

export!(Gfs);
