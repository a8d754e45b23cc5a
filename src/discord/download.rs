//! Downloading a member's input image for `/i2v`. The attachment is untrusted: we check what
//! Discord declares (type, size) before fetching, fetch only from allowed hosts with a timeout,
//! stop reading once the size cap is passed whatever the headers say, and finally decode the
//! image to be sure it is one. Serenity's `Attachment::download` does none of this.

use std::io::Cursor;
use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;

/// What an attachment claims to be (from the interaction payload).
#[derive(Debug, Clone)]
pub struct AttachmentMeta {
    pub filename: String,
    pub content_type: Option<String>,
    pub size: u64,
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    /// Hosts we fetch from (Discord's CDN; tests add 127.0.0.1).
    pub allowed_hosts: Vec<String>,
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Largest accepted width or height, so a small file cannot decode to gigabytes.
    pub max_side: u32,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            allowed_hosts: default_hosts(),
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(20),
            max_side: 4096,
        }
    }
}

/// Discord's attachment hosts.
pub fn default_hosts() -> Vec<String> {
    vec!["cdn.discordapp.com".into(), "media.discordapp.net".into()]
}

const ACCEPTED_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

/// Why an image was refused. `Display` is written for the member.
#[derive(Debug, Error, PartialEq)]
pub enum DownloadError {
    #[error("`{filename}` is not a PNG, JPEG or WebP image ({found}).")]
    NotAnImage { filename: String, found: String },
    #[error("`{filename}` is {} MiB; images up to {} MiB are accepted.", mib(*size), mib(*max))]
    TooLarge {
        filename: String,
        size: u64,
        max: u64,
    },
    #[error("That image is not hosted on Discord, so it was not downloaded.")]
    HostNotAllowed { host: String },
    #[error("The image could not be downloaded (HTTP {status}). Upload it again and retry.")]
    Status { status: u16 },
    #[error("Downloading the image took too long. Try again or use a smaller image.")]
    Timeout,
    #[error("The image could not be downloaded. Try again in a moment.")]
    Network(String),
    #[error("`{filename}` could not be read as an image ({reason}).")]
    Corrupt { filename: String, reason: String },
    #[error("`{filename}` is {width}×{height}; images up to {max}×{max} pixels are accepted.")]
    TooManyPixels {
        filename: String,
        width: u32,
        height: u32,
        max: u32,
    },
}

fn mib(bytes: u64) -> String {
    let v = bytes as f64 / (1024.0 * 1024.0);
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A downloaded and verified image.
#[derive(Clone)]
pub struct DownloadedImage {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Debug for DownloadedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DownloadedImage({} bytes, {}x{})",
            self.bytes.len(),
            self.width,
            self.height
        )
    }
}

/// The checks that need no network: declared type and size.
pub fn check_declared(meta: &AttachmentMeta, policy: &DownloadPolicy) -> Result<(), DownloadError> {
    let declared = meta.content_type.as_deref().map(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match declared.as_deref() {
        Some(t) if ACCEPTED_TYPES.contains(&t) => {}
        other => {
            return Err(DownloadError::NotAnImage {
                filename: meta.filename.clone(),
                found: other.unwrap_or("unknown type").to_string(),
            })
        }
    }
    if meta.size > policy.max_bytes {
        return Err(DownloadError::TooLarge {
            filename: meta.filename.clone(),
            size: meta.size,
            max: policy.max_bytes,
        });
    }
    Ok(())
}

fn check_host(url: &str, policy: &DownloadPolicy) -> Result<(), DownloadError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| DownloadError::HostNotAllowed {
        host: "(invalid url)".into(),
    })?;
    let host = parsed.host_str().unwrap_or("").to_ascii_lowercase();
    let scheme_ok = matches!(parsed.scheme(), "https" | "http");
    if !scheme_ok
        || !policy
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
    {
        return Err(DownloadError::HostNotAllowed { host });
    }
    Ok(())
}

/// Checks, fetches and verifies the image.
pub async fn fetch_image(
    client: &reqwest::Client,
    meta: &AttachmentMeta,
    policy: &DownloadPolicy,
) -> Result<DownloadedImage, DownloadError> {
    check_declared(meta, policy)?;
    check_host(&meta.url, policy)?;
    let bytes = tokio::time::timeout(policy.timeout, fetch_capped(client, meta, policy))
        .await
        .map_err(|_| DownloadError::Timeout)??;
    verify_image(&meta.filename, bytes, policy.max_side)
}

