//! The project stands alone: its Istio manifest tests (the ones that needed a
//! `shared/` folder beside the repository before) pass from a copy of the
//! repository's tracked files placed where no `shared/` folder is beside it.
//!
//! The copy holds exactly what `git ls-files` lists, plus the npm packages
//! `scripts/install-deps.sh test` installs into `tests/istio-crds/` (linked,
//! not tracked). The already built `istio` test binary runs against the copy
//! through `SIDESTREAM_WORKSPACE_ROOT`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest built `istio-<hash>` test binary beside this one.
fn istio_test_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .expect("read deps dir")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.strip_prefix("istio-")
                .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path).unwrap_or_else(|| {
        panic!(
            "no built istio test binary in {}; build it with `cargo test -p sidestream-tests --test istio --no-run`",
            deps.display()
        )
    })
}

fn copy_tracked_files(root: &Path, to: &Path) -> usize {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("run git ls-files");
    assert!(
        output.status.success(),
        "git ls-files failed in {}: {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut copied = 0;
    for name in output.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).expect("UTF-8 file name");
        let from = root.join(name);
        if !from.is_file() {
            continue; // deleted in the work tree, not yet committed
        }
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("copy {name}: {e}"));
        copied += 1;
    }
    copied
}

#[test]
fn istio_tests_pass_from_a_copy_without_shared_beside_it() {
    let root = sidestream_tests::workspace_root();
    let base = tempfile::tempdir().expect("temp dir");
    let copy = base.path().join("sidestream");
    let copied = copy_tracked_files(&root, &copy);
    assert!(copied > 50, "only {copied} tracked files copied");
    assert!(
        !base.path().join("shared").exists(),
        "the copy must have no shared/ folder beside it"
    );
    let node_modules = root.join("tests/istio-crds/node_modules");
    assert!(
        node_modules.is_dir(),
        "{} is missing: run scripts/install-deps.sh test",
        node_modules.display()
    );
    let checker_dir = copy.join("tests/istio-crds");
    assert!(
        checker_dir.join("validate.mjs").is_file(),
        "tests/istio-crds/validate.mjs is not tracked by git"
    );
    std::os::unix::fs::symlink(&node_modules, checker_dir.join("node_modules"))
        .expect("link node_modules");

    let binary = istio_test_binary();
    let output = Command::new(&binary)
        .args(["--test-threads", "2"])
        .current_dir(&copy)
        .env("SIDESTREAM_WORKSPACE_ROOT", &copy)
        .output()
        .expect("run the istio test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Istio tests failed from a copy without shared/ ({}):\n{stdout}\n{stderr}",
        binary.display()
    );
    let passed: usize = stdout
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("test result: ok. ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    assert!(
        passed >= 8,
        "expected the Istio tests to run from the copy, {passed} passed:\n{stdout}"
    );
    for test in [
        "istio_resources_validate_against_istio_crd_schemas",
        "crd_validation_rejects_broken_istio_resources",
    ] {
        assert!(
            stdout.contains(&format!("test {test} ... ok")),
            "{test} did not pass from the copy:\n{stdout}"
        );
    }
}
