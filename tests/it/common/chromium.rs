//! Headless Chromium as the browser the CORS and hub tests load their pages in: it resolves
//! the test's host names to 127.0.0.1, ignores the fixture certificates' unknown CA, and
//! prints the DOM once the page has loaded and its virtual-time budget is spent.

use std::path::Path;
use std::time::Duration;

/// Loads `url` and returns (the DOM, Chromium's stderr without its D-Bus noise).
/// `hosts`: `--host-resolver-rules`, e.g. `MAP page.test 127.0.0.1`.
pub async fn dump_dom(
    profile: &Path,
    hosts: &str,
    virtual_time_ms: u32,
    url: &str,
) -> (String, String) {
    let version = std::process::Command::new("chromium")
        .arg("--version")
        .output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "chromium is needed (scripts/test.sh installs it)"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--host-resolver-rules={hosts}"),
                &format!("--virtual-time-budget={virtual_time_ms}"),
                "--dump-dom",
                url,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 90 s")
    .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.contains("dbus"))
        .collect::<Vec<_>>()
        .join("\n");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}
