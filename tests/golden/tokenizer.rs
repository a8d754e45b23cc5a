//! Golden test: `ClipTokenizer` must reproduce `open_clip.tokenize` (open_clip_torch 2.22.0,
//! ftfy 6.3.1) id-for-id on every prompt of the fixture set.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use floor33::models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH, EOT, SOT};

/// Fixture folder: `$FLOOR33_GOLDEN_DIR`, else `tests/fixtures/golden` in this crate.
fn golden_dir() -> PathBuf {
    match std::env::var_os("FLOOR33_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"),
    }
}

fn tokens_json() -> serde_json::Value {
    let path = golden_dir().join("tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path:?}: {e}"))
}

fn prompts(json: &serde_json::Value, key: &str) -> Vec<String> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("tokens.json has no array {key:?}"))
        .iter()
        .map(|p| p.as_str().expect("prompt is a string").to_string())
        .collect()
}

fn load(file: &str) -> std::collections::HashMap<String, Tensor> {
    let path = golden_dir().join(file);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {path:?}: {e}"))
}

fn i64_rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2::<i64>().expect("(n, 77) int64 tensor")
}

fn i64_vec(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().expect("(n,) int64 tensor")
}

/// Compares every row and collects all failures so one run shows every mismatching prompt.
fn check_rows(
    tok: &ClipTokenizer,
    prompts: &[String],
    rows: &[Vec<i64>],
    lens: Option<(&[i64], &[i64])>,
) {
    assert_eq!(prompts.len(), rows.len(), "prompt count vs id rows");
    let mut failures = Vec::new();
    for (i, (prompt, want)) in prompts.iter().zip(rows).enumerate() {
        let got = tok.encode(prompt);
        let got_ids: Vec<i64> = got.ids.iter().map(|&id| id as i64).collect();
        if &got_ids != want {
            failures.push(format!(
                "prompt #{i} {prompt:?}:\n  want {want:?}\n  got  {got_ids:?}"
            ));
            continue;
        }
        if let Some((lengths, untruncated)) = lens {
            if (got.len as i64, got.untruncated_len as i64) != (lengths[i], untruncated[i]) {
                failures.push(format!(
                    "prompt #{i} {prompt:?}: lengths want ({}, {}) got ({}, {})",
                    lengths[i], untruncated[i], got.len, got.untruncated_len
                ));
            }
            if got.truncated() != (untruncated[i] > CONTEXT_LENGTH as i64) {
                failures.push(format!("prompt #{i} {prompt:?}: truncated() is wrong"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        prompts.len(),
        failures.join("\n")
    );
}

#[test]
fn tokens_match_open_clip() {
    let json = tokens_json();
    assert_eq!(json["context_length"].as_u64(), Some(CONTEXT_LENGTH as u64));
    assert_eq!(json["sot"].as_u64(), Some(SOT as u64));
    assert_eq!(json["eot"].as_u64(), Some(EOT as u64));
    assert_eq!(json["pad"].as_u64(), Some(0));
    let prompts = prompts(&json, "prompts");
    let t = load("tokens.safetensors");
    let rows = i64_rows(&t["ids"]);
    let lengths = i64_vec(&t["lengths"]);
    let untruncated = i64_vec(&t["untruncated_lengths"]);
    assert_eq!(rows.len(), 41);
    let tok = ClipTokenizer::new().expect("tokenizer builds");
    check_rows(&tok, &prompts, &rows, Some((&lengths, &untruncated)));
}

#[test]
fn text_encoder_io_ids_match() {
    let json = tokens_json();
    let prompts = prompts(&json, "text_encoder_io_prompts");
    let t = load("text_encoder_io.safetensors");
    let rows = i64_rows(&t["ids"]);
    let tok = ClipTokenizer::new().expect("tokenizer builds");
    check_rows(&tok, &prompts, &rows, None);
}
