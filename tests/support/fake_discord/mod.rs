//! A loopback fake Discord: REST under `/api/v10`, a gateway WebSocket at `/ws` and a CDN at
//! `/cdn/..`, all on 127.0.0.1. It records every request, keeps the messages the bot created so
//! button clicks can carry them, and injects the faults the bot must survive (dead interaction
//! tokens, upload limits, stalled uploads, a dropped gateway connection).

pub mod payloads;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;

use payloads::*;

pub const HEARTBEAT_MS: u64 = 2000;

/// One file part of a multipart request.
#[derive(Clone, Debug)]
pub struct FilePart {
    pub field: String,
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One REST request the bot made, and what the fake answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    /// Path without the `/api/v10` prefix, e.g. `/webhooks/1/tok/messages/@original`.
    pub path: String,
    pub auth: Option<String>,
    /// The JSON body, or a multipart request's `payload_json`.
    pub json: Option<Value>,
    pub files: Vec<FilePart>,
    pub status: u16,
}

impl Recorded {
    pub fn is(&self, method: &str, path_contains: &str) -> bool {
        self.method == method && self.path.contains(path_contains)
    }

    pub fn content(&self) -> &str {
        self.json
            .as_ref()
            .and_then(|j| j.get("content"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The JSON body as text (content, embeds, components), for loose assertions.
    pub fn text(&self) -> String {
        self.json
            .as_ref()
            .map(|j| j.to_string())
            .unwrap_or_default()
    }
}

/// What the fake does wrong on purpose.
#[derive(Default)]
struct Faults {
    /// Webhook calls for these interaction tokens answer 401 / 50027.
    dead_tokens: HashSet<String>,
    /// Uploads with a file bigger than this answer 413 / 40005.
    max_file_bytes: Option<usize>,
    /// Uploads with an MP4 hang (recorded with status 0) while this is set.
    stall_videos: bool,
}

#[derive(Default)]
struct Store {
    requests: Vec<Recorded>,
    /// Message id → the message object, as the bot last left it.
    messages: HashMap<u64, Value>,
    /// Interaction token → the id of its original response message.
    originals: HashMap<String, u64>,
    /// Component interaction token → the message its button is on.
    component_messages: HashMap<String, u64>,
    /// Interaction token → interaction id (for the message's interaction metadata).
    interactions: HashMap<String, u64>,
    cdn: HashMap<String, (String, Vec<u8>)>,
    commands: Vec<Value>,
    identifies: Vec<Value>,
    resumes: Vec<Value>,
}

struct Inner {
    addr: SocketAddr,
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    changed: Notify,
    outbox: Mutex<VecDeque<(String, Value)>>,
    outbox_ready: Notify,
    kill_socket: Notify,
    seq: AtomicU64,
    connections: AtomicUsize,
    ready_sent: AtomicUsize,
}

pub struct FakeDiscord {
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            addr,
            store: Mutex::default(),
            faults: Mutex::default(),
            changed: Notify::new(),
            outbox: Mutex::default(),
            outbox_ready: Notify::new(),
            kill_socket: Notify::new(),
            seq: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            ready_sent: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/ws", get(ws_upgrade))
            .fallback(rest)
            .layer(DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeDiscord { inner, server }
    }

    /// What `FLOOR33_DISCORD_API_BASE` should be.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn cdn_host(&self) -> String {
        self.inner.addr.ip().to_string()
    }

    /// Serves `bytes` at a CDN URL and returns it.
    pub fn serve_cdn(&self, name: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.inner
            .store
            .lock()
            .unwrap()
            .cdn
            .insert(name.to_string(), (content_type.to_string(), bytes));
        format!("http://{}/cdn/{name}", self.inner.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.store.lock().unwrap().requests.clone()
    }

    /// Requests about one interaction token (its callback and webhook calls).
    pub fn requests_for(&self, token: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('/').any(|seg| seg == token))
            .collect()
    }

    pub fn commands(&self) -> Vec<Value> {
        self.inner.store.lock().unwrap().commands.clone()
    }

    pub fn identifies(&self) -> Vec<Value> {
        self.inner.store.lock().unwrap().identifies.clone()
    }

    pub fn resumes(&self) -> Vec<Value> {
        self.inner.store.lock().unwrap().resumes.clone()
    }

    /// How many READY frames were sent (one per IDENTIFY).
    pub fn ready_count(&self) -> usize {
        self.inner.ready_sent.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// The stored message (as Discord would return it).
    pub fn message(&self, id: u64) -> Option<Value> {
        self.inner.store.lock().unwrap().messages.get(&id).cloned()
    }

    /// The original response message of an interaction.
    pub fn original(&self, token: &str) -> Option<Value> {
        let store = self.inner.store.lock().unwrap();
        let id = store.originals.get(token)?;
        store.messages.get(id).cloned()
    }

    /// Every message in the channel created with the bot token, oldest first.
    pub fn channel_messages(&self) -> Vec<Value> {
        let store = self.inner.store.lock().unwrap();
        let mut v: Vec<Value> = store
            .messages
            .values()
            .filter(|m| m.get("interaction_metadata").is_none())
            .cloned()
            .collect();
        v.sort_by_key(|m| m["id"].as_str().unwrap().parse::<u64>().unwrap());
        v
    }

    /// From now on webhook calls with `token` answer 401 "Invalid Webhook Token" (50027).
    pub fn expire_token(&self, token: &str) {
        self.inner
            .faults
            .lock()
            .unwrap()
            .dead_tokens
            .insert(token.to_string());
    }

    /// Uploads with an MP4 larger than `bytes` answer 413 (40005).
    pub fn set_max_file_bytes(&self, bytes: Option<usize>) {
        self.inner.faults.lock().unwrap().max_file_bytes = bytes;
    }

    /// While `on`, uploads carrying an MP4 are recorded with status 0 and left unanswered, as
    /// over a link that went dead; once turned off, the parked ones answer 503.
    pub fn stall_videos(&self, on: bool) {
        self.inner.faults.lock().unwrap().stall_videos = on;
    }

    /// Closes the current gateway connection with close code 4000 (the bot should resume).
    pub fn drop_gateway(&self) {
        self.inner.kill_socket.notify_one();
    }

    /// Waits for the first READY (the bot is connected and has registered its commands).
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_until(timeout, "READY and command registration", |f| {
            f.inner.ready_sent.load(Ordering::SeqCst) > 0 && !f.commands().is_empty()
        })
        .await;
    }

    /// Polls `cond` whenever a request arrives (and every 50 ms) until it holds.
    pub async fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if cond(self) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; requests:\n{}",
                    self.dump()
                );
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), notified)
                .await;
        }
    }

    /// Waits for the first recorded request that matches and returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Recorded) -> bool,
    ) -> Recorded {
        self.wait_until(timeout, what, |f| f.requests().iter().any(&pred))
            .await;
        self.requests().into_iter().find(|r| pred(r)).unwrap()
    }

    /// A short listing of every request, for failure messages.
    pub fn dump(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                let mut body = r.text();
                if body.len() > 300 {
                    let mut cut = 300;
                    while !body.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    body.truncate(cut);
                }
                format!(
                    "  {} {} -> {} files={} {}",
                    r.method,
                    r.path,
                    r.status,
                    r.files.len(),
                    body
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends a gateway dispatch (validated with serenity first).
    pub fn dispatch(&self, event: &str, data: Value) {
        validate_gateway(&dispatch(1, event, &data));
        self.inner
            .outbox
            .lock()
            .unwrap()
            .push_back((event.to_string(), data));
        self.inner.outbox_ready.notify_one();
    }

    fn remember_interaction(&self, id: u64, token: &str) {
        self.inner
            .store
            .lock()
            .unwrap()
            .interactions
            .insert(token.to_string(), id);
    }

    /// Sends an INTERACTION_CREATE for a slash command. Returns (token, time sent).
    pub fn send_command(&self, spec: &CommandSpec) -> (String, Instant) {
        let (id, token, v) = command_interaction(spec);
        validate_interaction(&v);
        self.remember_interaction(id, &token);
        let at = Instant::now();
        self.dispatch("INTERACTION_CREATE", v);
        (token, at)
    }

    /// Clicks the button `custom_id` on `message` as `invoker`. Returns (token, time sent).
    pub fn click(&self, custom_id: &str, message: &Value, invoker: &Invoker) -> (String, Instant) {
        let (id, token, v) =
            component_interaction(custom_id, message, invoker, DEFAULT_ATTACHMENT_LIMIT);
        validate_interaction(&v);
        self.remember_interaction(id, &token);
        let message_id: u64 = message["id"].as_str().unwrap().parse().unwrap();
        self.inner
            .store
            .lock()
            .unwrap()
            .component_messages
            .insert(token.clone(), message_id);
        let at = Instant::now();
        self.dispatch("INTERACTION_CREATE", v);
        (token, at)
    }

    /// Submits the modal `custom_id` with text inputs `fields`. Returns (token, time sent).
    pub fn submit_modal(
        &self,
        custom_id: &str,
        fields: &[(&str, &str)],
        invoker: &Invoker,
        message: Option<&Value>,
    ) -> (String, Instant) {
        let (id, token, v) = modal_submit(
            custom_id,
            fields,
            invoker,
            message,
            DEFAULT_ATTACHMENT_LIMIT,
        );
        validate_interaction(&v);
        self.remember_interaction(id, &token);
        let at = Instant::now();
        self.dispatch("INTERACTION_CREATE", v);
        (token, at)
    }
}

fn discord_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

fn json_response(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn read_body(req: Request) -> (Option<Value>, Vec<FilePart>) {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ct.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .expect("multipart body");
        let mut json = None;
        let mut files = vec![];
        while let Some(field) = mp.next_field().await.expect("multipart field") {
            let name = field.name().unwrap_or("").to_string();
            let filename = field.file_name().map(str::to_string);
            let content_type = field.content_type().unwrap_or("").to_string();
            let bytes = field.bytes().await.expect("multipart bytes").to_vec();
            if name == "payload_json" {
                json = Some(serde_json::from_slice(&bytes).expect("payload_json is JSON"));
            } else {
                files.push(FilePart {
                    field: name,
                    filename: filename.unwrap_or_default(),
                    content_type,
                    bytes,
                });
            }
        }
        (json, files)
    } else {
        let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let json = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("JSON body"))
        };
        (json, vec![])
    }
}

