//! Operator settings: `floor33.toml` (see `deploy/floor33.example.toml`), then `FLOOR33_*`
//! environment variables over it. Secrets never live in the file: the bot token comes only from
//! `DISCORD_TOKEN`, the LLM key from the variable `llm.api_key_env` names, and both are held in
//! [`Secret`], whose `Debug` and `Display` print nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::core::jobs::VideoShape;
use crate::core::service::ServiceConfig;
use crate::core::settings::GuildSettings;
use crate::core::store::Location;
use crate::engine::Limits;
use crate::models::config::Variant;

/// Name of the config file looked for in the working directory.
pub const DEFAULT_FILE: &str = "floor33.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub engine: EngineConfig,
    pub database: DatabaseConfig,
    pub llm: LlmConfig,
    pub discord: DiscordConfig,
    pub limits: LimitsConfig,
    pub ops: OpsConfig,
    pub cluster: ClusterConfig,
    /// Guild settings for servers that changed nothing (and for direct messages).
    pub defaults: GuildSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The models to load at start-up.
    pub variants: Vec<VariantConfig>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16`.
    pub dtype: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// `t2v-1024`, `t2v-512`, `vc2`, `i2v` or `tiny`.
    pub name: String,
    /// Weight files; empty means the default download location.
    #[serde(default)]
    pub weights: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The embedded SQLite file, used unless `url` is set.
    pub path: PathBuf,
    /// A PostgreSQL server (`postgres://user:password@host:5432/dbname`) shared by every
    /// floor33 process, instead of the file at `path`.
    pub url: Option<DatabaseUrl>,
    /// Where finished videos are kept; `results/` beside the database when absent.
    pub results_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Prompt expansion is off without an endpoint.
    pub base_url: Option<String>,
    pub model: String,
    /// The environment variable holding the API key (the key itself is never in the file).
    pub api_key_env: Option<String>,
    pub timeout_s: u64,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Where `expand_t2v.txt` / `expand_i2v.txt` are read at start (relative paths from the
    /// working directory); a missing file falls back to the built-in wording.
    pub prompts_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// Discord's REST base; a loopback fake Discord in tests.
    pub api_base: String,
    /// Commands are registered to this guild only (instant updates while developing).
    pub dev_guild_id: Option<u64>,
    /// Hosts `/i2v` images are downloaded from (host names only, no scheme or port): Discord's
    /// CDN by default; a test against a fake Discord adds 127.0.0.1.
    pub cdn_hosts: Vec<String>,
    /// For tests against a loopback fake Discord only: also download `/i2v` images over plain
    /// http, on any port, from listed hosts that are loopback IP addresses. Off by default;
    /// never needed in production.
    pub insecure_loopback_cdn_for_tests: bool,
    /// For tests only: every job gets this output size instead of the model's default, so a
    /// test of many jobs through the real binary stays cheap. Unset in production.
    pub video_shape_for_tests: Option<VideoShape>,
    /// Only here to refuse a token written into the file with a clear message.
    #[serde(default)]
    token: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most jobs waiting across the bot.
    pub global_cap: usize,
    pub max_steps: usize,
    pub max_prompt_chars: usize,
    /// Seconds between two progress previews; 0 for none.
    pub preview_every_s: f64,
    /// Most compatible waiting jobs (same model, size, frames, steps and eta) run together as
    /// one sampler batch (1..=16). The default, 1, keeps the behaviour from before batching:
    /// strict fair order and each job's run time its own. A batch holds every member of it
    /// for the batch's (slower) steps, multiplies the UNet's activation memory by its size
    /// (a full-size model at 4 may not fit where 1 does), and batched sampling has not yet run
    /// on a GPU (README, GPU). An operator whose GPU has the memory gains from 4: one UNet call
    /// per step serves four jobs (`floor33 bench --batch 4` measures the gain and the peak
    /// memory on the host; a CPU gains little, its matmuls being compute-bound already: the
    /// tiny model on a shared 2-core machine gave 402-442 jobs/hour one by one against
    /// 401-690 batched, as noisy as the machine's load).
    /// A cluster worker claims the next job with up to `max_batch - 1` compatible waiting jobs
    /// (each under its own lease) and runs them as one batch.
    pub max_batch: usize,
}

/// The operator's HTTP listener (`/metrics`, `/healthz`, `/readyz`; see `src/ops`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// `host:port` to serve on, e.g. `127.0.0.1:9133`; off when absent.
    pub listen: Option<String>,
}

