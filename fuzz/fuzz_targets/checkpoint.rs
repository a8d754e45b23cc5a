//! Fuzzes the checkpoint reader (src/weights/pth.rs, pth_storage.rs, pickle.rs) on whole files. The first input
//! byte picks how the rest is used:
//! - even: the rest is the checkpoint file itself (zip, legacy or junk);
//! - odd: the rest is a `data.pkl`, wrapped in a valid torch zip with storages `0`..`3` of
//!   16, 64, 0 and 4096 bytes, so the fuzzer spends its time in the unpickler and the tensor checks.
//!
//! Every tensor the reader indexes is then read. Any panic, abort, stack overflow, or memory use
//! past libFuzzer's `-rss_limit_mb` is a finding.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

// The reader's own modules, compiled in at the crate root (where their `super::` points).
#[allow(dead_code)]
#[path = "../../src/weights/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../src/weights/pickle.rs"]
mod pickle;
#[allow(dead_code)]
#[path = "../../src/weights/pth.rs"]
mod pth;
#[path = "../../src/weights/pth_storage.rs"]
mod pth_storage;

fn wrap_in_zip(pickle: &[u8]) -> Vec<u8> {
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, len) in [(0, 16), (1, 64), (2, 0), (3, 4096)] {
        zip.start_file(format!("archive/data/{key}"), options)
            .unwrap();
        zip.write_all(&vec![0x3c; len]).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        wrap_in_zip(rest)
    };
    let path = std::env::temp_dir().join(format!("floor33-fuzz-{}.ckpt", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    if let Ok(index) = pth::PthIndex::open(&path) {
        let names: Vec<String> = index.entries().map(|(n, _, _)| n.to_string()).collect();
        for name in names {
            let _ = index.read(&name);
        }
    }
});
