//! A program that leaks a named segment it owns still unlinks it when it
//! exits through `exit()`; a segment whose name it handed over stays.

use std::path::Path;

use testkit::limited::run_program;

fn name_after<'a>(stdout: &'a str, tag: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no {tag:?} line in {stdout:?}"))
        .trim()
}

#[test]
fn owned_segments_are_unlinked_at_exit_and_handed_over_ones_stay() {
    let r = run_program(env!("CARGO_BIN_EXE_shm_at_exit"));
    r.assert_exited(0);
    let owned = name_after(&r.stdout, "owned ");
    let kept = name_after(&r.stdout, "kept ");
    let shm = Path::new("/dev/shm");
    let kept_there = shm.join(kept).exists();
    // Clean up before asserting, so a failure leaves nothing behind.
    let _ = std::fs::remove_file(shm.join(kept));
    assert!(!shm.join(owned).exists(), "{owned} left in /dev/shm");
    assert!(kept_there, "{kept} was unlinked though handed over");
}
