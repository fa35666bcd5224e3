//! A policy that misbehaves on request, for the sandbox tests. Its parameters choose:
//! retain: "loop", "memory", "recursion", "panic", "huge", "none", "probe" (reports what it
//! can see of the environment, filesystem, clock and network), "sleep" (std::thread::sleep for
//! ever), "block" (a monotonic-clock pollable of u64::MAX ns, blocked on), "exit",
//! "random-huge" (64 MiB of random in one call), "random-loop" (64 KiB calls, the most allowed, for ever),
//! "escape" (an error full of terminal escape sequences), "remember" (counts its calls in a
//! static and marks 2 MiB of memory it grows, answering with what an earlier call left),
//! "nap" (sleeps 100 ms, then keeps everything); protect: "noenc", "badkey",
//! "loop", "sleep", "forge-tags" (sets the host's reserved tags and escape sequences).
//! Anything else behaves: keep everything, protect with level 3.

wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "policy" });

struct Hostile;

/// Calls this instance has answered ("remember").
static mut CALLS: u32 = 0;

#[inline(never)]
fn recurse(n: u64, pad: &mut [u8; 64]) -> u64 {
    pad[(n % 64) as usize] = n as u8;
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1, pad).wrapping_add(pad[0] as u64)
}

impl Guest for Hostile {
    fn retain(input: RetentionInput) -> Result<Vec<Keep>, String> {
        match input.params.as_str() {
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let mut pad = [0u8; 64];
                Ok(vec![Keep {
                    id: recurse(0, &mut pad).to_string(),
                    reason: String::new(),
                }])
            }
            "panic" => panic!("hostile policy panicked on purpose"),
            // 200 answers of 64 KiB: 12.5 MiB, within the memory cap, past the output cap.
            "huge" => Ok((0..200)
                .map(|i| Keep {
                    id: format!("id-{i}"),
                    reason: "x".repeat(64 << 10),
                })
                .collect()),
            "none" => Ok(Vec::new()),
            "remember" => {
                // SAFETY: one thread; the static is this instance's own.
                let calls = unsafe {
                    CALLS += 1;
                    CALLS - 1
                };
                let pages = 32;
                let start = core::arch::wasm32::memory_grow(0, pages);
                if start == usize::MAX {
                    return Err("memory.grow refused".into());
                }
                // SAFETY: the pages were just grown and nothing else uses them.
                let fresh = unsafe {
                    std::slice::from_raw_parts_mut((start << 16) as *mut u8, pages << 16)
                };
                let dirty = fresh.iter().filter(|b| **b != 0).count();
                fresh.fill(0xAA);
                Ok(vec![Keep {
                    id: "remember".into(),
                    reason: format!("calls-before={calls} dirty-bytes={dirty}"),
                }])
            }
            "nap" => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(input
                    .backups
                    .into_iter()
                    .map(|b| Keep {
                        id: b.id,
                        reason: "napped".into(),
                    })
                    .collect())
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(u64::MAX));
                Ok(Vec::new())
            }
            "block" => {
                wasi::clocks::monotonic_clock::subscribe_duration(u64::MAX).block();
                Ok(Vec::new())
            }
            "exit" => std::process::exit(3),
            "random-huge" => {
                let r = wasi::random::random::get_random_bytes(64 << 20);
                Ok(vec![Keep {
                    id: r.len().to_string(),
                    reason: String::new(),
                }])
            }
            "random-loop" => {
                let mut n = 0usize;
                loop {
                    n = n.wrapping_add(wasi::random::random::get_random_bytes(64 << 10).len());
                    std::hint::black_box(n);
                }
            }
            "escape" => Err("\x1b]0;pwned\x07\x1b[2J\x1b[31mred\nsecond line".into()),
            "probe" => {
                let env = std::env::vars().count();
                let fs = std::fs::read_dir("/")
                    .map(|_| "readable")
                    .unwrap_or("denied");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                // Loopback, a port nothing listens on: only "connected" or "refused by the
                // peer" would mean the guest reached the network.
                let net = match std::net::TcpStream::connect("127.0.0.1:9") {
                    Ok(_) => "connected".to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        "reached".to_string()
                    }
                    Err(_) => "denied".to_string(),
                };
                Ok(vec![Keep {
                    id: input
                        .backups
                        .first()
                        .map(|b| b.id.clone())
                        .unwrap_or_default(),
                    reason: format!("env={env} fs={fs} clock={now} net={net}"),
                }])
            }
            _ => Ok(input
                .backups
                .iter()
                .map(|b| Keep {
                    id: b.id.clone(),
                    reason: "keeps everything".into(),
                })
                .collect()),
        }
    }

    fn protect(input: ProtectionInput) -> Result<Protection, String> {
        match input.params.as_str() {
            "noenc" => Ok(Protection {
                compression_level: 42,
                encrypt: false,
                key_id: None,
                tags: vec![],
            }),
            "badkey" => Ok(Protection {
                compression_level: 3,
                encrypt: true,
                key_id: Some("no-such-key".into()),
                tags: vec![],
            }),
            "loop" => loop {
                std::hint::black_box(());
            },
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(u64::MAX));
                Err("woke up".into())
            }
            "forge-tags" => Ok(Protection {
                compression_level: 3,
                encrypt: true,
                key_id: None,
                tags: vec![
                    ("schedule".into(), "forged".into()),
                    ("protection-policy".into(), "forged".into()),
                    ("color".into(), "\x1b[31mred".into()),
                    ("team".into(), "blue".into()),
                ],
            }),
            _ => Ok(Protection {
                compression_level: 3,
                encrypt: true,
                key_id: None,
                tags: vec![],
            }),
        }
    }
}

export!(Hostile);
