//! Downloading a member's input image for `/i2v`. The attachment is untrusted: we check what
//! Discord declares (type, size) before fetching, fetch only over https on port 443 from allowed
//! hosts (every redirect hop checked the same way) with a timeout, stop reading once the size cap
//! is passed whatever the headers say, and finally decode the image, on a blocking thread and
//! under allocation limits, to be sure it is one. Serenity's `Attachment::download` does none of
//! this.

use std::io::Cursor;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use image::{ImageDecoder, ImageFormat};
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
    /// Hosts we fetch from, normalised by [`normalise_host`] (Discord's CDN; tests add 127.0.0.1).
    pub allowed_hosts: Vec<String>,
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Largest accepted width or height, so a small file cannot decode to gigabytes.
    pub max_side: u32,
    /// Tests only (a loopback fake CDN): also accept plain http and any port, but only for
    /// allowed hosts that are loopback IP addresses. `false` by default and in production.
    pub insecure_loopback_for_tests: bool,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            allowed_hosts: default_hosts(),
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(20),
            max_side: 4096,
            insecure_loopback_for_tests: false,
        }
    }
}

/// Discord's attachment hosts.
pub fn default_hosts() -> Vec<String> {
    vec!["cdn.discordapp.com".into(), "media.discordapp.net".into()]
}

/// Redirect hops followed at most; each one is checked like the first URL.
pub const MAX_REDIRECTS: usize = 3;

/// The one list of image formats accepted from members: the declared content type and the
/// format sniffed from the bytes must both be in it.
pub const ACCEPTED_FORMATS: [(ImageFormat, &str, &str); 3] = [
    (ImageFormat::Png, "image/png", "PNG"),
    (ImageFormat::Jpeg, "image/jpeg", "JPEG"),
    (ImageFormat::WebP, "image/webp", "WebP"),
];

/// What decoding may allocate: a 4096×4096 RGBA image and some slack.
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;

fn accepted_names() -> String {
    let names: Vec<&str> = ACCEPTED_FORMATS.iter().map(|(_, _, n)| *n).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// A host name as the allow-list and URLs are compared: trimmed, lower-case, without the
/// trailing dot of a fully qualified name. Anything that is not a bare host (a scheme, port,
/// path, user info, wildcard, empty label) is refused with the reason.
pub fn normalise_host(raw: &str) -> Result<String, String> {
    let host = raw.trim();
    if host.is_empty() {
        return Err("an entry is empty".into());
    }
    if host.contains("://") {
        return Err(format!("`{host}` has a scheme; write the host name alone (e.g. cdn.discordapp.com): downloads always use https"));
    }
    if host.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(format!(
            "`{host}` is not a host name (write e.g. cdn.discordapp.com, without path, user or wildcard)"
        ));
    }
    let bare_v6 = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(IpAddr::V6(ip)) = bare_v6.parse::<IpAddr>() {
        return Ok(format!("[{ip}]"));
    }
    if host.contains(':') {
        return Err(format!(
            "`{host}` has a port; write the host name alone: downloads always use port 443"
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok(host)
}

/// Why an image was refused. `Display` is written for the member.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum DownloadError {
    #[error("`{filename}` is not a {} image ({found}).", accepted_names())]
    NotAnImage { filename: String, found: String },
    #[error("`{filename}` is {} MiB; images up to {} MiB are accepted.", mib(*size), mib(*max))]
    TooLarge {
        filename: String,
        size: u64,
        max: u64,
    },
    #[error("That image is not hosted on Discord, so it was not downloaded.")]
    HostNotAllowed { host: String },
    /// Not https on port 443, or a redirect that was refused; `reason` is for the log.
    #[error("That image link is not one floor33 downloads from, so it was not downloaded.")]
    UrlNotAllowed { reason: String },
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
        Some(t) if ACCEPTED_FORMATS.iter().any(|(_, mime, _)| *mime == t) => {}
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
    check_url(&parsed, policy)
}

/// The rule for the first URL and every redirect hop: https, port 443, no user info, an
/// allowed host. With `insecure_loopback_for_tests`, a loopback IP host may also use http and
/// any port.
pub fn check_url(url: &reqwest::Url, policy: &DownloadPolicy) -> Result<(), DownloadError> {
    let raw_host = url.host_str().unwrap_or("");
    let host = normalise_host(raw_host).map_err(|_| DownloadError::HostNotAllowed {
        host: raw_host.to_string(),
    })?;
    if !policy
        .allowed_hosts
        .iter()
        .any(|h| normalise_host(h).is_ok_and(|h| h == host))
    {
        return Err(DownloadError::HostNotAllowed { host });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DownloadError::UrlNotAllowed {
            reason: "the URL holds user info".into(),
        });
    }
    let loopback = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    if policy.insecure_loopback_for_tests && loopback && matches!(url.scheme(), "http" | "https") {
        return Ok(());
    }
    if url.scheme() != "https" {
        return Err(DownloadError::UrlNotAllowed {
            reason: format!("scheme {} (only https)", url.scheme()),
        });
    }
    if url.port_or_known_default() != Some(443) {
        return Err(DownloadError::UrlNotAllowed {
            reason: format!(
                "port {} (only 443)",
                url.port().map_or("none".into(), |p| p.to_string())
            ),
        });
    }
    Ok(())
}

/// The HTTP client for attachments: its own timeouts, no Discord auth header, and a redirect
/// policy that checks every hop with [`check_url`] (at most [`MAX_REDIRECTS`]).
pub fn client(policy: &DownloadPolicy) -> reqwest::Result<reqwest::Client> {
    let hops = policy.clone();
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .timeout(policy.timeout)
        .https_only(!policy.insecure_loopback_for_tests)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(DownloadError::UrlNotAllowed {
                    reason: format!("more than {MAX_REDIRECTS} redirects"),
                });
            }
            match check_url(attempt.url(), &hops) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        }))
        .build()
}

