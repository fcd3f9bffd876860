//! What the benchmarks share: running CPython's side of a comparison and
//! reading its figures.

use std::fmt::Display;
use std::process::Command;

/// Runs `script`, saved as `name` in a fresh temporary directory that is
/// also its working directory, with `python3` and `args`; its stdout, or
/// `None` when python3 is missing or fails (then with the last line of its
/// stderr printed).
pub(crate) fn run_python(name: &str, script: &str, args: &[&dyn Display]) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("mproc-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(name);
    std::fs::write(&path, script).ok()?;
    let out = Command::new("python3")
        .arg(&path)
        .args(args.iter().map(|a| a.to_string()))
        .current_dir(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "python3 failed: {}",
            err.trim().lines().last().unwrap_or("")
        );
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run_python`] for a script that prints one `key value` line a figure:
/// a reader of the figures by key (`None` for a key it did not print).
pub(crate) fn python_figures(
    name: &str,
    script: &str,
    args: &[&dyn Display],
) -> Option<impl Fn(&str) -> Option<f64> + use<>> {
    let text = run_python(name, script, args)?;
    Some(move |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    })
}
