#![allow(clippy::unwrap_used)]
//! The pin store under real crashes and real concurrent processes: this test binary re-executes
//! itself as the writer (`pin_store_writer`, ignored unless `AMTGW_PIN_STORE_WRITER` is set),
//! and the parent `kill -9`s it mid-write or races two of them.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use amtgw::tls::{Fingerprints, Pin, PinStore};

const WRITER_ENV: &str = "AMTGW_PIN_STORE_WRITER";
/// `alternate:DEVICE` (replace forever with two values) or `add:PREFIX:COUNT`.
const MODE_ENV: &str = "AMTGW_PIN_STORE_MODE";

fn fingerprints(seed: &str) -> Fingerprints {
    Fingerprints {
        certificate: Pin::of_certificate(seed.as_bytes()),
        public_key: Pin::of_public_key(seed.as_bytes()),
    }
}

/// The child side. Prints `pin-store-wrote N` after each write has returned (so is on disk).
#[test]
#[ignore = "run by the other tests as a child process"]
fn pin_store_writer() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let store = PinStore::open(Path::new(&path)).unwrap();
    let mode = std::env::var(MODE_ENV).unwrap();
    let started = Instant::now();
    match mode.split(':').collect::<Vec<_>>()[..] {
        ["alternate", device] => {
            let values = [fingerprints("old"), fingerprints("new")];
            // Bounded, so an orphan (the parent died without killing it) stops by itself.
            for n in 1.. {
                store.replace(device, &values[n % 2]).unwrap();
                println!("pin-store-wrote {n}");
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
        }
        ["add", prefix, count] => {
            for n in 0..count.parse::<usize>().unwrap() {
                store
                    .replace(&format!("{prefix}-{n}"), &fingerprints(prefix))
                    .unwrap();
                println!("pin-store-wrote {n}");
            }
        }
        _ => panic!("bad {MODE_ENV}: {mode}"),
    }
}

/// A writer child, killed (SIGKILL) if the test panics before it does.
struct Writer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Writer {
    fn spawn(path: &Path, mode: &str) -> Writer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "pin_store_writer",
                "--exact",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, path)
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Writer { child, lines }
    }

    /// Block until the child reports its `count`th completed write.
    fn wait_for_writes(&mut self, count: usize) {
        let mut seen = 0;
        while seen < count {
            match self.lines.next() {
                Some(line) => {
                    if line.unwrap().contains("pin-store-wrote ") {
                        seen += 1;
                    }
                }
                None => panic!(
                    "writer exited after {seen} of {count} writes: {:?}",
                    self.child.wait()
                ),
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn has_temp_file(dir: &Path) -> bool {
    names_in(dir)
        .iter()
        .any(|n| n.starts_with(".pins.toml.tmp."))
}

/// Poll (the writer runs meanwhile) until `condition` holds; a writer that never gets there
/// would be a bug, so give up loudly rather than hang.
fn spin_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "the writer never reached the kill point"
        );
        std::thread::yield_now();
    }
}

#[test]
fn kill_9_during_repeated_writes_leaves_old_or_new_content() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    // Bystanders make the file ~60 KB, so a write takes long enough to be killed inside it.
    {
        let store = PinStore::open(&path).unwrap();
        for n in 0..300 {
            store
                .replace(&format!("bystander-{n:03}"), &fingerprints(&n.to_string()))
                .unwrap();
        }
    }
    let bystanders = PinStore::open(&path).unwrap().snapshot();
    let old = fingerprints("old");
    let new = fingerprints("new");

    let mut rounds_with_leftovers = 0;
    for round in 0..20 {
        let mut writer = Writer::spawn(&path, "alternate:amt-crash");
        // Where the kill lands is decided by what the writer has observably done, not by time:
        // a number of completed writes that varies with the round, then a phase of the next
        // write (right after the report, while its temporary file exists, just after its
        // rename).
        writer.wait_for_writes(1 + round * 7 % 19);
        match round % 3 {
            0 => {}
            1 => spin_until(|| has_temp_file(dir.path())),
            _ => {
                spin_until(|| has_temp_file(dir.path()));
                spin_until(|| !has_temp_file(dir.path()));
            }
        }
        writer.child.kill().unwrap();
        writer.child.wait().unwrap();

        if has_temp_file(dir.path()) {
            rounds_with_leftovers += 1;
        }
        let store = PinStore::open(&path)
            .unwrap_or_else(|e| panic!("round {round}: store does not parse after kill -9: {e}"));
        let pin = store.get("amt-crash").unwrap();
        assert!(
            (pin.certificate == old.certificate && pin.public_key == old.public_key)
                || (pin.certificate == new.certificate && pin.public_key == new.public_key),
            "round {round}: {pin:?}"
        );
        let snapshot = store.snapshot();
        assert_eq!(snapshot.len(), bystanders.len() + 1, "round {round}");
        for (name, pin) in bystanders.iter() {
            assert_eq!(snapshot.get(name), Some(pin), "round {round}");
        }
        // Opening cleaned up whatever the killed writer left behind.
        assert_eq!(
            names_in(dir.path()),
            BTreeSet::from(["pins.toml".to_owned(), "pins.toml.lock".to_owned()]),
            "round {round}"
        );
    }
    eprintln!(
        "20 kills in {:?}; {rounds_with_leftovers} left a temporary file behind",
        started.elapsed()
    );
    // The mid-write rounds must really have interrupted a write, or this tests nothing.
    assert!(rounds_with_leftovers > 0);
}

#[test]
fn two_processes_writing_at_once_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let mut writers = [
        Writer::spawn(&path, "add:left:40"),
        Writer::spawn(&path, "add:right:40"),
    ];
    for writer in &mut writers {
        writer.wait_for_writes(40);
        assert!(writer.child.wait().unwrap().success());
    }
    let store = PinStore::open(&path).unwrap();
    let snapshot = store.snapshot();
    assert_eq!(snapshot.len(), 80, "{:?}", snapshot.keys());
    for n in 0..40 {
        assert!(
            store
                .get(&format!("left-{n}"))
                .unwrap()
                .matches(&fingerprints("left"))
        );
        assert!(
            store
                .get(&format!("right-{n}"))
                .unwrap()
                .matches(&fingerprints("right"))
        );
    }
}
