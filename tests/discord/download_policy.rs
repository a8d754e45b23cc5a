//! The `/i2v` attachment download rule: https on port 443 from an allowed host, for the first
//! URL and every redirect hop; one list of image formats for the declared type and the bytes.
//! A loopback test CDN (plain http, so only reachable through the test-only allowance) serves
//! images and redirects, and records what was asked of it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use floor33::discord::download::{self, AttachmentMeta, DownloadError, DownloadPolicy};

/// Test double of a CDN on 127.0.0.1: `/img.png` an image, `/gif` GIF bytes, `/bmp` BMP bytes,
/// `/hop/N` redirects N more times before the image, `/away` redirects to `localhost` (the
/// same server under a host name that is not on the allow-list), `/crafted/NAME` a file of
/// the crafted-image corpus.
#[derive(Clone)]
struct TestCdn {
    port: u16,
    paths: Arc<Mutex<Vec<String>>>,
}

/// The crafted-image corpus (see its README).
const CRAFTED_IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crafted/images");

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(12, 8, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 90]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    out
}

async fn serve(State(cdn): State<TestCdn>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    cdn.paths.lock().unwrap().push(format!("{host}{path}"));
    let redirect = |to: String| (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    let image = |bytes: Vec<u8>| ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
    match path.as_str() {
        "/img.png" => image(encoded(image::ImageFormat::Png)),
        "/gif" => image(encoded(image::ImageFormat::Gif)),
        "/bmp" => image(encoded(image::ImageFormat::Bmp)),
        "/away" => redirect(format!("http://localhost:{}/img.png", cdn.port)),
        p if p.starts_with("/crafted/") => {
            let name = &p["/crafted/".len()..];
            match std::fs::read(Path::new(CRAFTED_IMAGES).join(name)) {
                Ok(bytes) if !name.contains('/') => image(bytes),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
        p => match p.strip_prefix("/hop/").and_then(|n| n.parse::<u32>().ok()) {
            Some(0) => redirect("/img.png".into()),
            Some(n) => redirect(format!("/hop/{}", n - 1)),
            None => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

impl TestCdn {
    async fn start() -> TestCdn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = TestCdn {
            port: listener.local_addr().unwrap().port(),
            paths: Arc::default(),
        };
        let app = Router::new().fallback(serve).with_state(cdn.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        cdn
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requested(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// The test allowance: this CDN's loopback address, plain http, any port.
    fn policy(&self) -> DownloadPolicy {
        DownloadPolicy {
            allowed_hosts: vec!["127.0.0.1".into()],
            timeout: Duration::from_secs(5),
            insecure_loopback_for_tests: true,
            ..DownloadPolicy::default()
        }
    }
}

fn meta(url: String) -> AttachmentMeta {
    AttachmentMeta {
        filename: "in.png".into(),
        content_type: Some("image/png".into()),
        size: 100,
        url,
    }
}

async fn fetch(url: String, policy: &DownloadPolicy) -> Result<(u32, u32), DownloadError> {
    let client = download::client(policy).unwrap();
    download::fetch_image(&client, &meta(url), policy)
        .await
        .map(|img| (img.width, img.height))
}

#[tokio::test]
async fn production_defaults_refuse_plain_http_and_other_ports_before_connecting() {
    let cdn = TestCdn::start().await;
    // The live loopback CDN is on the allow-list, but without the test allowance its plain
    // http URL is refused and never fetched.
    let strict = DownloadPolicy {
        insecure_loopback_for_tests: false,
        ..cdn.policy()
    };
    let e = fetch(cdn.url("/img.png"), &strict).await.unwrap_err();
    assert!(matches!(e, DownloadError::UrlNotAllowed { .. }), "{e:?}");
    assert!(cdn.requested().is_empty(), "{:?}", cdn.requested());

    let defaults = DownloadPolicy::default();
    assert!(!defaults.insecure_loopback_for_tests);
    for url in [
        "http://cdn.discordapp.com/attachments/1/2/a.png",
        "https://cdn.discordapp.com:8443/attachments/1/2/a.png",
        "https://user:pw@cdn.discordapp.com/attachments/1/2/a.png",
        "ftp://cdn.discordapp.com/a.png",
    ] {
        let e = fetch(url.into(), &defaults).await.unwrap_err();
        assert!(
            matches!(e, DownloadError::UrlNotAllowed { .. }),
            "{url}: {e:?}"
        );
    }
    let e = fetch(
        "https://cdn.discordapp.com.evil.example/a.png".into(),
        &defaults,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DownloadError::HostNotAllowed { .. }), "{e:?}");
    // The allowance never reaches a host that is not a loopback address.
    let allowance = DownloadPolicy {
        insecure_loopback_for_tests: true,
        ..DownloadPolicy::default()
    };
    let e = fetch("http://cdn.discordapp.com/a.png".into(), &allowance)
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::UrlNotAllowed { .. }), "{e:?}");
}

#[tokio::test]
async fn every_redirect_hop_is_checked_against_the_allow_list() {
    let cdn = TestCdn::start().await;
    let policy = cdn.policy();
    assert_eq!(fetch(cdn.url("/img.png"), &policy).await, Ok((12, 8)));
    // Hops on an allowed host are followed, up to the limit.
    assert_eq!(
        fetch(
            cdn.url(&format!("/hop/{}", download::MAX_REDIRECTS - 1)),
            &policy
        )
        .await,
        Ok((12, 8))
    );
    let e = fetch(
        cdn.url(&format!("/hop/{}", download::MAX_REDIRECTS + 2)),
        &policy,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DownloadError::UrlNotAllowed { .. }), "{e:?}");

    // An open redirect to a host off the list is refused before it is requested.
    let before = cdn.requested().len();
    let e = fetch(cdn.url("/away"), &policy).await.unwrap_err();
    assert_eq!(
        e,
        DownloadError::HostNotAllowed {
            host: "localhost".into()
        }
    );
    let after = cdn.requested()[before..].to_vec();
    assert_eq!(after.len(), 1, "only /away was requested: {after:?}");
    assert!(after[0].ends_with("/away"), "{after:?}");

    // With a client that follows anything, the final URL is still checked.
    let e = download::fetch_image(&reqwest::Client::new(), &meta(cdn.url("/away")), &policy)
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::HostNotAllowed { .. }), "{e:?}");
}

#[tokio::test]
async fn gif_and_bmp_bytes_are_refused_like_a_gif_or_bmp_declaration() {
    let cdn = TestCdn::start().await;
    let policy = cdn.policy();
    for (path, declared) in [("/gif", "image/gif"), ("/bmp", "image/bmp")] {
        let e = fetch(cdn.url(path), &policy).await.unwrap_err();
        assert!(
            matches!(e, DownloadError::NotAnImage { .. }),
            "{path}: {e:?}"
        );
        assert!(e.to_string().contains("PNG, JPEG or WebP"), "{e}");
        let declared_meta = AttachmentMeta {
            content_type: Some(declared.into()),
            ..meta(cdn.url("/img.png"))
        };
        assert!(matches!(
            download::check_declared(&declared_meta, &policy),
            Err(DownloadError::NotAnImage { .. })
        ));
    }
    // Each accepted format passes both checks.
    for (format, mime, _) in download::ACCEPTED_FORMATS {
        let declared = AttachmentMeta {
            content_type: Some(mime.into()),
            ..meta(String::new())
        };
        download::check_declared(&declared, &policy).unwrap();
        download::verify_image("a", encoded(format), 64).unwrap();
    }
}

/// What each file of the crafted-image corpus must come to through the real download path
/// (declared type and size, fetch, then the blocking-thread decode).
type Outcome = Result<(u32, u32), DownloadError>;

fn crafted_expectation(name: &str) -> Option<fn(&Outcome) -> bool> {
    use DownloadError::*;
    Some(match name {
        "control_12x8.png" | "control_12x8.jpg" | "control_12x8.webp" => |r| r == &Ok((12, 8)),
        "png_header_60000x60000.png" | "jpeg_header_60000x60000.png" => |r| {
            matches!(
                r,
                Err(TooManyPixels {
                    width: 60000,
                    height: 60000,
                    max: 4096,
                    ..
                })
            )
        },
        "gif_bytes.png" | "bmp_bytes.png" => |r| matches!(r, Err(NotAnImage { .. })),
        "truncated.png"
        | "png_header_width_0.png"
        | "png_sound_header_unreadable_pixels.png"
        | "png_signature_only.png"
        | "webp_truncated.png"
        | "zero_bytes.png"
        | "text.png" => |r| matches!(r, Err(Corrupt { .. })),
        _ => return None,
    })
}

#[tokio::test]
async fn every_crafted_image_is_refused_cleanly_and_the_controls_accepted() {
    let cdn = TestCdn::start().await;
    let policy = cdn.policy();
    let client = download::client(&policy).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(CRAFTED_IMAGES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "README.md")
        .collect();
    names.sort();
    assert!(names.len() >= 14, "the corpus holds {} files", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let Some(expected) = crafted_expectation(name) else {
            failures.push(format!("{name}: no expectation written for this file"));
            continue;
        };
        // Declared as its name says, at its real size: the bytes decide.
        let declared = match name.rsplit('.').next() {
            Some("jpg") => "image/jpeg",
            Some("webp") => "image/webp",
            _ => "image/png",
        };
        let meta = AttachmentMeta {
            filename: name.clone(),
            content_type: Some(declared.into()),
            size: std::fs::metadata(Path::new(CRAFTED_IMAGES).join(name))
                .unwrap()
                .len(),
            url: cdn.url(&format!("/crafted/{name}")),
        };
        let got = download::fetch_image(&client, &meta, &policy)
            .await
            .map(|img| (img.width, img.height));
        println!("{name}: {got:?}"); // the outcomes, with --nocapture
        if !expected(&got) {
            failures.push(format!("{name}: unexpected {got:?}"));
        }
        if let Err(e) = &got {
            // A sentence for the member that names their file; never a decoder that died.
            let text = e.to_string();
            if !text.starts_with(&format!("`{name}`")) || text.len() > 300 {
                failures.push(format!("{name}: message {text:?}"));
            }
            if text.contains("decoder stopped") {
                failures.push(format!("{name}: the decoder panicked: {text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