async fn fetch_capped(
    client: &reqwest::Client,
    meta: &AttachmentMeta,
    policy: &DownloadPolicy,
) -> Result<Vec<u8>, DownloadError> {
    let too_large = |size: u64| DownloadError::TooLarge {
        filename: meta.filename.clone(),
        size,
        max: policy.max_bytes,
    };
    let response = client
        .get(&meta.url)
        .send()
        .await
        .map_err(network)?
        .error_for_status()
        .map_err(|e| DownloadError::Status {
            status: e.status().map(|s| s.as_u16()).unwrap_or(0),
        })?;
    if let Some(len) = response.content_length() {
        if len > policy.max_bytes {
            return Err(too_large(len));
        }
    }
    let mut body = Vec::with_capacity(meta.size.min(policy.max_bytes) as usize);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(network)?;
        if body.len() as u64 + chunk.len() as u64 > policy.max_bytes {
            return Err(too_large(body.len() as u64 + chunk.len() as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn network(e: reqwest::Error) -> DownloadError {
    if e.is_timeout() {
        DownloadError::Timeout
    } else {
        DownloadError::Network(e.to_string())
    }
}

/// Decodes the bytes (header first, to refuse huge dimensions before allocating).
pub fn verify_image(
    filename: &str,
    bytes: Vec<u8>,
    max_side: u32,
) -> Result<DownloadedImage, DownloadError> {
    let corrupt = |reason: String| DownloadError::Corrupt {
        filename: filename.to_string(),
        reason,
    };
    let reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(corrupt("unknown format".into()));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| corrupt(e.to_string()))?;
    if width > max_side || height > max_side {
        return Err(DownloadError::TooManyPixels {
            filename: filename.to_string(),
            width,
            height,
            max: max_side,
        });
    }
    image::load_from_memory(&bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(DownloadedImage {
        bytes,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ct: Option<&str>, size: u64) -> AttachmentMeta {
        AttachmentMeta {
            filename: "in.png".into(),
            content_type: ct.map(str::to_string),
            size,
            url: "https://cdn.discordapp.com/attachments/1/2/in.png".into(),
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn declared_type_and_size_are_checked_first() {
        let p = DownloadPolicy::default();
        assert!(check_declared(&meta(Some("image/png"), 1000), &p).is_ok());
        assert!(check_declared(&meta(Some("image/jpeg; charset=x"), 1000), &p).is_ok());
        let e = check_declared(&meta(Some("text/plain"), 10), &p).unwrap_err();
        assert!(e.to_string().contains("text/plain"), "{e}");
        assert!(matches!(
            check_declared(&meta(None, 10), &p),
            Err(DownloadError::NotAnImage { .. })
        ));
        let e = check_declared(&meta(Some("image/png"), 50 * 1024 * 1024), &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`in.png` is 50 MiB; images up to 10 MiB are accepted."
        );
    }

    #[test]
    fn only_allowed_hosts() {
        let p = DownloadPolicy::default();
        assert!(check_host("https://cdn.discordapp.com/a.png", &p).is_ok());
        assert!(check_host("https://media.discordapp.net/a.png", &p).is_ok());
        assert!(check_host("http://169.254.169.254/latest", &p).is_err());
        assert!(check_host("file:///etc/passwd", &p).is_err());
        assert!(check_host("https://cdn.discordapp.com.evil.example/a.png", &p).is_err());
    }

    #[test]
    fn images_are_decoded_and_bounded() {
        let ok = verify_image("a.png", png(8, 6), 4096).unwrap();
        assert_eq!((ok.width, ok.height), (8, 6));
        let mut broken = png(8, 6);
        broken.truncate(broken.len() / 2);
        assert!(matches!(
            verify_image("a.png", broken, 4096),
            Err(DownloadError::Corrupt { .. })
        ));
        assert!(matches!(
            verify_image("a.png", b"hello, not an image".to_vec(), 4096),
            Err(DownloadError::Corrupt { .. })
        ));
        assert!(matches!(
            verify_image("a.png", png(64, 8), 32),
            Err(DownloadError::TooManyPixels { .. })
        ));
    }
}
