//! Loopback fake of an OpenAI-compatible chat-completions endpoint.
//!
//! It records every request (path, Authorization header, JSON body) and answers with a
//! scripted [`Reply`], so tests can check what floor33 sends and how it handles each way a
//! real server can fail, without a network or a model.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// What the fake answers to the next requests.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a chat completion whose first choice's message is `content`.
    Content(String),
    /// 200 with a chat completion whose message content is `null`.
    NullContent,
    /// This status code and raw body.
    Status(u16, String),
    /// 200 with this raw body (malformed JSON, no choices…).
    Raw(String),
    /// 200 with a body of this many bytes and a Content-Length saying so.
    Large(usize),
    /// 200 with a chunked body that never ends.
    Endless,
    /// The inner reply after a delay.
    Delayed(Duration, Box<Reply>),
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When the request arrived (ordering against other fakes' records).
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    /// `Null` when the body was not JSON.
    pub body: serde_json::Value,
}

struct Shared {
    reply: Mutex<Reply>,
    requests: Mutex<Vec<Recorded>>,
}

pub struct FakeLlm {
    /// What to configure as the expander's base URL (`…/v1`).
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// Binds 127.0.0.1 on a free port and serves on the current runtime.
    pub async fn start(reply: Reply) -> Self {
        let shared = Arc::new(Shared {
            reply: Mutex::new(reply),
            requests: Mutex::new(Vec::new()),
        });
        // Every path is accepted and recorded, so a wrong URL shows up as a wrong `path`.
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            shared,
            server,
        }
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A chat completion body in the OpenAI shape.
pub fn completion(content: serde_json::Value) -> String {
    serde_json::json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
    })
    .to_string()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = Instant::now();
    let path = request.uri().path().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    shared.requests.lock().unwrap().push(Recorded {
        at,
        path,
        authorization,
        body,
    });
    let reply = shared.reply.lock().unwrap().clone();
    respond(reply).await
}

async fn respond(mut reply: Reply) -> Response {
    while let Reply::Delayed(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let json = [(header::CONTENT_TYPE, "application/json")];
    match reply {
        Reply::Content(text) => (json, completion(text.into())).into_response(),
        Reply::NullContent => (json, completion(serde_json::Value::Null)).into_response(),
        Reply::Status(code, body) => {
            (StatusCode::from_u16(code).unwrap(), json, body).into_response()
        }
        Reply::Raw(body) => (json, body).into_response(),
        Reply::Large(n) => (json, " ".repeat(n)).into_response(),
        Reply::Endless => {
            let chunk: Result<Bytes, Infallible> = Ok(Bytes::from(vec![b' '; 8192]));
            (json, Body::from_stream(futures_util::stream::repeat(chunk))).into_response()
        }
        Reply::Delayed(..) => unreachable!("unwrapped above"),
    }
}
