//! Hostile checkpoints (issue 11): each crafted `.ckpt` must end in a clean `WeightsError::Format`
//! naming the problem, never a panic, an abort (stack overflow) or an allocation the file cannot
//! back. The cases are built here from opcodes (tests/support/crafted_ckpt.rs); a few of them
//! are committed as files in tests/fixtures/crafted/checkpoints/ (with anything the fuzzer in
//! fuzz/ finds) and replayed from disk too.

use std::path::{Path, PathBuf};

use super::support::crafted_ckpt::{write_legacy, write_zip, Pk};
use candle_core::DType;
use floor33::weights::{convert_to_safetensors, WeightSource, WeightsError};

const FUZZ_FOUND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/crafted/checkpoints"
);

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("floor33-crafted-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 16 bytes: a float storage of 4 elements.
fn four_floats() -> Vec<(&'static str, Vec<u8>)> {
    vec![(
        "0",
        [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    )]
}

/// Opens `path` and returns the format error's text; any other outcome fails the test.
fn format_error(path: &Path) -> String {
    match WeightSource::open(&[path]) {
        Err(WeightsError::Format { detail, .. }) => {
            assert!(detail.len() < 1000, "error message too long: {detail}");
            detail
        }
        Err(other) => panic!("{}: expected a format error, got {other:?}", path.display()),
        Ok(src) => panic!("{}: accepted: {src:?}", path.display()),
    }
}

/// `(case, pickle, expected words in the error)`, all over the 4-float storage `0`.
fn zip_cases() -> Vec<(&'static str, Pk, &'static str)> {
    let rebuild = |args: Pk| {
        Pk::state_dict("w", |p| {
            p.global("torch._utils", "_rebuild_tensor_v2")
                .op(&args.0[2..])
                .op(b"R")
        })
    };
    let tensor = |numel, offset, size: &'static [i64], stride: &'static [i64]| {
        Pk::state_dict("w", move |p| p.tensor("0", numel, offset, size, stride))
    };
    const DEEP: usize = 100_000;
    vec![
        (
            "rebuild tuple of two",
            rebuild(
                Pk::new()
                    .op(b"(")
                    .storage("FloatStorage", "0", 4)
                    .int(0)
                    .op(b"t"),
            ),
            "got 2 arguments",
        ),
        (
            "rebuild of an empty tuple",
            rebuild(Pk::new().op(b")")),
            "got 0 arguments",
        ),
        (
            "rebuild of a non-tuple",
            rebuild(Pk::new().op(b"N")),
            "not a tuple",
        ),
        (
            "deeply nested tuples",
            Pk::new().repeat(b'(', DEEP).repeat(b't', DEEP).op(b"."),
            "nest deeper",
        ),
        (
            "deeply nested lists",
            Pk::new().repeat(b']', DEEP).repeat(b'a', DEEP - 1).op(b"."),
            "nest deeper",
        ),
        (
            "memo billion laughs",
            (0..48)
                .fold(Pk::new().op(b"Nq\x00"), |p, _| {
                    p.op(b"0h\x00h\x00\x86q\x00")
                })
                .op(b"."),
            "memo copies",
        ),
        (
            "memo copies of a long string",
            (0..20_000)
                .fold(
                    Pk::new().op(b"]").str(&"x".repeat(1 << 16)).op(b"q\x00a"),
                    |p, _| p.op(b"h\x00a"),
                )
                .op(b"."),
            "memo copies",
        ),
        (
            "GLOBAL name longer than any Python name",
            Pk::new().op(b"c").op(&[b'm'; 100_000]).op(b"\nx\n."),
            "too long",
        ),
        (
            "long opcode run",
            Pk::new().repeat(b'N', 2_000_000).op(b"."),
            "parse stack",
        ),
        (
            "storage declared far beyond its zip entry",
            tensor(1 << 40, 0, &[1 << 40], &[1]),
            "declares 1099511627776 elements",
        ),
        (
            "shape far beyond its storage",
            tensor(4, 0, &[1 << 30], &[1]),
            "past its storage",
        ),
        (
            "storage offset 2^62",
            tensor(4, 1 << 62, &[2], &[1]),
            "past its storage",
        ),
        (
            "offset that wraps when scaled to bytes",
            tensor(4, (1 << 62) + 1, &[1], &[1]),
            "past its storage",
        ),
        (
            "element count overflowing 64 bits",
            tensor(4, 0, &[1 << 33, 1 << 33], &[0, 0]),
            "element count overflows",
        ),
        (
            "size times stride overflowing 64 bits",
            tensor(4, 0, &[3, 3], &[i64::MAX, i64::MAX]),
            "extent overflows",
        ),
        (
            "negative size",
            tensor(4, 0, &[-1], &[1]),
            "not a non-negative int",
        ),
        (
            "size and stride of different lengths",
            tensor(4, 0, &[2, 2], &[1]),
            "2 dims but stride 1",
        ),
        (
            "broadcast view with more elements than storage",
            tensor(4, 0, &[1000], &[0]),
            "broadcast views",
        ),
        (
            "storage missing from the archive",
            Pk::state_dict("w", |p| p.tensor("7", 4, 0, &[4], &[1])),
            "archive/data/7",
        ),
        (
            "persistent id that is not a storage",
            Pk::state_dict("w", |p| p.op(b"(").str("module").op(b"tQ")),
            "persistent id",
        ),
        (
            "storage key that is a path",
            Pk::state_dict("w", |p| p.tensor("../../etc/passwd", 4, 0, &[4], &[1])),
            "alphanumeric",
        ),
        ("pickle without STOP", Pk::new().op(b"}"), "past the end"),
        (
            "string longer than the pickle",
            Pk::new().op(b"X\xff\xff\xff\x7f"),
            "past the end",
        ),
        ("pops an empty stack", Pk::new().op(b"s."), "empty stack"),
        (
            "code-executing opcode (INST)",
            Pk::new().op(b"ios\nsystem\n."),
            "opcode 0x69",
        ),
        (
            "memo key never stored",
            Pk::new().op(b"h\x05."),
            "never stored",
        ),
        ("top level not a dict", Pk::new().op(b"N."), "not a dict"),
    ]
}

#[test]
fn crafted_zip_checkpoints_end_in_clean_errors() {
    let dir = tmp_dir("zip");
    let mut failures = Vec::new();
    for (i, (case, pickle, expect)) in zip_cases().into_iter().enumerate() {
        let path = dir.join(format!("{i}.ckpt"));
        write_zip(&path, &pickle.0, &four_floats());
        let detail = format_error(&path);
        println!("{case}: {detail}"); // the list of outcomes, with --nocapture
        if !detail.contains(expect) {
            failures.push(format!("{case}: expected {expect:?} in: {detail}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn crafted_legacy_checkpoints_end_in_clean_errors() {
    let dir = tmp_dir("legacy");
    let object = Pk::state_dict("w", |p| p.tensor("9", 4, 0, &[4], &[1])).0;
    let record = |count: u64, bytes: usize| {
        let mut r = count.to_le_bytes().to_vec();
        r.extend(std::iter::repeat_n(0u8, bytes));
        r
    };
    let cases: Vec<(&str, Vec<&str>, Vec<u8>, &str)> = vec![
        (
            "record claiming 2^40 elements",
            vec!["9"],
            record(1 << 40, 16),
            "past the end",
        ),
        (
            "record that wraps when scaled",
            vec!["9"],
            record(u64::MAX / 2, 16),
            "size overflows",
        ),
        ("record cut off", vec!["9"], vec![4, 0, 0], "cut off"),
        (
            "record shorter than the storage",
            vec!["9"],
            record(2, 8),
            "declares 4 elements",
        ),
        (
            "key no tensor uses",
            vec!["9", "5"],
            record(4, 16),
            "no tensor uses",
        ),
        (
            "storage absent from the key list",
            vec![],
            Vec::new(),
            "not in the file",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (case, keys, records, expect)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("{i}.ckpt"));
        write_legacy(&path, &object, &keys, &records);
        let detail = format_error(&path);
        println!("{case}: {detail}"); // the list of outcomes, with --nocapture
        if !detail.contains(expect) {
            failures.push(format!("{case}: expected {expect:?} in: {detail}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same builder with a sound record is accepted: the cases above fail for their flaw.
    let good = dir.join("good.ckpt");
    write_legacy(&good, &object, &["9"], &record(4, 16));
    let src = WeightSource::open(&[&good]).unwrap();
    assert_eq!(src.manifest().0.get("w"), Some(&vec![4]));
}

#[test]
fn the_zip_builder_makes_readable_checkpoints() {
    // Guards the cases above: a sound tensor through the same builder loads, with its values.
    let dir = tmp_dir("sound");
    let path = dir.join("ok.ckpt");
    write_zip(
        &path,
        &Pk::state_dict("w", |p| p.tensor("0", 4, 1, &[3], &[1])).0,
        &four_floats(),
    );
    let src = WeightSource::open(&[&path]).unwrap();
    let t = src.load("w", &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), vec![2., 3., 4.]);
}

/// `zip_rebuild_tuple_of_two` for the case "rebuild tuple of two".
fn slug(case: &str) -> String {
    case.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        .to_lowercase()
}

#[test]
fn committed_crafted_checkpoints_end_in_clean_errors() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    let cases = zip_cases();
    for entry in std::fs::read_dir(FUZZ_FOUND).expect("the committed corpus") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ckpt") {
            continue;
        }
        let detail = format_error(&path);
        replayed += 1;
        // A file written from a case above must still fail for that case's reason.
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if let Some((case, _, expect)) = cases
            .iter()
            .find(|(case, _, _)| format!("zip_{}", slug(case)) == stem)
        {
            if !detail.contains(expect) {
                failures.push(format!("{case}: expected {expect:?} in: {detail}"));
            }
        }
    }
    assert!(replayed >= 5, "only {replayed} checkpoints replayed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_failed_convert_leaves_no_partial_file() {
    let dir = tmp_dir("partial");
    let src = dir.join("model.ckpt");
    let pickle = Pk::new()
        .op(b"}")
        .str("a")
        .tensor("0", 4, 0, &[4], &[1])
        .op(b"s")
        .str("b")
        .tensor("1", 4, 0, &[4], &[1])
        .op(b"s.");
    let floats = four_floats().remove(0).1;
    write_zip(&src, &pickle.0, &[("0", floats.clone()), ("1", floats)]);
    let dst = dir.join("model.safetensors");

    // The checkpoint is cut short while the conversion runs (a disk filling up, a download
    // overwritten): reading the tensors fails after the output was started.
    let err = convert_to_safetensors(&src, &dst, Some(DType::F16), &|_| true, |done, _| {
        if done == 0 {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&src)
                .unwrap()
                .set_len(40)
                .unwrap();
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("loading a"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["model.ckpt".to_string()],
        "left behind: {left:?}"
    );
}
