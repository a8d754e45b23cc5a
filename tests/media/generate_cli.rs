//! `floor33 generate` end to end with the random-weight smoke models: the MP4 it writes decodes
//! to the requested frame count and size, in H.264 / yuv420p.

use std::path::Path;
use std::process::Command;

use floor33::video::probe_mp4;

fn floor33() -> Command {
    Command::new(env!("CARGO_BIN_EXE_floor33"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floor33-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {stderr}");
    stderr
}

#[test]
fn generate_tiny_writes_a_playable_mp4() {
    let dir = temp_dir("t2v");
    let out = dir.join("tiny.mp4");
    let log = run_ok(
        floor33()
            .args([
                "generate",
                "--variant",
                "tiny",
                "--prompt",
                "a corgi running on the beach",
            ])
            .args(["--seed", "42", "--steps", "2", "--device", "cpu", "--out"])
            .arg(&out),
    );
    assert!(
        log.contains("smoke model"),
        "the tiny model says what it is: {log}"
    );
    let probe = probe_mp4(&out).unwrap();
    assert_eq!(probe.codec_name, "h264");
    assert_eq!(probe.pix_fmt, "yuv420p");
    assert_eq!((probe.width, probe.height), (48, 32));
    assert_eq!(probe.frames, 16);
    assert!((probe.fps - 10.0).abs() < 1e-6, "save fps {}", probe.fps);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn generate_tiny_i2v_from_an_image_file() {
    let dir = temp_dir("i2v");
    let input = dir.join("in.png");
    image::RgbImage::from_fn(90, 60, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 4) as u8, 128])
    })
    .save(&input)
    .unwrap();
    let out = dir.join("i2v.mp4");
    let log = run_ok(
        floor33()
            .args([
                "generate",
                "--variant",
                "tiny-i2v",
                "--prompt",
                "the waves move",
            ])
            .args([
                "--steps", "2", "--frames", "8", "--device", "cpu", "--image",
            ])
            .arg(&input)
            .arg("--out")
            .arg(&out),
    );
    assert!(log.contains("centre-crop"), "{log}");
    let probe = probe_mp4(&out).unwrap();
    assert_eq!((probe.width, probe.height, probe.frames), (48, 32, 8));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn clear_errors_for_bad_input() {
    let dir = temp_dir("bad");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--variant".into(),
                "tiny".into(),
                "--width".into(),
                "50".into(),
            ],
            "not a multiple of 4",
        ),
        (vec!["--variant".into(), "nope".into()], "unknown variant"),
        (
            vec![
                "--variant".into(),
                "tiny-i2v".into(),
                "--image".into(),
                text.display().to_string(),
            ],
            "PNG, JPEG",
        ),
        (
            vec!["--variant".into(), "tiny-i2v".into()],
            "needs an image",
        ),
    ];
    for (args, words) in cases {
        let out = floor33()
            .args([
                "generate", "--prompt", "x", "--steps", "1", "--device", "cpu", "--out",
            ])
            .arg(dir.join("x.mp4"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!Path::new(&dir.join("x.mp4")).exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_weights_say_how_to_download_them() {
    let dir = temp_dir("noweights");
    let out = floor33()
        .env("FLOOR33_WEIGHTS_DIR", &dir)
        .env("HF_HOME", &dir)
        .args([
            "generate",
            "--variant",
            "vc2",
            "--prompt",
            "x",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(dir.join("x.mp4"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("floor33 weights download"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}
