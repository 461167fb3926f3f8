//! `meshd demo`, the main job of the README: three real daemons converge step by step.

mod support;

#[test]
fn the_demo_runs_every_step_and_ends_with_identical_nodes() {
    let output = support::meshd().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in ["1. ", "2. ", "3. ", "4. "] {
        assert!(stdout.contains(step), "step {step} missing:\n{stdout}");
    }
    assert!(stdout.contains("both edits merged"), "{stdout}");
    // It shows what an operator types: pairing by invite, and each write.
    for command in [
        "$ meshd --home $DEMO/nas invite",
        "$ meshd --home $DEMO/laptop join MESHD1",
        "$ meshd --home $DEMO/mac-mini mem put mesh user.preferences",
        "$ meshd --home $DEMO/nas status",
    ] {
        assert!(stdout.contains(command), "{command} missing:\n{stdout}");
    }
    assert!(
        stdout.contains("all three nodes hold identical memory and skills"),
        "{stdout}"
    );
    // A healthy run warns about nothing: nodes stopping in turn is not a failure.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}

#[test]
fn a_demo_cut_short_leaves_no_daemon_running() {
    use std::io::{BufRead, BufReader};
    let mut demo = support::meshd()
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let dir = first
        .split("DEMO=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_string();
    // Read until the daemons run, then close the pipe, as `meshd demo | head` does.
    for line in lines.by_ref() {
        if line.unwrap().contains(" join ") {
            break;
        }
    }
    drop(lines);
    demo.wait().unwrap();
    support::wait_until("the demo's daemons are gone", || {
        let found = std::process::Command::new("pgrep")
            .args(["-f", &dir])
            .output()
            .unwrap();
        found.stdout.is_empty()
    });
}
