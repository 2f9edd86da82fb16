//! The guest plugins (`plugins/`), built for wasm32-wasip2 once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the guest workspace (`plugins/`) once per test binary and returns the directory of
/// the `.wasm` files. Needs the wasm32-wasip2 target (scripts/test.sh installs it).
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugins-wasm");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(root.join("plugins/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins for wasm32-wasip2 failed"
        );
        target.join("wasm32-wasip2/release")
    })
}