async fn rest(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let full_path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(name) = full_path.strip_prefix("/cdn/") {
        let file = inner.store.lock().unwrap().cdn.get(name).cloned();
        inner.store.lock().unwrap().requests.push(Recorded {
            at: Instant::now(),
            method: "GET".into(),
            path: full_path.clone(),
            auth,
            json: None,
            files: vec![],
            status: if file.is_some() { 200 } else { 404 },
        });
        inner.changed.notify_waiters();
        return match file {
            Some((ct, bytes)) => ([(header::CONTENT_TYPE, ct)], Body::from(bytes)).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let path = full_path
        .strip_prefix("/api/v10")
        .unwrap_or(&full_path)
        .to_string();
    let (json, files) = read_body(req).await;
    let stalled = |inner: &Inner| inner.faults.lock().unwrap().stall_videos;
    if stalled(&inner) && files.iter().any(|f| f.filename.ends_with(".mp4")) {
        inner.store.lock().unwrap().requests.push(Recorded {
            at: Instant::now(),
            method: method.to_string(),
            path,
            auth,
            json,
            files,
            status: 0,
        });
        inner.changed.notify_waiters();
        while stalled(&inner) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let response = route(&inner, &method, &path, json.as_ref(), &files);
    let status = response.status().as_u16();
    inner.store.lock().unwrap().requests.push(Recorded {
        at: Instant::now(),
        method: method.to_string(),
        path,
        auth,
        json,
        files,
        status,
    });
    inner.changed.notify_waiters();
    response
}

fn next_id() -> u64 {
    snowflake()
}

/// Attachment objects for uploaded files, as Discord echoes them.
fn stored_attachments(inner: &Inner, files: &[FilePart]) -> Vec<Value> {
    files
        .iter()
        .map(|f| {
            let id = next_id();
            attachment(
                id,
                &f.filename,
                &f.content_type,
                f.bytes.len() as u64,
                &format!("http://{}/cdn/att{id}/{}", inner.addr, f.filename),
            )
        })
        .collect()
}

/// Applies an edit body to a stored message: fields present replace; new files replace the
/// attachments unless the body lists which to keep.
fn apply_edit(inner: &Inner, msg: &mut Value, body: Option<&Value>, files: &[FilePart]) {
    let Some(body) = body else { return };
    for key in ["content", "embeds", "components", "flags"] {
        if let Some(v) = body.get(key) {
            msg[key] = v.clone();
        }
    }
    if !files.is_empty() || body.get("attachments").is_some() {
        let keep: HashSet<String> = body
            .get("attachments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut atts: Vec<Value> = msg["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| keep.contains(a["id"].as_str().unwrap_or("")))
            .collect();
        atts.extend(stored_attachments(inner, files));
        msg["attachments"] = Value::Array(atts);
    }
    msg["edited_timestamp"] = json!(iso_now());
    validate_message(msg);
}

/// Only videos count against the injected limit: the point is to exercise the re-encode.
fn too_large(inner: &Inner, files: &[FilePart]) -> bool {
    let limit = inner.faults.lock().unwrap().max_file_bytes;
    matches!(limit, Some(max) if files.iter().any(|f| f.filename.ends_with(".mp4") && f.bytes.len() > max))
}

fn route(
    inner: &Inner,
    method: &Method,
    path: &str,
    body: Option<&Value>,
    files: &[FilePart],
) -> Response {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ws_url = format!("ws://{}/ws", inner.addr);
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["gateway"]) => json_response(json!({"url": ws_url})),
        ("GET", ["gateway", "bot"]) => json_response(json!({
            "url": ws_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        })),
        ("GET", ["oauth2", "applications", "@me"]) => json_response(json!({
            "id": APP_ID.to_string(), "name": "floor33", "icon": null, "description": "",
            "bot_public": true, "bot_require_code_grant": false, "verify_key": "00",
            "owner": user(ADMIN_ID, "owner"), "team": null, "flags": 0,
        })),
        ("PUT", ["applications", _, "commands"])
        | ("PUT", ["applications", _, "guilds", _, "commands"]) => {
            let cmds: Vec<Value> = body
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    let name = c["name"].as_str().unwrap_or("").to_string();
                    c["id"] = json!(command_id(&name).to_string());
                    c["application_id"] = json!(APP_ID.to_string());
                    c["version"] = json!("1");
                    c.as_object_mut().unwrap().entry("type").or_insert(json!(1));
                    c.as_object_mut()
                        .unwrap()
                        .entry("description")
                        .or_insert(json!(""));
                    c
                })
                .collect();
            if let Err(e) =
                serde_json::from_value::<Vec<serenity::all::Command>>(Value::Array(cmds.clone()))
            {
                panic!("command echo does not deserialize in serenity: {e}");
            }
            inner.store.lock().unwrap().commands = cmds.clone();
            json_response(Value::Array(cmds))
        }
        ("POST", ["interactions", _iid, token, "callback"]) => {
            let token = token.to_string();
            let kind = body.and_then(|b| b["type"].as_u64()).unwrap_or(0);
            let mut store = inner.store.lock().unwrap();
            match kind {
                // Message, or deferred message: this creates the original response.
                4 | 5 => {
                    if store.originals.contains_key(&token) {
                        return discord_error(
                            StatusCode::BAD_REQUEST,
                            40060,
                            "Interaction has already been acknowledged.",
                        );
                    }
                    let id = next_id();
                    let iid = store.interactions.get(&token).copied();
                    let data = body
                        .and_then(|b| b.get("data"))
                        .cloned()
                        .unwrap_or(json!({}));
                    let m = message(
                        id,
                        CHANNEL_ID,
                        bot_user(),
                        &data,
                        stored_attachments(inner, files),
                        Some(iid.unwrap_or(1)),
                    );
                    validate_message(&m);
                    store.messages.insert(id, m);
                    store.originals.insert(token, id);
                }
                // Deferred update: the component's message becomes the original.
                6 => {
                    if let Some(id) = store.component_messages.get(&token).copied() {
                        store.originals.insert(token, id);
                    }
                }
                // Update the component's message.
                7 => {
                    if let Some(id) = store.component_messages.get(&token).copied() {
                        store.originals.insert(token.clone(), id);
                        let data = body.and_then(|b| b.get("data")).cloned();
                        let mut m = store.messages.get(&id).cloned().unwrap_or(json!({}));
                        apply_edit(inner, &mut m, data.as_ref(), files);
                        store.messages.insert(id, m);
                    }
                }
                _ => {}
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (_, ["webhooks", _app, token, rest @ ..]) => {
            let token = token.to_string();
            if inner.faults.lock().unwrap().dead_tokens.contains(&token) {
                return discord_error(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token");
            }
            let mut store = inner.store.lock().unwrap();
            let target = match rest {
                ["messages", "@original"] => store.originals.get(&token).copied(),
                ["messages", mid] => mid.parse().ok(),
                [] => None,
                _ => return StatusCode::NOT_FOUND.into_response(),
            };
            match (method.as_str(), rest) {
                ("POST", []) => {
                    if too_large(inner, files) {
                        return discord_error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            40005,
                            "Request entity too large",
                        );
                    }
                    let id = next_id();
                    let iid = store.interactions.get(&token).copied();
                    let m = message(
                        id,
                        CHANNEL_ID,
                        bot_user(),
                        body.unwrap_or(&json!({})),
                        stored_attachments(inner, files),
                        Some(iid.unwrap_or(1)),
                    );
                    validate_message(&m);
                    store.messages.insert(id, m.clone());
                    json_response(m)
                }
                ("GET", _) => match target.and_then(|id| store.messages.get(&id)) {
                    Some(m) => json_response(m.clone()),
                    None => discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message"),
                },
                ("PATCH", _) => {
                    if too_large(inner, files) {
                        return discord_error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            40005,
                            "Request entity too large",
                        );
                    }
                    let Some(id) = target.filter(|id| store.messages.contains_key(id)) else {
                        return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
                    };
                    let mut m = store.messages[&id].clone();
                    apply_edit(inner, &mut m, body, files);
                    store.messages.insert(id, m.clone());
                    json_response(m)
                }
                ("DELETE", _) => {
                    if let Some(id) = target {
                        store.messages.remove(&id);
                    }
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            }
        }
        ("POST", ["channels", cid, "messages"]) => {
            if too_large(inner, files) {
                return discord_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    40005,
                    "Request entity too large",
                );
            }
            let id = next_id();
            let m = message(
                id,
                cid.parse().unwrap_or(CHANNEL_ID),
                bot_user(),
                body.unwrap_or(&json!({})),
                stored_attachments(inner, files),
                None,
            );
            validate_message(&m);
            inner.store.lock().unwrap().messages.insert(id, m.clone());
            json_response(m)
        }
        ("PATCH", ["channels", _cid, "messages", mid]) => {
            if too_large(inner, files) {
                return discord_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    40005,
                    "Request entity too large",
                );
            }
            let mut store = inner.store.lock().unwrap();
            let Some(mut m) = mid
                .parse()
                .ok()
                .and_then(|id: u64| store.messages.get(&id).cloned())
            else {
                return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
            };
            apply_edit(inner, &mut m, body, files);
            store.messages.insert(mid.parse().unwrap(), m.clone());
            json_response(m)
        }
        _ => discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
    }
}

