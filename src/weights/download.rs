//! Fetching the original checkpoints from the Hugging Face Hub (hf-hub's tokio API).
//!
//! Resume: hf-hub 0.4 downloads into `<blob>.sync.part` in 10 MB ranged chunks and records how far
//! it got; an interrupted download started again with the same cache directory continues from
//! the last complete chunk. Files already in the cache are returned without any network access.
//!
//! Integrity: every checkpoint is an LFS file, for which the Hub sends its SHA-256 as the
//! `X-Linked-Etag` header; hf-hub names the cached blob after that ETag. The hash is asked for
//! first (no download without one), and whatever arrived (or sat in the cache) is hashed and
//! compared with it before it is handed out; a file that does not match is deleted, so nothing
//! unverified is ever converted or loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError, Progress};
use hf_hub::{Cache, Repo};
use indicatif::{ProgressBar, ProgressStyle};

use super::error::WeightsError;

/// Variant name -> (Hub repository, file). The one place that knows where checkpoints live.
const CHECKPOINTS: &[(&str, &str, &str)] = &[
    ("t2v-1024", "VideoCrafter/Text2Video-1024", "model.ckpt"),
    ("t2v-512", "VideoCrafter/Text2Video-512", "model.ckpt"),
    ("vc2", "VideoCrafter/VideoCrafter2", "model.ckpt"),
    ("i2v", "VideoCrafter/Image2Video-512", "model.ckpt"),
];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `(repo, file)` of a variant's checkpoint, e.g. `"vc2"` -> `("VideoCrafter/VideoCrafter2", "model.ckpt")`.
pub fn checkpoint_for(variant: &str) -> Option<(&'static str, &'static str)> {
    CHECKPOINTS
        .iter()
        .find(|(name, _, _)| *name == variant)
        .map(|(_, repo, file)| (*repo, *file))
}

/// The known variant names, in table order.
pub fn variant_names() -> Vec<&'static str> {
    CHECKPOINTS.iter().map(|(name, _, _)| *name).collect()
}

/// The sentence shown when a checkpoint file is missing.
pub fn download_hint() -> String {
    format!(
        "download it with `floor33 weights download <variant>` (variants: {}) and pass the printed path",
        variant_names().join(", ")
    )
}

/// The cached path of `repo`/`file` if a previous download completed; never touches the network.
/// `cache_dir` defaults to `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
pub fn cached(repo: &str, file: &str, cache_dir: Option<&Path>) -> Option<PathBuf> {
    cache(cache_dir)
        .repo(Repo::model(repo.to_string()))
        .get(file)
}

/// Downloads `file` from the model repository `repo` (or returns the cached copy), showing a
/// progress bar. The endpoint is `$HF_ENDPOINT` or huggingface.co; the token is `$HF_TOKEN` if set
/// (else hf-hub's stored token). The token is never printed.
pub async fn download(
    repo: &str,
    file: &str,
    cache_dir: Option<&Path>,
) -> Result<PathBuf, WeightsError> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    download_from(&endpoint, repo, file, cache_dir, true).await
}

/// [`download`] for a variant name from [`checkpoint_for`].
pub async fn download_variant(
    variant: &str,
    cache_dir: Option<&Path>,
) -> Result<PathBuf, WeightsError> {
    let (repo, file) = checkpoint_for(variant).ok_or_else(|| WeightsError::UnknownVariant {
        name: variant.to_string(),
        known: variant_names().join(", "),
    })?;
    download(repo, file, cache_dir).await
}

/// [`download`] with an explicit endpoint and optional progress bar (tests, mirrors).
pub async fn download_from(
    endpoint: &str,
    repo: &str,
    file: &str,
    cache_dir: Option<&Path>,
    show_progress: bool,
) -> Result<PathBuf, WeightsError> {
    let fail = |detail: String| WeightsError::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        detail,
    };
    if let Some(path) = cached(repo, file, cache_dir) {
        return verified(path, endpoint).await.map_err(fail);
    }
    let endpoint_url = endpoint.trim_end_matches('/');
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache(cache_dir).token());
    let published = published_sha256(endpoint_url, repo, file, token.as_deref())
        .await
        .map_err(fail)?;
    let api = ApiBuilder::from_cache(cache(cache_dir))
        .with_endpoint(endpoint_url.to_string())
        .with_progress(false)
        .with_token(token)
        .build()
        .map_err(|e| fail(explain(&e, endpoint)))?;
    let bar = if show_progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    tracing::info!(repo, file, endpoint, "downloading checkpoint");
    let path = api
        .model(repo.to_string())
        .download_with_progress(file, Bar(bar))
        .await
        .map_err(|e| fail(explain(&e, endpoint)))?;
    let path = verified(path, endpoint).await.map_err(fail)?;
    let blob = std::fs::canonicalize(&path).unwrap_or_default();
    if blob.file_name() != Some(std::ffi::OsStr::new(&published)) {
        // The Hub answered hf-hub's own request with another hash than ours a moment before.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&blob);
        return Err(fail(format!(
            "the Hub changed the file's SHA-256 during the download (was {published}); the \
             file was deleted, run the command again"
        )));
    }
    Ok(path)
}