/// Checks, fetches and verifies the image. Use a client made by [`client`]: with another one,
/// a redirect off the allow-list is still refused here, but only after it was followed.
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
    // Decoding is CPU work: keep it off the async workers.
    let filename = meta.filename.clone();
    let max_side = policy.max_side;
    tokio::task::spawn_blocking(move || verify_image(&filename, bytes, max_side))
        .await
        .map_err(|e| DownloadError::Corrupt {
            filename: meta.filename.clone(),
            reason: format!("the decoder stopped: {e}"),
        })?
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
    let response = client.get(&meta.url).send().await.map_err(network)?;
    // Where we ended up after redirects must pass the same rule.
    check_url(response.url(), policy)?;
    let response = response
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
    // A hop refused by the redirect policy comes back as the policy's own error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<DownloadError>() {
            return refused.clone();
        }
        source = err.source();
    }
    if e.is_timeout() {
        DownloadError::Timeout
    } else {
        DownloadError::Network(e.to_string())
    }
}

/// Decodes the bytes: the sniffed format must be an accepted one, the header's size within
/// `max_side`, and the decoder may allocate no more than [`MAX_DECODE_ALLOC`].
pub fn verify_image(
    filename: &str,
    bytes: Vec<u8>,
    max_side: u32,
) -> Result<DownloadedImage, DownloadError> {
    let corrupt = |reason: String| DownloadError::Corrupt {
        filename: filename.to_string(),
        reason,
    };
    let format = image::guess_format(&bytes).map_err(|_| corrupt("unknown format".into()))?;
    if !ACCEPTED_FORMATS.iter().any(|(f, _, _)| *f == format) {
        return Err(DownloadError::NotAnImage {
            filename: filename.to_string(),
            found: format!("{format:?} data"),
        });
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(&bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width > max_side || height > max_side {
        return Err(DownloadError::TooManyPixels {
            filename: filename.to_string(),
            width,
            height,
            max: max_side,
        });
    }
    image::DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e.to_string()))?;
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
    fn hosts_are_normalised_or_refused() {
        assert_eq!(
            normalise_host(" CDN.DiscordApp.com. ").as_deref(),
            Ok("cdn.discordapp.com")
        );
        assert_eq!(normalise_host("[::1]").as_deref(), Ok("[::1]"));
        assert_eq!(normalise_host("127.0.0.1").as_deref(), Ok("127.0.0.1"));
        for bad in [
            "",
            " ",
            "https://x.com",
            "x.com:443",
            "x.com/a",
            "*.x.com",
            "a..b",
            "-a.b",
            "u@x.com",
        ] {
            assert!(normalise_host(bad).is_err(), "{bad:?}");
        }
        let p = DownloadPolicy {
            allowed_hosts: vec!["Cdn.Discordapp.Com.".into()],
            ..DownloadPolicy::default()
        };
        assert!(check_host("https://cdn.discordapp.com./a.png", &p).is_ok());
        assert!(check_host("https://cdn.discordapp.com:443/a.png", &p).is_ok());
        assert!(check_host("http://cdn.discordapp.com/a.png", &p).is_err());
        assert!(check_host("https://cdn.discordapp.com:444/a.png", &p).is_err());
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