/// How processes sharing a PostgreSQL database hand jobs to each other (`--role gateway` and
/// `--role worker`; see `core::cluster`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Seconds a worker's claim on a job holds without a renewal: a dead worker's job runs
    /// again (or its video is delivered by another worker) this long after its last renewal.
    pub lease_ttl_s: f64,
    /// Seconds between two looks at the queue by an idle worker (LISTEN usually wakes it
    /// sooner), between two lease renewals of a busy one, and between two looks of the
    /// gateway at what the workers took.
    pub poll_s: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease_ttl_s: 15.0,
            poll_s: 1.0,
        }
    }
}

impl ClusterConfig {
    /// The lease's length (validated by [`Config::validate`]; the default if out of range).
    pub fn lease_ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.lease_ttl_s)
            .unwrap_or_else(|_| Duration::from_secs_f64(ClusterConfig::default().lease_ttl_s))
    }

    /// The poll and heartbeat interval (validated by [`Config::validate`]).
    pub fn poll(&self) -> Duration {
        Duration::try_from_secs_f64(self.poll_s)
            .unwrap_or_else(|_| Duration::from_secs_f64(ClusterConfig::default().poll_s))
    }

    fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("cluster.lease_ttl_s", self.lease_ttl_s),
            ("cluster.poll_s", self.poll_s),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
                bail!(
                    "`{key}` must be a number of seconds above 0 and at most 86400 (it is {value})"
                );
            }
        }
        // A lease must outlive two missed heartbeats, or one slow renewal hands a live
        // worker's job to another.
        if self.lease_ttl_s <= 2.0 * self.poll_s {
            bail!(
                "`cluster.lease_ttl_s` ({}) must be more than twice `cluster.poll_s` ({}), the \
                 interval at which a worker renews its lease",
                self.lease_ttl_s,
                self.poll_s
            );
        }
        Ok(())
    }
}

impl OpsConfig {
    /// The listen address, `None` when the listener is off; a value that is not `ip:port` is
    /// an error naming the key.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        text.trim().parse().map(Some).map_err(|_| {
            anyhow::anyhow!("`ops.listen`: `{text}` is not an address; write ip:port, e.g. 127.0.0.1:9133 (or [::1]:9133), or leave it out to turn the listener off")
        })
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            variants: vec![VariantConfig {
                name: "vc2".into(),
                weights: Vec::new(),
            }],
            device: "auto".into(),
            dtype: "auto".into(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: PathBuf::from("floor33-data/floor33.db"),
            url: None,
            results_dir: None,
        }
    }
}

/// A PostgreSQL URL; `Debug` hides its password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", Location::Postgres(self.0.clone()))
    }
}

impl DatabaseConfig {
    /// Where the store lives: the PostgreSQL server when `url` is set, else the SQLite file.
    pub fn location(&self) -> Location {
        Location::new(&self.path, self.url.as_ref().map(DatabaseUrl::expose))
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: None,
            model: "gpt-4o-mini".into(),
            api_key_env: None,
            timeout_s: crate::llm::DEFAULT_TIMEOUT.as_secs(),
            temperature: 0.7,
            max_tokens: 200,
            prompts_dir: PathBuf::from("prompts"),
        }
    }
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            api_base: "https://discord.com/api/v10".into(),
            dev_guild_id: None,
            cdn_hosts: crate::discord::download::default_hosts(),
            insecure_loopback_cdn_for_tests: false,
            video_shape_for_tests: None,
            token: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let engine = Limits::default();
        LimitsConfig {
            global_cap: 100,
            max_steps: engine.max_steps,
            max_prompt_chars: engine.max_prompt_chars,
            preview_every_s: 3.0,
            max_batch: 1,
        }
    }
}

