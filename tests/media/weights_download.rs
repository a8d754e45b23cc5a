//! `weights download` keeps only what the Hub published: the download is checked against the
//! Hub's SHA-256 (its X-Linked-Etag) and the checkpoint strictly against the model before anything
//! is installed. Runs against a loopback fake Hub (tests/support/fake_hub.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::fake_hub::{serve, sha256_hex};
use floor33::weights::{download_from, WeightsError};

const REPO: &str = "VideoCrafter/VideoCrafter2";

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("floor33-download-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Regular files (and links) under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn torch_fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch/state_dict_zip.ckpt"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_the_published_one_is_deleted() {
    let published = b"the checkpoint the Hub lists".to_vec();
    let hub = serve(torch_fixture(), sha256_hex(&published)).await;
    let cache = tmp_dir("wrong");
    let err = download_from(&hub.endpoint, REPO, "model.ckpt", Some(&cache), false)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::Download { .. }), "{msg}");
    assert!(
        msg.contains("SHA-256") && msg.contains(&sha256_hex(&published)),
        "{msg}"
    );
    assert!(msg.contains("deleted") && msg.contains("again"), "{msg}");
    let kept: Vec<_> = files_under(&cache)
        .into_iter()
        .filter(|f| !f.starts_with("models--VideoCrafter--VideoCrafter2/refs/"))
        .collect();
    assert!(kept.is_empty(), "left in the cache: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_downloaded_when_the_hub_gives_no_sha256() {
    let hub = serve(torch_fixture(), String::new()).await;
    let cache = tmp_dir("no-hash");
    let err = download_from(&hub.endpoint, REPO, "model.ckpt", Some(&cache), false)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no SHA-256") && msg.contains("nothing was downloaded"),
        "{msg}"
    );
    assert!(files_under(&cache).is_empty(), "{:?}", files_under(&cache));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_file_is_kept_and_a_corrupted_cache_is_not_trusted() {
    let body = torch_fixture();
    let hub = serve(body.clone(), sha256_hex(&body)).await;
    let cache = tmp_dir("right");
    let path = download_from(&hub.endpoint, REPO, "model.ckpt", Some(&cache), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);

    // Corrupt the cached blob: the next call (which needs no network) refuses it.
    let blob = std::fs::canonicalize(&path).unwrap();
    std::fs::write(&blob, b"bit rot").unwrap();
    let err = download_from(
        "http://127.0.0.1:9",
        REPO,
        "model.ckpt",
        Some(&cache),
        false,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert!(!blob.exists(), "the corrupted blob is deleted");

    // ...and a new download brings back the published file.
    let path = download_from(&hub.endpoint, REPO, "model.ckpt", Some(&cache), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_checkpoint_that_does_not_fit_the_model_is_not_installed() {
    // Correct hash, wrong content for vc2 (a small torch.save file): the strict check refuses it.
    let body = torch_fixture();
    let hub = serve(body.clone(), sha256_hex(&body)).await;
    let dir = tmp_dir("cli");
    let weights = dir.join("weights");
    let endpoint = hub.endpoint.clone();
    let hf_home = dir.join("hf");
    let weights_dir = weights.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_floor33"))
            .args(["weights", "download", "vc2"])
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", hf_home)
            .env("FLOOR33_WEIGHTS_DIR", weights_dir)
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("does not fit the vc2 model"), "{stderr}");
    assert!(stderr.contains("missing"), "names what is wrong: {stderr}");
    assert!(
        files_under(&weights).is_empty(),
        "{:?}",
        files_under(&weights)
    );
}
