//! `floor33 bench --json` with the random-weight `tiny` model on the CPU: stdout is one JSON
//! object with the run's shape, the three stages in order with positive timings, the full
//! generation, and the host's peak memory (GPU fields null on the CPU).

use std::process::Command;

use serde_json::Value;

fn bench_json(extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["bench", "--variant", "tiny", "--device", "cpu", "--json"])
        .args(["--unet-runs", "2", "--decode-runs", "1"])
        .args(extra)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn assert_memory(what: &str, memory: &Value) {
    let rss = memory["host_peak_rss"].as_u64();
    assert!(
        rss.is_some_and(|b| b > 1 << 20),
        "{what}: host peak {memory}"
    );
    for gpu in [
        "gpu_tensors_peak",
        "gpu_pool_reserved_peak",
        "gpu_device_used",
    ] {
        assert!(memory[gpu].is_null(), "{what}: {gpu} on the CPU: {memory}");
    }
}

#[test]
fn bench_json_reports_every_stage_and_the_generation() {
    let report = bench_json(&["--steps", "2", "--frames", "4"]);
    assert_eq!(report["variant"], "tiny");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["dtype"], "f32");
    assert_eq!(report["frames"], 4);
    assert!(report["height"].as_u64().is_some_and(|h| h > 0));
    assert_memory("build", &report["build"]["memory"]);
    let stages = report["stages"].as_array().expect("stages array");
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text_encode", "unet_step", "vae_decode"]);
    for (stage, runs) in stages.iter().zip([2, 2, 1]) {
        let name = &stage["name"];
        assert_eq!(stage["runs"], runs, "{name}");
        let (median, min) = (stage["median_s"].as_f64(), stage["min_s"].as_f64());
        assert!(median.is_some_and(|m| m > 0.0), "{name}: {stage}");
        assert!(
            min.is_some_and(|m| m > 0.0 && m <= median.unwrap()),
            "{name}: {stage}"
        );
        assert_memory(name.as_str().unwrap(), &stage["memory"]);
    }
    let generation = &report["generation"];
    assert_eq!(generation["steps"], 2);
    assert!(generation["total_s"].as_f64().is_some_and(|t| t > 0.0));
    assert_memory("generation", &generation["memory"]);
}

#[test]
fn bench_json_without_steps_has_no_generation() {
    let report = bench_json(&["--steps", "0"]);
    assert!(report["generation"].is_null(), "{report}");
    assert_eq!(report["stages"].as_array().map(Vec::len), Some(3));
}