/// A credential: usable through [`Secret::expose`], invisible in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Also masks the value in every log line from now on (see [`crate::redact`]).
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::redact::register_secret(&value);
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Reads `path` (or `./floor33.toml` when it exists, else the built-in defaults), applies
    /// the `FLOOR33_*` environment and checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_FILE).exists() => Self::from_file(Path::new(DEFAULT_FILE))?,
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if config.discord.token.is_some() {
            bail!("`discord.token` is not read from the file: put the bot token in the DISCORD_TOKEN environment variable");
        }
        Ok(config)
    }

    /// Overrides from the environment; `var` looks a variable up (the process environment in
    /// [`Config::load`], a map in tests).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn parsed<T: std::str::FromStr>(name: &str, value: String) -> Result<T>
        where
            T::Err: std::fmt::Display,
        {
            value
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{name}=`{value}` is not valid: {e}"))
        }
        if let Some(v) = var("FLOOR33_VARIANTS") {
            self.engine.variants = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| VariantConfig {
                    name: name.to_string(),
                    weights: Vec::new(),
                })
                .collect();
        }
        if let Some(v) = var("FLOOR33_DEVICE") {
            self.engine.device = v;
        }
        if let Some(v) = var("FLOOR33_DTYPE") {
            self.engine.dtype = v;
        }
        if let Some(v) = var("FLOOR33_DATABASE_PATH") {
            self.database.path = PathBuf::from(v);
        }
        if let Some(v) = var("FLOOR33_DATABASE_URL") {
            self.database.url = Some(v).filter(|s| !s.trim().is_empty()).map(DatabaseUrl);
        }
        if let Some(v) = var("FLOOR33_RESULTS_DIR") {
            self.database.results_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = var("FLOOR33_LLM_BASE_URL") {
            self.llm.base_url = Some(v).filter(|s| !s.trim().is_empty());
        }
        if let Some(v) = var("FLOOR33_LLM_MODEL") {
            self.llm.model = v;
        }
        if let Some(v) = var("FLOOR33_LLM_API_KEY_ENV") {
            self.llm.api_key_env = Some(v);
        }
        if let Some(v) = var("FLOOR33_LLM_TIMEOUT_S") {
            self.llm.timeout_s = parsed("FLOOR33_LLM_TIMEOUT_S", v)?;
        }
        if let Some(v) = var("FLOOR33_LLM_TEMPERATURE") {
            self.llm.temperature = parsed("FLOOR33_LLM_TEMPERATURE", v)?;
        }
        if let Some(v) = var("FLOOR33_LLM_MAX_TOKENS") {
            self.llm.max_tokens = parsed("FLOOR33_LLM_MAX_TOKENS", v)?;
        }
        if let Some(v) = var("FLOOR33_LLM_PROMPTS_DIR") {
            self.llm.prompts_dir = PathBuf::from(v);
        }
        if let Some(v) = var("FLOOR33_DISCORD_API_BASE") {
            self.discord.api_base = v;
        }
        if let Some(v) = var("FLOOR33_DEV_GUILD_ID") {
            self.discord.dev_guild_id = Some(parsed("FLOOR33_DEV_GUILD_ID", v)?);
        }
        if let Some(v) = var("FLOOR33_DISCORD_CDN_HOSTS") {
            self.discord.cdn_hosts = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(v) = var("FLOOR33_GLOBAL_CAP") {
            self.limits.global_cap = parsed("FLOOR33_GLOBAL_CAP", v)?;
        }
        if let Some(v) = var("FLOOR33_OPS_LISTEN") {
            // Empty turns a listener set in the file off.
            self.ops.listen = Some(v).filter(|s| !s.trim().is_empty());
        }
        Ok(())
    }

    /// Catches a bad value at start-up rather than at the first request. Every message names
    /// the key; none repeats a value that could be a credential.
    pub fn validate(&self) -> Result<()> {
        self.validate_engine()?;
        self.validate_database()?;
        self.validate_llm()?;
        self.validate_discord()?;
        self.validate_limits()?;
        self.ops.listen_addr()?;
        self.cluster.validate()?;
        let bounds = crate::core::settings::SettingsBounds {
            limits: self.engine_limits(),
            variants: self.variants()?,
        };
        // The defaults must be values a guild could set.
        let mut check = self.defaults.clone();
        for key in crate::core::settings::SettingKey::ALL {
            check
                .set(key, &self.defaults.get(key), &bounds)
                .map_err(|e| anyhow::anyhow!("in `[defaults]`: {e}"))?;
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<()> {
        let engine = &self.engine;
        if engine.variants.is_empty() {
            bail!("`engine.variants` is empty: name at least one model to load");
        }
        let mut seen = Vec::new();
        for (i, v) in engine.variants.iter().enumerate() {
            // Not repeated: whatever was written there may not be meant for a terminal.
            let Some(variant) = Variant::ALL.into_iter().find(|k| k.name() == v.name) else {
                let known: Vec<_> = Variant::ALL.iter().map(|k| k.name()).collect();
                bail!(
                    "`engine.variants[{i}].name` is not a known model (known: {})",
                    known.join(", ")
                );
            };
            if seen.contains(&variant) {
                bail!("`engine.variants[{i}].name`: {variant} is listed twice");
            }
            seen.push(variant);
            if v.weights.iter().any(|p| p.as_os_str().is_empty()) {
                bail!("`engine.variants[{i}].weights` holds an empty path");
            }
        }
        if !valid_device(&engine.device) {
            bail!("`engine.device` must be auto, cpu, cuda or cuda:N");
        }
        match engine.dtype.as_str() {
            "auto" | "f32" | "f16" => {}
            "bf16" if engine.device == "cpu" => {
                bail!("`engine.dtype` bf16 on the CPU (`engine.device = \"cpu\"`) is slower and less exact than f32: use f32")
            }
            "bf16" => {}
            _ => bail!("`engine.dtype` must be auto, f32, f16 or bf16"),
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<()> {
        let db = &self.database;
        if let Some(url) = &db.url {
            crate::core::store::check_postgres_url(url.expose())
                .map_err(|e| anyhow::anyhow!("`database.url`: {e}"))?;
        }
        if db.path.as_os_str().is_empty() {
            bail!("`database.path` is empty");
        }
        if db.path.is_dir() {
            bail!("`database.path` names a directory; give the database file's path");
        }
        if db
            .results_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            bail!("`database.results_dir` is empty; leave it out for results/ beside the database");
        }
        Ok(())
    }

    fn validate_llm(&self) -> Result<()> {
        let llm = &self.llm;
        if let Some(name) = &llm.api_key_env {
            if !valid_env_name(name) {
                // Not repeated: a key pasted here by mistake must not reach the terminal.
                bail!("`llm.api_key_env` must be the name of an environment variable (letters, digits and _), not the key itself");
            }
        }
        if let Some(url) = llm.base_url.as_deref().filter(|u| !u.trim().is_empty()) {
            let url = checked_url("llm.base_url", url)?;
            if llm.api_key_env.is_some() && url.scheme() != "https" && !is_loopback(&url) {
                bail!("`llm.base_url` must be https when `llm.api_key_env` is set (plain http only to a loopback address): the key would travel in clear");
            }
            if llm.model.trim().is_empty() {
                bail!("`llm.model` is empty: name the model the endpoint serves");
            }
        }
        if llm.model.chars().count() > 200 {
            bail!("`llm.model` is longer than 200 characters");
        }
        in_range("llm.timeout_s", llm.timeout_s, 1, 300)?;
        in_range_f64("llm.temperature", llm.temperature, 0.0, 2.0)?;
        in_range("llm.max_tokens", llm.max_tokens, 1, 8192)?;
        if llm.prompts_dir.as_os_str().is_empty() {
            bail!("`llm.prompts_dir` is empty (use \"prompts\" for the default)");
        }
        Ok(())
    }

    fn validate_discord(&self) -> Result<()> {
        let discord = &self.discord;
        let api = checked_url("discord.api_base", &discord.api_base)?;
        if api.scheme() != "https" && !is_loopback(&api) {
            bail!("`discord.api_base` must be https (plain http only to a loopback address, for a local stand-in): the bot token would travel in clear");
        }
        if let Some(id) = discord.dev_guild_id {
            // Discord ids are non-zero and fit in 63 bits; serenity panics on 0.
            in_range("discord.dev_guild_id", id, 1, i64::MAX as u64)?;
        }
        if discord.cdn_hosts.is_empty() {
            bail!("`discord.cdn_hosts` is empty: /i2v could download no image (Discord's are cdn.discordapp.com and media.discordapp.net)");
        }
        if let Some(shape) = discord.video_shape_for_tests {
            in_range(
                "discord.video_shape_for_tests.height",
                shape.height,
                1,
                4096,
            )?;
            in_range("discord.video_shape_for_tests.width", shape.width, 1, 4096)?;
            in_range("discord.video_shape_for_tests.frames", shape.frames, 1, 256)?;
        }
        for host in &discord.cdn_hosts {
            crate::discord::download::normalise_host(host)
                .map_err(|e| anyhow::anyhow!("`discord.cdn_hosts`: {e}"))?;
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<()> {
        let limits = &self.limits;
        in_range("limits.global_cap", limits.global_cap, 1, 100_000)?;
        in_range("limits.max_steps", limits.max_steps, 1, 1000)?;
        in_range("limits.max_batch", limits.max_batch, 1, 16)?;
        in_range(
            "limits.max_prompt_chars",
            limits.max_prompt_chars,
            1,
            10_000,
        )?;
        let every = limits.preview_every_s;
        if every != 0.0 && !(every.is_finite() && (0.1..=3600.0).contains(&every)) {
            bail!("`limits.preview_every_s` must be 0 (no previews) or between 0.1 and 3600 (it is {every})");
        }
        Ok(())
    }

    pub fn variants(&self) -> Result<Vec<Variant>> {
        self.engine
            .variants
            .iter()
            .map(|v| Variant::parse(&v.name))
            .collect()
    }

    /// The engine's limits with the operator's overrides.
    pub fn engine_limits(&self) -> Limits {
        Limits {
            max_steps: self.limits.max_steps,
            max_prompt_chars: self.limits.max_prompt_chars,
            ..Limits::default()
        }
    }

    /// The job service's configuration.
    pub fn service_config(&self) -> ServiceConfig {
        let mut config = ServiceConfig::new(self.database.path.clone());
        config.database = self.database.location();
        if let Some(dir) = &self.database.results_dir {
            config.results_dir = dir.clone();
        }
        config.defaults = self.defaults.clone();
        config.global_cap = self.limits.global_cap;
        config.max_batch = self.limits.max_batch;
        config.limits = self.engine_limits();
        // `validate` bounds the value; `try_` keeps an unvalidated config from panicking.
        config.preview_every = (self.limits.preview_every_s > 0.0)
            .then(|| Duration::try_from_secs_f64(self.limits.preview_every_s).ok())
            .flatten();
        config
    }

    /// How `/i2v` images are downloaded: from the configured hosts only.
    pub fn download_policy(&self) -> crate::discord::download::DownloadPolicy {
        crate::discord::download::DownloadPolicy {
            allowed_hosts: self
                .discord
                .cdn_hosts
                .iter()
                .filter_map(|h| crate::discord::download::normalise_host(h).ok())
                .collect(),
            insecure_loopback_for_tests: self.discord.insecure_loopback_cdn_for_tests,
            ..Default::default()
        }
    }

    /// The bot token, from `DISCORD_TOKEN` only.
    pub fn discord_token() -> Result<Secret> {
        match std::env::var("DISCORD_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
            _ => bail!("set the bot token in the DISCORD_TOKEN environment variable"),
        }
    }

    /// The LLM API key, from the variable `llm.api_key_env` names (none when unset).
    pub fn llm_api_key(&self) -> Result<Option<Secret>> {
        let Some(name) = &self.llm.api_key_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(Secret::new(key.trim()))),
            _ => bail!("`llm.api_key_env` names {name}, which is not set"),
        }
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, lo: T, hi: T) -> Result<()> {
    if value < lo || value > hi {
        bail!("`{key}` must be between {lo} and {hi} (it is {value})");
    }
    Ok(())
}

fn in_range_f64(key: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if !value.is_finite() || value < lo || value > hi {
        bail!("`{key}` must be a number between {lo} and {hi} (it is {value})");
    }
    Ok(())
}

/// An http(s) URL with a host and no user info. The URL is not repeated in the message: it
/// could carry a credential.
fn checked_url(key: &str, raw: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| anyhow::anyhow!("`{key}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("`{key}` must be an http or https URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("`{key}` has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "`{key}` must not hold a user name or password; credentials come from the environment"
        );
    }
    Ok(url)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_device(spec: &str) -> bool {
    match spec {
        "auto" | "cpu" | "cuda" => true,
        s => s
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u16>().is_ok()),
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// A TOML error as the operator needs it: the key and the line, never the line's text (toml's
/// own message quotes it, and it may hold a credential pasted into the wrong place).
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = hide_quoted(e.message().trim());
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{message}");
    };
    let start = span.start.min(text.len());
    let before = &text[..text.floor_char_boundary(start)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    match key_at(text, line) {
        Some(key) => anyhow::anyhow!("`{key}` (line {line}, column {column}): {message}"),
        None => anyhow::anyhow!("line {line}, column {column}: {message}"),
    }
}

/// The dotted key written on 1-based `line` (with its table), when the line is `key = …`.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for raw in text.lines().take(line.saturating_sub(1)) {
        let l = raw.trim();
        if l.starts_with('[') {
            table = l
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
    }
    let l = text.lines().nth(line - 1)?.trim();
    if l.starts_with('[') {
        let name = l.trim_start_matches('[').split(']').next()?.trim();
        return Some(name.to_string()).filter(|n| valid_key(n));
    }
    let key = l.split('=').next()?.trim();
    if !l.contains('=') || !valid_key(key) {
        return (!table.is_empty()).then_some(table);
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

/// Replaces every double-quoted part of a parser message (serde quotes the offending value),
/// and the value of an "unknown variant `…`"; other `backticked` names (keys, expected tokens)
/// are kept.
fn hide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['"', '`']) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let quote = &tail[..1];
        let body = &tail[1..];
        let hide = quote == "\"" || out.ends_with("unknown variant ");
        let end = body.find(quote);
        out.push_str(quote);
        match (hide, end) {
            (true, _) => out.push('…'),
            (false, Some(j)) => out.push_str(&body[..j]),
            (false, None) => out.push_str(body),
        }
        match end {
            Some(j) => {
                out.push_str(quote);
                rest = &body[j + 1..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../deploy/floor33.example.toml");
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.variants().unwrap(), vec![Variant::Vc2]);
        assert_eq!(config.defaults.member_waiting_limit, 2);
        assert_eq!(config.limits.global_cap, 100);
        assert_eq!(config.limits, LimitsConfig::default());
        // The file states the built-in defaults; keep them in step.
        assert_eq!(config.llm, LlmConfig::default());
        assert_eq!(config.cluster, ClusterConfig::default());
        assert_eq!(config.llm.timeout_s, 15);
        assert_eq!(config.llm.prompts_dir, PathBuf::from("prompts"));
        assert_eq!(
            config.discord.cdn_hosts,
            crate::discord::download::default_hosts()
        );
        assert_eq!(
            Config::default().download_policy().allowed_hosts,
            crate::discord::download::default_hosts()
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::from_toml("[database]\npath = \"a.db\"\n").unwrap();
        let env: HashMap<&str, &str> = [
            ("FLOOR33_DATABASE_PATH", "/data/b.db"),
            ("FLOOR33_DISCORD_API_BASE", "http://127.0.0.1:9999/api"),
            ("FLOOR33_VARIANTS", "tiny, vc2"),
            ("FLOOR33_DEV_GUILD_ID", "42"),
            ("FLOOR33_LLM_TEMPERATURE", "0.2"),
            ("FLOOR33_LLM_PROMPTS_DIR", "/etc/floor33/prompts"),
            ("FLOOR33_DISCORD_CDN_HOSTS", "cdn.discordapp.com, 127.0.0.1"),
        ]
        .into();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.database.path, PathBuf::from("/data/b.db"));
        assert_eq!(config.discord.api_base, "http://127.0.0.1:9999/api");
        assert_eq!(
            config.variants().unwrap(),
            vec![Variant::Tiny, Variant::Vc2]
        );
        assert_eq!(config.discord.dev_guild_id, Some(42));
        assert_eq!(config.llm.temperature, 0.2);
        assert_eq!(
            config.llm.prompts_dir,
            PathBuf::from("/etc/floor33/prompts")
        );
        assert_eq!(
            config.download_policy().allowed_hosts,
            vec!["cdn.discordapp.com".to_string(), "127.0.0.1".to_string()]
        );
        assert_eq!(
            config.service_config().results_dir,
            PathBuf::from("/data/results")
        );
        let bad = config.apply_env(|k| (k == "FLOOR33_GLOBAL_CAP").then(|| "lots".to_string()));
        assert!(bad.unwrap_err().to_string().contains("FLOOR33_GLOBAL_CAP"));
    }

    #[test]
    fn database_url_selects_postgres_and_is_checked_without_printing_its_password() {
        let config = Config::default();
        assert_eq!(
            config.database.location(),
            Location::Sqlite(PathBuf::from("floor33-data/floor33.db"))
        );
        let text = "[database]\nurl = \"postgres://floor33:hunter2@db.lan:5432/floor33\"\n";
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.database.location(),
            Location::Postgres("postgres://floor33:hunter2@db.lan:5432/floor33".into())
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        for bad in [
            "mysql://floor33:hunter2@db.lan/floor33",
            "floor33.db",
            "postgres://floor33:hunter2@db.lan:port/floor33",
        ] {
            let err = Config::from_toml(&format!("[database]\nurl = \"{bad}\"\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("database.url"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let mut config = Config::default();
        config
            .apply_env(|k| (k == "FLOOR33_DATABASE_URL").then(|| "postgres://h/db".to_string()))
            .unwrap();
        assert_eq!(
            config.database.location(),
            Location::Postgres("postgres://h/db".into())
        );
    }

    #[test]
    fn a_token_in_the_file_is_refused_and_secrets_never_print() {
        let err = Config::from_toml("[discord]\ntoken = \"abc\"\n").unwrap_err();
        assert!(err.to_string().contains("DISCORD_TOKEN"), "{err}");
        let secret = Secret::new("abc.def");
        assert_eq!(
            format!("{secret:?} {secret}"),
            "Secret(<redacted>) <redacted>"
        );
    }

    #[test]
    fn parser_messages_keep_names_and_hide_values() {
        assert_eq!(
            hide_quoted("invalid type: string \"sk-1\", expected u64"),
            "invalid type: string \"…\", expected u64"
        );
        assert_eq!(
            hide_quoted("unknown variant `sk-2`, expected one of `vc2`, `tiny`"),
            "unknown variant `…`, expected one of `vc2`, `tiny`"
        );
        assert_eq!(
            hide_quoted("invalid basic string, expected `\"`"),
            "invalid basic string, expected `\"`"
        );
        assert_eq!(hide_quoted("unterminated \"sk-3"), "unterminated \"…");
    }

    #[test]
    fn bad_values_are_caught_at_start_up() {
        let err = Config::from_toml("[defaults]\nmax_steps = 5000\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(format!("{err:#}").contains("max_steps"), "{err:#}");
        let err = Config::from_toml("[[engine.variants]]\nname = \"vc3\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a known model"), "{err:#}");
        assert!(Config::from_toml("[engine]\ncolour = 1\n").is_err());
        for hosts in [
            "[]",
            "[\"https://cdn.discordapp.com\"]",
            "[\"127.0.0.1:8080\"]",
        ] {
            let err = Config::from_toml(&format!("[discord]\ncdn_hosts = {hosts}\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(format!("{err:#}").contains("cdn_hosts"), "{err:#}");
        }
    }

    #[test]
    fn lease_timings_are_read_and_checked_against_each_other() {
        let defaults = Config::default().cluster;
        assert_eq!(defaults.lease_ttl(), Duration::from_secs(15));
        assert_eq!(defaults.poll(), Duration::from_secs(1));
        let config = Config::from_toml("[cluster]\nlease_ttl_s = 2.5\npoll_s = 0.2\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.cluster.lease_ttl(), Duration::from_millis(2500));
        assert_eq!(config.cluster.poll(), Duration::from_millis(200));
        for (text, key) in [
            ("lease_ttl_s = 0", "cluster.lease_ttl_s"),
            ("lease_ttl_s = -3", "cluster.lease_ttl_s"),
            ("lease_ttl_s = nan", "cluster.lease_ttl_s"),
            ("poll_s = inf", "cluster.poll_s"),
            ("poll_s = 0.0", "cluster.poll_s"),
            (
                "lease_ttl_s = 2.0\npoll_s = 1.0",
                "more than twice `cluster.poll_s`",
            ),
            ("poll_s = 10", "more than twice `cluster.poll_s`"),
        ] {
            let err = Config::from_toml(&format!("[cluster]\n{text}\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(format!("{err:#}").contains(key), "{text}: {err:#}");
        }
        assert!(Config::from_toml("[cluster]\nlease_ttl = 5\n").is_err());
    }

    #[test]
    fn ops_listener_is_off_by_default_and_a_bad_address_names_the_key() {
        assert_eq!(Config::default().ops.listen_addr().unwrap(), None);
        let config = Config::from_toml("[ops]\nlisten = \"127.0.0.1:9133\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.ops.listen_addr().unwrap(),
            Some("127.0.0.1:9133".parse().unwrap())
        );
        for bad in [
            "localhost",
            "127.0.0.1",
            "127.0.0.1:99999",
            "http://127.0.0.1:9133",
        ] {
            let err = Config::from_toml(&format!("[ops]\nlisten = \"{bad}\"\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(format!("{err:#}").contains("`ops.listen`"), "{err:#}");
        }
        let mut config = config;
        config
            .apply_env(|k| (k == "FLOOR33_OPS_LISTEN").then(String::new))
            .unwrap();
        assert_eq!(config.ops.listen_addr().unwrap(), None);
    }
}
