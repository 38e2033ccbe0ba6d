//! The command line as documented: one exit-code scheme in the help texts, the README and the
//! code; `run --help` and `check --help` tell the environment and signals; completions and man
//! pages come from the same definitions.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::clients::repo_path;

fn amtgw(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
    command.args(args).env_remove("AMTGW_CONFIG");
    command.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The codes of the README's exit-code table (`| 78 | … |` rows under "Exit codes").
fn readme_exit_codes() -> BTreeSet<u8> {
    let readme = include_str!("../README.md");
    let table = &readme[readme
        .find("Exit codes, the same for every command")
        .unwrap()..];
    table
        .lines()
        .skip_while(|line| !line.starts_with("| code |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| line.split('|').nth(1).unwrap().trim().parse().unwrap())
        .collect()
}

/// The codes a help text lists under "Exit codes:" (lines of two spaces, a number, text).
fn help_exit_codes(help: &str) -> BTreeSet<u8> {
    help.lines()
        .skip_while(|line| !line.starts_with("Exit codes:"))
        .skip(1)
        .map_while(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn run_help_tells_environment_signals_and_the_readmes_exit_codes() {
    let out = amtgw(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for needle in [
        "AMTGW_GATEWAY__MAX_CONNECTIONS",
        "AMTGW_CONFIG",
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "SIGHUP",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    assert_eq!(help_exit_codes(&help), readme_exit_codes(), "{help}");
}

#[test]
fn check_help_tells_the_environment_and_its_exit_codes() {
    let help = stdout(&amtgw(&["check", "--help"]));
    assert!(help.contains("AMTGW_GATEWAY__MAX_CONNECTIONS"), "{help}");
    assert_eq!(
        help_exit_codes(&help),
        BTreeSet::from([0, 2, 78]),
        "check has no runtime failure: {help}"
    );
}

#[test]
fn usage_errors_exit_2_and_invalid_configuration_78() {
    // clap's own: no --config (and no AMTGW_CONFIG), an unknown flag.
    assert_eq!(amtgw(&["run"]).status.code(), Some(2));
    assert_eq!(amtgw(&["check", "--nope"]).status.code(), Some(2));
    let invalid = repo_path("config/invalid/zero-max-connections.toml");
    let invalid = invalid.to_str().unwrap();
    assert_eq!(
        amtgw(&["check", "--config", invalid]).status.code(),
        Some(78)
    );
    assert_eq!(amtgw(&["run", "--config", invalid]).status.code(), Some(78));
    assert_eq!(
        amtgw(&["pin", "--config", invalid, "--all"]).status.code(),
        Some(78)
    );
}

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    let out = amtgw(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(script.contains("complete -F _amtgw"), "{script}");
    assert!(script.contains("--config"), "{script}");
    assert!(stdout(&amtgw(&["completions", "zsh"])).starts_with("#compdef amtgw"));

    let page = stdout(&amtgw(&["man"]));
    assert!(page.contains(".TH amtgw 1"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = amtgw(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let run = std::fs::read_to_string(dir.path().join("amtgw-run.1")).unwrap();
    assert!(run.contains(".TH amtgw-run 1"), "{run}");
    assert!(run.contains("RUST_LOG") && run.contains("SIGHUP"), "{run}");
    assert!(dir.path().join("amtgw-check.1").is_file());
    assert!(dir.path().join("amtgw-pin.1").is_file());
    // The generators' own commands are hidden: no page, no line in --help.
    assert!(!dir.path().join("amtgw-man.1").exists());
    let help = stdout(&amtgw(&["--help"]));
    assert!(!help.contains("completions"), "{help}");
}
