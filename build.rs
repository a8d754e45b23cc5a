//! Build script: only embeds run-time library paths when asked. `deploy/setup.sh` sets
//! `FLOOR33_RPATH` to the CUDA libraries it installed from PyPI wheels, so a `cuda` build finds
//! libcublas/libcurand/libnvrtc there without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=FLOOR33_RPATH");
    if let Ok(dirs) = std::env::var("FLOOR33_RPATH") {
        for dir in dirs.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
