//! Running `tlsgate check --json` and reading its report, for the check tests.

use serde_json::Value;

/// Runs `tlsgate check ARGS --json`; returns the exit code and the parsed report.
pub async fn check_json(args: &[String]) -> (i32, Value) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .arg("check")
        .args(args)
        .arg("--json")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The finding `section`/`check` (the first, when several share the name).
pub fn finding<'a>(report: &'a Value, section: &str, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["section"] == section && f["check"] == check)
        .unwrap_or_else(|| panic!("no {section}/{check} in {report:#}"))
}
