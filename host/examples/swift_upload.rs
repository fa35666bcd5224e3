//! Uploads a file through couchvault's Swift store (segmented SLO, segments in flight,
//! ETag checks), for bench/swift.sh to time against `curl -T`.
//!
//!   ST_AUTH=… ST_USER=… ST_KEY=… cargo run --release --example swift_upload -- FILE CONTAINER NAME

use std::io::Read;

use couchvault::config::SwiftConfig;
use couchvault::store::swift::{SwiftSettings, SwiftStore};
use couchvault::store::Store;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, container, name] = args.as_slice() else {
        anyhow::bail!("usage: swift_upload FILE CONTAINER NAME");
    };
    let settings = SwiftSettings::from_config(
        &SwiftConfig::default(),
        container.clone(),
        String::new(),
        32 << 20,
        &|v| std::env::var(v).ok(),
    )?;
    let store = SwiftStore::new(settings)?;
    let mut f = std::fs::File::open(file)?;
    let mut up = store.create_large("default", name, &[])?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        up.write(&buf[..n])?;
    }
    let size = up.finish()?;
    println!("{size}");
    Ok(())
}