/// Asks the Hub for the file's SHA-256 before anything is downloaded: the `X-Linked-Etag` of
/// an LFS file (else the `ETag`), read from the first answer without following the redirect
/// to the storage host, as hf-hub does. Refuses an answer that is not a SHA-256: it could not
/// be verified, and hf-hub would use it as a file name in the cache.
async fn published_sha256(
    endpoint: &str,
    repo: &str,
    file: &str,
    token: Option<&str>,
) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut request = client
        .get(format!("{endpoint}/{repo}/resolve/main/{file}"))
        .header(reqwest::header::RANGE, "bytes=0-0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| explain_request(&e, endpoint))?;
    let headers = response.headers();
    let etag = headers
        .get("x-linked-etag")
        .or_else(|| headers.get(reqwest::header::ETAG))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace('"', "")
        .to_ascii_lowercase();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the Hub gives no SHA-256 for this file (ETag {:?}), so a download could not be \
             verified; nothing was downloaded. Check HF_ENDPOINT ({endpoint})",
            etag.chars().take(80).collect::<String>()
        ));
    }
    Ok(etag)
}

/// `path` (hf-hub's snapshot link to `blobs/<etag>`) once its SHA-256 matches the ETag; else
/// the blob and the link are deleted and the message says what to do.
async fn verified(path: PathBuf, endpoint: &str) -> Result<PathBuf, String> {
    let blob = std::fs::canonicalize(&path)
        .map_err(|e| format!("cannot resolve the cached file {}: {e}", path.display()))?;
    let expected = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let discard = |why: String| {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(blob.with_extension("lock"));
        format!(
            "{why}; the file was deleted. Run the command again to download it afresh; if this \
             repeats, the endpoint {endpoint} (HF_ENDPOINT) is not serving the published file"
        )
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(discard(format!(
            "the Hub sent no SHA-256 for it (ETag {:?}), so it cannot be verified",
            expected.chars().take(80).collect::<String>()
        )));
    }
    tracing::info!(file = %blob.display(), "verifying SHA-256");
    let hashed = blob.clone();
    let actual = tokio::task::spawn_blocking(move || sha256_hex(&hashed))
        .await
        .map_err(|e| format!("hashing failed: {e}"))?
        .map_err(|e| format!("cannot read {}: {e}", blob.display()))?;
    if actual != expected {
        return Err(discard(format!(
            "its SHA-256 is {actual} but the Hub lists {expected} (corrupt or tampered download)"
        )));
    }
    Ok(path)
}

fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn cache(cache_dir: Option<&Path>) -> Cache {
    match cache_dir {
        Some(dir) => Cache::new(dir.to_path_buf()),
        None => Cache::from_env(),
    }
}

/// Turns hf-hub errors into a sentence that says what to do.
fn explain(e: &ApiError, endpoint: &str) -> String {
    match e {
        ApiError::RequestError(re) => explain_request(re, endpoint),
        ApiError::LockAcquisition(path) => format!(
            "another download of this file is running (lock {})",
            path.display()
        ),
        ApiError::IoError(io) => format!("disk error: {io}"),
        other => other.to_string(),
    }
}

fn explain_request(re: &reqwest::Error, endpoint: &str) -> String {
    if re.is_connect() || re.is_timeout() {
        return format!(
            "cannot reach {endpoint} (offline or blocked?); run again when online, an interrupted \
             download resumes: {re}"
        );
    }
    match re.status().map(|s| s.as_u16()) {
        Some(401) | Some(403) => {
            format!("access denied ({re}); accept the model's terms on the Hub and set HF_TOKEN")
        }
        Some(404) => format!("not found on the Hub ({re})"),
        _ => format!("request failed: {re}"),
    }
}

/// hf-hub progress callbacks driving an indicatif bar (clones share the bar).
#[derive(Clone)]
struct Bar(ProgressBar);

impl Progress for Bar {
    async fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_message(filename.to_string());
    }

    async fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    async fn finish(&mut self) {
        self.0.finish();
    }
}
