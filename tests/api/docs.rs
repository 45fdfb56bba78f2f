//! The documentation stays a newcomer's README and linked reference pages:
//! the README under 16 KiB, and every relative link and `#anchor` across
//! README.md, ARCHITECTURE.md and docs/ resolving
//! (`scripts/check_doc_links.py`).

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_readme_stays_short() {
    let size = std::fs::metadata(format!("{ROOT}/README.md"))
        .unwrap()
        .len();
    assert!(
        size < 16 * 1024,
        "README.md is {size} bytes: reference belongs in docs/, the README gets a line and a link"
    );
}

#[test]
fn every_documentation_link_resolves() {
    let out = std::process::Command::new("python3")
        .arg(format!("{ROOT}/scripts/check_doc_links.py"))
        .arg(ROOT)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
