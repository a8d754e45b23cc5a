//! JSON the fake Discord sends: gateway frames, interactions and message objects. Every builder's
//! output is checked by deserializing it with serenity's own types, because serenity drops an
//! event it cannot parse without a word — a test would then only see "nothing happened".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const APP_ID: u64 = 1_000_000_000_000_000_001;
pub const BOT_USER_ID: u64 = 1_000_000_000_000_000_002;
pub const GUILD_ID: u64 = 2_000_000_000_000_000_001;
pub const CHANNEL_ID: u64 = 3_000_000_000_000_000_001;
/// A member without Manage Server.
pub const MEMBER_ID: u64 = 4_000_000_000_000_000_001;
/// A member with Manage Server.
pub const ADMIN_ID: u64 = 4_000_000_000_000_000_002;
/// Discord's epoch (2015-01-01) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Permission bits: VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY.
pub const MEMBER_PERMS: u64 = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16);
pub const MANAGE_GUILD: u64 = 1 << 5;
pub const APP_PERMS: u64 = MEMBER_PERMS;
pub const DEFAULT_ATTACHMENT_LIMIT: u64 = 10 * 1024 * 1024;

static NEXT_INCREMENT: AtomicU64 = AtomicU64::new(1);

/// A snowflake for `unix_ms`, unique within this process.
pub fn snowflake_at(unix_ms: u64) -> u64 {
    let inc = NEXT_INCREMENT.fetch_add(1, Ordering::Relaxed) & 0xfff;
    ((unix_ms - DISCORD_EPOCH_MS) << 22) | (1 << 17) | inc
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

pub fn snowflake() -> u64 {
    snowflake_at(now_ms())
}

pub fn iso_now() -> String {
    // serenity parses RFC 3339; the fake does not need sub-second accuracy.
    let secs = now_ms() / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn user(id: u64, name: &str) -> Value {
    json!({
        "id": id.to_string(),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": null,
        "bot": false,
    })
}

pub fn bot_user() -> Value {
    json!({
        "id": BOT_USER_ID.to_string(),
        "username": "floor33",
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": true,
    })
}

/// Who invokes an interaction.
#[derive(Clone, Debug)]
pub struct Invoker {
    pub id: u64,
    pub name: String,
    pub permissions: u64,
}

impl Invoker {
    pub fn member() -> Self {
        Invoker {
            id: MEMBER_ID,
            name: "member".into(),
            permissions: MEMBER_PERMS,
        }
    }

    pub fn admin() -> Self {
        Invoker {
            id: ADMIN_ID,
            name: "admin".into(),
            permissions: MEMBER_PERMS | MANAGE_GUILD,
        }
    }

    pub fn numbered(n: u64) -> Self {
        Invoker {
            id: MEMBER_ID + 100 + n,
            name: format!("member{n}"),
            permissions: MEMBER_PERMS,
        }
    }

    fn member_json(&self) -> Value {
        json!({
            "user": user(self.id, &self.name),
            "roles": [],
            "joined_at": "2024-01-01T00:00:00.000000+00:00",
            "deaf": false,
            "mute": false,
            "flags": 0,
            "permissions": self.permissions.to_string(),
        })
    }
}

/// Fields every interaction type shares.
fn interaction_base(id: u64, kind: u8, token: &str, invoker: &Invoker, limit: u64) -> Value {
    json!({
        "id": id.to_string(),
        "application_id": APP_ID.to_string(),
        "type": kind,
        "guild_id": GUILD_ID.to_string(),
        "channel_id": CHANNEL_ID.to_string(),
        "member": invoker.member_json(),
        "token": token,
        "version": 1,
        "app_permissions": APP_PERMS.to_string(),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": GUILD_ID.to_string()},
        "context": 0,
        "attachment_size_limit": limit,
    })
}

/// One slash-command option: name and JSON value (type inferred: string, integer, number, bool).
pub fn option(name: &str, value: Value) -> Value {
    let kind = match &value {
        Value::String(_) => 3,
        Value::Bool(_) => 5,
        Value::Number(n) if n.is_i64() || n.is_u64() => 4,
        Value::Number(_) => 10,
        other => panic!("unsupported option value {other}"),
    };
    json!({"name": name, "type": kind, "value": value})
}

/// An attachment option (type 11); its value is the attachment id from `resolved`.
pub fn attachment_option(name: &str, attachment_id: u64) -> Value {
    json!({"name": name, "type": 11, "value": attachment_id.to_string()})
}

pub fn attachment(id: u64, filename: &str, content_type: &str, size: u64, url: &str) -> Value {
    json!({
        "id": id.to_string(),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
    })
}

/// APPLICATION_COMMAND interaction (type 2).
pub struct CommandSpec {
    pub name: String,
    /// Top-level options, or for a command group the subcommand option.
    pub options: Vec<Value>,
    pub attachments: Vec<Value>,
    pub invoker: Invoker,
    pub attachment_size_limit: u64,
    /// Interaction creation time, Unix ms (the snowflake carries it).
    pub created_ms: u64,
}

impl CommandSpec {
    pub fn new(name: &str, options: Vec<Value>) -> Self {
        CommandSpec {
            name: name.into(),
            options,
            attachments: vec![],
            invoker: Invoker::member(),
            attachment_size_limit: DEFAULT_ATTACHMENT_LIMIT,
            created_ms: now_ms(),
        }
    }

    /// A subcommand (`/config set key:.. value:..`).
    pub fn subcommand(name: &str, sub: &str, options: Vec<Value>) -> Self {
        Self::new(
            name,
            vec![json!({"name": sub, "type": 1, "options": options})],
        )
    }
}

/// Returns (interaction id, token, JSON).
pub fn command_interaction(spec: &CommandSpec) -> (u64, String, Value) {
    let id = snowflake_at(spec.created_ms);
    let token = format!("tok{id}");
    let mut v = interaction_base(id, 2, &token, &spec.invoker, spec.attachment_size_limit);
    let mut resolved = json!({});
    if !spec.attachments.is_empty() {
        let map: serde_json::Map<String, Value> = spec
            .attachments
            .iter()
            .map(|a| (a["id"].as_str().unwrap().to_string(), a.clone()))
            .collect();
        resolved["attachments"] = Value::Object(map);
    }
    v["data"] = json!({
        "id": command_id(&spec.name).to_string(),
        "name": spec.name,
        "type": 1,
        "options": spec.options,
        "resolved": resolved,
        "guild_id": GUILD_ID.to_string(),
    });
    (id, token, v)
}

/// Stable per-name command id (what the fake answered at registration).
pub fn command_id(name: &str) -> u64 {
    let h = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    5_000_000_000_000_000_000 + (h % 1_000_000_000)
}

/// MESSAGE_COMPONENT interaction (type 3): a button click on `message`.
pub fn component_interaction(
    custom_id: &str,
    message: &Value,
    invoker: &Invoker,
    limit: u64,
) -> (u64, String, Value) {
    let id = snowflake();
    let token = format!("tok{id}");
    let mut v = interaction_base(id, 3, &token, invoker, limit);
    v["data"] = json!({"custom_id": custom_id, "component_type": 2});
    v["message"] = message.clone();
    (id, token, v)
}

/// MODAL_SUBMIT interaction (type 5) with text inputs `(custom_id, value)`.
pub fn modal_submit(
    custom_id: &str,
    fields: &[(&str, &str)],
    invoker: &Invoker,
    message: Option<&Value>,
    limit: u64,
) -> (u64, String, Value) {
    let id = snowflake();
    let token = format!("tok{id}");
    let mut v = interaction_base(id, 5, &token, invoker, limit);
    let rows: Vec<Value> = fields
        .iter()
        .map(|(cid, value)| {
            json!({"type": 1, "components": [{"type": 4, "custom_id": cid, "value": value}]})
        })
        .collect();
    v["data"] = json!({"custom_id": custom_id, "components": rows});
    if let Some(m) = message {
        v["message"] = m.clone();
    }
    (id, token, v)
}

pub fn hello(heartbeat_ms: u64) -> Value {
    json!({"op": 10, "d": {"heartbeat_interval": heartbeat_ms}, "s": null, "t": null})
}

pub fn ready(seq: u64, session_id: &str, ws_url: &str) -> Value {
    json!({
        "op": 0, "s": seq, "t": "READY",
        "d": {
            "v": 10,
            "user": bot_user(),
            "guilds": [{"id": GUILD_ID.to_string(), "unavailable": true}],
            "session_id": session_id,
            "resume_gateway_url": ws_url,
            "shard": [0, 1],
            "application": {"id": APP_ID.to_string(), "flags": 0},
        }
    })
}

pub fn resumed(seq: u64) -> Value {
    json!({"op": 0, "s": seq, "t": "RESUMED", "d": {}})
}

pub fn dispatch(seq: u64, event: &str, data: &Value) -> Value {
    json!({"op": 0, "s": seq, "t": event, "d": data})
}

/// A message object as Discord returns it from REST.
pub fn message(
    id: u64,
    channel_id: u64,
    author: Value,
    body: &Value,
    attachments: Vec<Value>,
    interaction_id: Option<u64>,
) -> Value {
    let mut m = json!({
        "id": id.to_string(),
        "channel_id": channel_id.to_string(),
        "guild_id": GUILD_ID.to_string(),
        "author": author,
        "content": body.get("content").and_then(Value::as_str).unwrap_or(""),
        "timestamp": iso_now(),
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": body.get("embeds").cloned().unwrap_or(json!([])),
        "components": body.get("components").cloned().unwrap_or(json!([])),
        "pinned": false,
        "type": if interaction_id.is_some() { 20 } else { 0 },
        "flags": body.get("flags").cloned().unwrap_or(json!(0)),
    });
    if let Some(iid) = interaction_id {
        m["webhook_id"] = json!(APP_ID.to_string());
        m["application_id"] = json!(APP_ID.to_string());
        m["interaction_metadata"] = json!({
            "id": iid.to_string(), "type": 2,
            "user": user(MEMBER_ID, "member"),
            "authorizing_integration_owners": {},
        });
    }
    m
}

/// Panics unless serenity can parse `frame` as a gateway event.
pub fn validate_gateway(frame: &Value) {
    if let Err(e) = serde_json::from_value::<serenity::all::GatewayEvent>(frame.clone()) {
        panic!("fake gateway frame does not deserialize in serenity: {e}\n{frame:#}");
    }
}

/// Panics unless serenity can parse `v` as an interaction.
pub fn validate_interaction(v: &Value) {
    if let Err(e) = serde_json::from_value::<serenity::all::Interaction>(v.clone()) {
        panic!("fake interaction does not deserialize in serenity: {e}\n{v:#}");
    }
}

/// Panics unless serenity can parse `v` as a message.
pub fn validate_message(v: &Value) {
    if let Err(e) = serde_json::from_value::<serenity::all::Message>(v.clone()) {
        panic!("fake message does not deserialize in serenity: {e}\n{v:#}");
    }
}
