//! A local HTTP receiver for notifications: records every request (method, path, body) and
//! answers 500 to the first `fail_first` of them, 200 after.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::Router;

#[derive(Default)]
pub struct Receiver {
    pub requests: Mutex<Vec<(String, String, String)>>,
    fail_first: AtomicU32,
}

impl Receiver {
    /// Serves on a free 127.0.0.1 port in a background thread; returns it and its URL.
    pub fn start(fail_first: u32) -> (Arc<Receiver>, String) {
        let me = Arc::new(Receiver {
            requests: Mutex::default(),
            fail_first: AtomicU32::new(fail_first),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(record).with_state(me.clone());
        super::serve_in_background(listener, app);
        (me, url)
    }

    /// The requests so far whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<(String, String, String)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1.starts_with(prefix))
            .cloned()
            .collect()
    }
}

async fn record(
    State(r): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> StatusCode {
    r.requests.lock().unwrap().push((
        method.to_string(),
        uri.path().to_string(),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    let failing = r
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}
