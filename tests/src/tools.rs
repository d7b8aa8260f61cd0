//! Outside tools the tests run. CI sets `MINTGATE_REQUIRE_TOOLS=1`, where a missing tool fails
//! the test instead of skipping it (`.ci/run` installs them all).

/// Whether an outside tool is on PATH.
pub fn tool_available(name: &str) -> bool {
    available(name, &format!("command -v {name}"))
}

/// Whether `python3` can import `module` (e.g. `grpc`, a grpc-core client).
pub fn python_module_available(module: &str) -> bool {
    available(
        &format!("python3 module {module}"),
        &format!("python3 -c 'import {module}'"),
    )
}

fn available(what: &str, probe: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("MINTGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "MINTGATE_REQUIRE_TOOLS=1 but {what} is not installed"
        );
        eprintln!("note: {what} not installed; skipping");
    }
    found
}
