//! `floor33 generate` refuses bad arguments before any work: no model is loaded, no seed is
//! drawn (its line is the first thing printed once the request is accepted), no file written.

use std::process::{Command, Output};

fn generate(extra: &[&str], out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["generate", "--variant", "tiny", "--prompt", "a corgi"])
        .args(["--steps", "2", "--device", "cpu", "--seed", "1"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("binary runs")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floor33-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Refused by the argument parser itself (exit status 2), naming the option.
#[test]
fn out_of_range_save_fps_and_crf_are_usage_errors() {
    let dir = scratch("ranges");
    let out = dir.join("x.mp4");
    for (flag, value) in [
        ("--save-fps", "0"),
        ("--save-fps", "1001"),
        ("--crf", "0"),
        ("--crf", "52"),
    ] {
        let o = generate(&[flag, value], &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("seed 1"), "work started: {stderr}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A 120 KB negative prompt is bounded like the prompt, before anything is loaded.
#[test]
fn an_oversized_negative_prompt_is_refused_before_work() {
    let dir = scratch("negative");
    let out = dir.join("x.mp4");
    let negative = "blurry, ".repeat(15_000);
    assert!(negative.len() >= 120_000);
    let o = generate(&["--negative", &negative], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("negative prompt is longer than"),
        "{stderr}"
    );
    assert!(!stderr.contains("seed 1"), "work started: {stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_output_in_a_missing_directory_is_refused_before_work() {
    let dir = scratch("out");
    let out = dir.join("no/such/dir/x.mp4");
    let o = generate(&[], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--out") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("seed 1"), "work started: {stderr}");
    std::fs::remove_dir_all(dir).ok();
}
