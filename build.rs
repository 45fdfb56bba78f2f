//! Makes the binary find libtorch by itself, keeps `libtorch_cuda.so` linked,
//! and compiles the small C++ shim of `src/torchx` against libtorch's headers.
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

    let torch = locate_libtorch();
    let (version, lib_dir) = (torch.version, torch.lib_dir);
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
    compile_shim(&torch.include_dir, torch.cxx11_abi);
    compile_dist(&torch.include_dir, torch.cxx11_abi);
}

/// Builds `src/torchx/dist.cpp` (c10d: TCPStore, Gloo, the Reducer) when
/// the Gloo headers are there (Debian's `libgloo-dev`; `$GLOO_INCLUDE`
/// names another directory), and sets `cfg(vitrine_c10d)` for the Rust
/// side. Without them the binary still builds and starts, and a job asking
/// for several devices is refused by name.
fn compile_dist(include: &Path, cxx11_abi: bool) {
    println!("cargo:rustc-check-cfg=cfg(vitrine_c10d)");
    println!("cargo:rerun-if-changed=src/torchx/dist.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    let gloo = std::env::var("GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/include"));
    let c10d = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    if !gloo.join("gloo/config.h").exists() || !c10d.exists() {
        println!(
            "cargo:warning=no Gloo headers in {} (apt-get install libgloo-dev): \
             building without multi-device training",
            gloo.display()
        );
        return;
    }
    println!("cargo:rustc-cfg=vitrine_c10d");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .define("_GLIBCXX_USE_CXX11_ABI", if cxx11_abi { "1" } else { "0" })
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        .file("src/torchx/dist.cpp")
        .compile("vitrine_dist");
}

/// Builds `src/torchx/shim.cpp` as torch-sys builds its own C++ (C++17,
/// libtorch's C++ ABI), into a static library linked before libtorch.
fn compile_shim(include: &Path, cxx11_abi: bool) {
    println!("cargo:rerun-if-changed=src/torchx/shim.cpp");
    println!("cargo:rerun-if-changed=src/torchx/guarded.h");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", if cxx11_abi { "1" } else { "0" })
        .define("GLOG_USE_GLOG_EXPORT", None)
        .file("src/torchx/shim.cpp")
        .compile("vitrine_torchx");
}

/// Where libtorch is and how it was built.
struct Libtorch {
    version: String,
    lib_dir: PathBuf,
    include_dir: PathBuf,
    /// libtorch's `_GLIBCXX_USE_CXX11_ABI` (true for every wheel since 2.7).
    cxx11_abi: bool,
}

/// Finds libtorch: `$LIBTORCH`, else the `torch` package of the venv's Python.
fn locate_libtorch() -> Libtorch {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi_override = std::env::var("LIBTORCH_CXX11_ABI").ok().map(|v| v != "0");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = PathBuf::from(dir);
        let version = std::fs::read_to_string(dir.join("build-version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Libtorch {
            version,
            lib_dir: dir.join("lib"),
            include_dir: dir.join("include"),
            cxx11_abi: abi_override.unwrap_or(true),
        };
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
             print(os.path.dirname(torch.__file__)); \
             print(int(torch.compiled_with_cxx11_abi()))",
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
    let root = PathBuf::from(lines.next().expect("torch's directory"));
    let abi = lines.next().map(|v| v.trim() != "0").unwrap_or(true);
    Libtorch {
        version,
        lib_dir: root.join("lib"),
        include_dir: root.join("include"),
        cxx11_abi: abi_override.unwrap_or(abi),
    }
}
