//! Makes the binary find libtorch by itself and keeps `libtorch_cuda.so` linked.
//!
//! torch-sys links against the libtorch it finds (here: the `torch` wheel in
//! the repo's `.venv`, via `LIBTORCH_USE_PYTORCH=1`) but puts no run path on
//! the binary, and the linker's `--as-needed` drops `libtorch_cuda.so` because
//! no symbol of it is referenced directly: the binary would then neither start
//! without `LD_LIBRARY_PATH` nor ever see a GPU. We fix both here, once.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");

    let (version, lib_dir) = locate_libtorch();
    println!("cargo:rustc-env=VITRINE_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=VITRINE_LIBTORCH_LIB={}", lib_dir.display());

    // `$ORIGIN/lib` lets a packaged binary ship libtorch beside itself (the
    // container does so); the absolute path serves builds in this checkout.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Returns libtorch's version and its `lib` directory.
fn locate_libtorch() -> (String, PathBuf) {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = PathBuf::from(dir);
        let version = std::fs::read_to_string(dir.join("build-version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return (version, dir.join("lib"));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let venv_python = manifest.join(".venv/bin/python");
    let python: &Path = if venv_python.exists() {
        &venv_python
    } else {
        Path::new("python3")
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); \
             print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python:?} to locate torch: {e}; run `make setup`"));
    assert!(
        out.status.success(),
        "{python:?} cannot import torch ({}); run `make setup`",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let version = lines.next().unwrap_or("unknown").to_string();
    let lib = PathBuf::from(lines.next().expect("torch lib dir"));
    (version, lib)
}