async fn ws_upgrade(State(inner): State<Arc<Inner>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| gateway(inner, socket))
}

async fn send(socket: &mut WebSocket, frame: &Value) -> bool {
    validate_gateway(frame);
    socket
        .send(WsMessage::Text(frame.to_string().into()))
        .await
        .is_ok()
}

/// One gateway connection: HELLO, then IDENTIFY → READY or RESUME → RESUMED, heartbeats
/// acknowledged, queued dispatches sent once the session is up.
async fn gateway(inner: Arc<Inner>, mut socket: WebSocket) {
    inner.connections.fetch_add(1, Ordering::SeqCst);
    let ws_url = format!("ws://{}/ws", inner.addr);
    if !send(&mut socket, &hello(HEARTBEAT_MS)).await {
        return;
    }
    let mut live = false;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let WsMessage::Text(text) = msg else { continue };
                let v: Value = match serde_json::from_str(text.as_str()) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                match v["op"].as_u64() {
                    Some(1) if !send(&mut socket, &json!({"op": 11, "d": null, "s": null, "t": null})).await => break,
                    Some(2) => {
                        inner.store.lock().unwrap().identifies.push(v["d"].clone());
                        let seq = inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
                        if !send(&mut socket, &ready(seq, "sess1", &ws_url)).await { break; }
                        inner.ready_sent.fetch_add(1, Ordering::SeqCst);
                        live = true;
                        inner.outbox_ready.notify_one();
                    }
                    Some(6) => {
                        inner.store.lock().unwrap().resumes.push(v["d"].clone());
                        let seq = inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
                        if !send(&mut socket, &resumed(seq)).await { break; }
                        live = true;
                        inner.outbox_ready.notify_one();
                    }
                    _ => {}
                }
                inner.changed.notify_waiters();
            }
            _ = inner.outbox_ready.notified(), if live => {
                loop {
                    let next = inner.outbox.lock().unwrap().pop_front();
                    let Some((event, data)) = next else { break };
                    let seq = inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
                    if !send(&mut socket, &dispatch(seq, &event, &data)).await {
                        // Not delivered: keep it for the next connection.
                        inner.outbox.lock().unwrap().push_front((event, data));
                        break;
                    }
                }
            }
            _ = inner.kill_socket.notified() => {
                let _ = socket.send(WsMessage::Close(Some(CloseFrame {
                    code: 4000,
                    reason: "fake: unknown error, reconnect".into(),
                }))).await;
                break;
            }
        }
    }
    inner.changed.notify_waiters();
}
