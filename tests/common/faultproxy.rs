//! A TCP proxy on 127.0.0.1 in front of the Swift proxy that injects the faults a real
//! Swift cannot be made to produce on demand: 503 answers, connections reset mid-body and
//! slow responses, each at a chosen rate per request; "down" (every connection reset); and
//! tokens refused (401) on the next N storage requests, as tempauth does when a re-auth hands
//! back a cached token about to expire.
//!
//! Requests are recognised by a read from the client that starts with an HTTP method: the
//! client waits for each response before it sends the next request on a connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::Rng;

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub errors_503: AtomicU64,
    pub resets: AtomicU64,
    pub slow: AtomicU64,
}

struct Shared {
    upstream: u16,
    /// Percent of requests that get a fault (split evenly between the three kinds).
    rate: AtomicU32,
    down: AtomicBool,
    /// Storage requests (not `/auth/`) still to be answered 401.
    refuse: AtomicU32,
    stop: AtomicBool,
    counts: Counts,
    rng: Mutex<Rng>,
    /// The request line (method and path) of every request, in order.
    log: Mutex<Vec<String>>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

enum Fault {
    None,
    Answer503,
    /// Reset after this many more bytes of the request, or of the response.
    ResetRequest(u64),
    ResetResponse(u64),
    Slow(Duration),
}

impl Shared {
    fn roll(&self) -> Fault {
        let mut rng = self.rng.lock().unwrap();
        if rng.below(100) as u32 >= self.rate.load(Ordering::Relaxed) {
            return Fault::None;
        }
        match rng.below(4) {
            0 => Fault::Answer503,
            1 => Fault::ResetRequest(1 + rng.below(64 << 10)),
            2 => Fault::ResetResponse(1 + rng.below(64 << 10)),
            _ => Fault::Slow(Duration::from_millis(100 + rng.below(400))),
        }
    }
}

impl FaultProxy {
    pub fn start(upstream: u16, rate_percent: u32, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            rate: AtomicU32::new(rate_percent),
            down: AtomicBool::new(false),
            refuse: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            counts: Counts::default(),
            rng: Mutex::new(Rng(seed | 1)),
            log: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if sh.down.load(Ordering::Relaxed) {
                    reset(&client);
                    continue;
                }
                let sh = sh.clone();
                thread::spawn(move || serve(client, &sh));
            }
        });
        FaultProxy { port, shared }
    }

    /// From now on every connection, new or pooled, is reset.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
    }

    /// The next `n` storage requests are answered 401 (their token refused).
    pub fn refuse_tokens(&self, n: u32) {
        self.shared.refuse.store(n, Ordering::Relaxed);
    }

    /// The request lines ("GET /v1/AUTH_test/c/o HTTP/1.1") seen since the last call.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }

    pub fn injected(&self) -> u64 {
        let c = &self.shared.counts;
        c.errors_503.load(Ordering::Relaxed)
            + c.resets.load(Ordering::Relaxed)
            + c.slow.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        let c = &self.shared.counts;
        format!(
            "{} requests: {} answered 503, {} reset, {} slowed",
            c.requests.load(Ordering::Relaxed),
            c.errors_503.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
            c.slow.load(Ordering::Relaxed)
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Closes with RST rather than FIN.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_LINGER,
            &linger as *const _ as *const nix::libc::c_void,
            std::mem::size_of::<nix::libc::linger>() as u32,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn starts_request(b: &[u8]) -> bool {
    ["GET ", "PUT ", "POST ", "HEAD ", "DELETE ", "COPY "]
        .iter()
        .any(|m| b.starts_with(m.as_bytes()))
}

fn serve(client: TcpStream, sh: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", sh.upstream)) else {
        reset(&client);
        return;
    };
    // Bytes of response left before a reset, u64::MAX for none.
    let cut_response = Arc::new(AtomicU64::new(u64::MAX));
    let (c2, s2, sh2, cut2) = (
        client.try_clone().unwrap(),
        server.try_clone().unwrap(),
        sh.clone(),
        cut_response.clone(),
    );
    let down_pump = thread::spawn(move || responses(s2, c2, &sh2, &cut2));
    requests(client, server, sh, &cut_response);
    let _ = down_pump.join();
}

/// Client to server, deciding a fault at the start of each request.
fn requests(mut client: TcpStream, mut server: TcpStream, sh: &Shared, cut_response: &AtomicU64) {
    let mut buf = vec![0u8; 64 << 10];
    let mut cut_request = u64::MAX;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sh.down.load(Ordering::Relaxed) {
            reset(&client);
            reset(&server);
            return;
        }
        if starts_request(&buf[..n]) {
            sh.counts.requests.fetch_add(1, Ordering::Relaxed);
            let line = String::from_utf8_lossy(&buf[..n.min(400)]).into_owned();
            if let Some(first) = line.lines().next() {
                sh.log.lock().unwrap().push(first.to_string());
            }
            let refused = !line.contains(" /auth/")
                && sh
                    .refuse
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                    .is_ok();
            if refused {
                let _ = client.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                thread::sleep(Duration::from_millis(20));
                reset(&client);
                reset(&server);
                return;
            }
            match sh.roll() {
                Fault::None => {}
                Fault::Answer503 => {
                    sh.counts.errors_503.fetch_add(1, Ordering::Relaxed);
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\nConnection: close\r\n\r\ninjected by a test\n",
                    );
                    thread::sleep(Duration::from_millis(20));
                    reset(&client);
                    reset(&server);
                    return;
                }
                Fault::ResetRequest(k) => cut_request = k,
                Fault::ResetResponse(k) => cut_response.store(k, Ordering::Relaxed),
                Fault::Slow(d) => {
                    sh.counts.slow.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(d);
                }
            }
        }
        if (n as u64) >= cut_request {
            sh.counts.resets.fetch_add(1, Ordering::Relaxed);
            let _ = server.write_all(&buf[..cut_request as usize]);
            reset(&client);
            reset(&server);
            return;
        }
        cut_request = cut_request.saturating_sub(n as u64);
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// Server to client, resetting mid-body when a fault asked for it.
fn responses(mut server: TcpStream, mut client: TcpStream, sh: &Shared, cut: &AtomicU64) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let left = cut.load(Ordering::Relaxed);
        if sh.down.load(Ordering::Relaxed) || (n as u64) >= left {
            if left != u64::MAX {
                sh.counts.resets.fetch_add(1, Ordering::Relaxed);
                let _ = client.write_all(&buf[..left as usize]);
            }
            reset(&client);
            reset(&server);
            return;
        }
        if left != u64::MAX {
            cut.store(left - n as u64, Ordering::Relaxed);
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}
