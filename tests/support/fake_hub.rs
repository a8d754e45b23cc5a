//! TEST DOUBLE of the Hugging Face Hub's file endpoint, on loopback: answers every
//! `GET /<repo>/resolve/<rev>/<file>` with one configured body, honouring `Range` the way hf-hub
//! 0.4 asks (a `bytes=0-0` metadata probe, then ranged chunks), and with the headers hf-hub reads:
//! `X-Repo-Commit`, `X-Linked-Etag` (the SHA-256 the real Hub publishes for LFS files) and
//! `Content-Range`. The claimed SHA-256 is configurable, so a test can serve a file that is not
//! the one the Hub lists.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Router;

pub struct FakeHub {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Served {
    body: Vec<u8>,
    linked_etag: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `body` and claims `linked_etag` as its SHA-256 (an empty one: no `X-Linked-Etag`, as
/// for a file outside LFS).
pub async fn serve(body: Vec<u8>, linked_etag: String) -> FakeHub {
    let served = Arc::new(Served { body, linked_etag });
    let app = Router::new().fallback(file).with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeHub { endpoint, task }
}

async fn file(State(s): State<Arc<Served>>, headers: HeaderMap) -> Response {
    let len = s.body.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map(|(a, b)| (a.min(len.saturating_sub(1)), b.min(len.saturating_sub(1))))
        .unwrap_or((0, len.saturating_sub(1)));
    let mut response = Response::builder();
    if !s.linked_etag.is_empty() {
        response = response.header("x-linked-etag", format!("\"{}\"", s.linked_etag));
    }
    response
        .status(StatusCode::PARTIAL_CONTENT)
        .header("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")
        .header(header::ETAG, "\"not-the-lfs-hash\"")
        .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
        .body(Body::from(s.body[start..=end].to_vec()))
        .unwrap()
}
