//! The container image users get: scripts/container-build.sh builds the Dockerfile's shipped
//! stage with `podman build --isolation chroot`, and the test runs that image as a container
//! runtime would, but in a chroot (podman cannot start containers on every machine the tests
//! run on): the image's own filesystem (a writable container root from `podman create` and
//! `podman mount`), its user, its environment, its command and its health check, the
//! configuration read-only to that user. A simulated device behind it is learned on first use
//! and its pin lands in the image's state volume; curl talks through the gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::clients::{
    Spawned, announced_listener, assert_general_settings, curl_get_settings, repo_path, start_sim,
};

/// Runs `program` with `args`; its stdout, or the test fails naming everything it printed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The image's configuration, as `podman image inspect` reports it.
fn inspect(tag: &str, field: &str) -> String {
    run(
        "podman",
        &[
            "image",
            "inspect",
            tag,
            "--format",
            &format!("{{{{json {field}}}}}"),
        ],
    )
}

/// A container made from the image, its root filesystem mounted writable here, with /proc
/// inside it as a runtime provides one; undone on drop.
struct ContainerRoot {
    id: String,
    root: PathBuf,
}

impl ContainerRoot {
    fn create(tag: &str) -> ContainerRoot {
        let id = run("podman", &["create", tag]).trim().to_owned();
        let root = PathBuf::from(run("podman", &["mount", &id]).trim());
        std::fs::create_dir_all(root.join("proc")).unwrap();
        run(
            "mount",
            &["-t", "proc", "proc", root.join("proc").to_str().unwrap()],
        );
        ContainerRoot { id, root }
    }

    /// `argv` in the container's root, as `user`, with exactly the image's environment plus
    /// `extra`.
    fn command(
        &self,
        user: &str,
        env: &[String],
        extra: &[(&str, &str)],
        argv: &[&str],
    ) -> Command {
        let mut command = Command::new("chroot");
        command
            .arg(format!("--userspec={user}"))
            .arg(&self.root)
            .args(argv)
            .env_clear();
        for pair in env {
            let (name, value) = pair.split_once('=').unwrap();
            command.env(name, value);
        }
        command.envs(extra.iter().copied());
        command
    }
}

impl Drop for ContainerRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root.join("proc")).status();
        let _ = Command::new("podman").args(["umount", &self.id]).status();
        let _ = Command::new("podman").args(["rm", "-f", &self.id]).status();
    }
}

/// The gateway's configuration for the image: one tofu device, admin and WS-Man on loopback.
fn config(sim: &amtgw_sim::SimDevice, admin: &str) -> String {
    format!(
        r#"[gateway]
log_format = "json"
shutdown_delay = "0s"

[admin]
listen = "{admin}"

[services.wsman]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "sim"

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "sim"
host = "127.0.0.1"
ports = {{ wsman = {wsman}, redirection = {redirection}, dash = {dash} }}
trust = "tofu"
"#,
        wsman = sim.wsman_addr().port(),
        redirection = sim.redirection_addr().port(),
        dash = sim.dash_addr().port(),
    )
}

/// The addresses the gateway logged for WS-Man and the admin listener.
fn listening(transcript: &str) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let (mut wsman, mut admin) = (None, None);
    for (service, addr) in transcript.lines().filter_map(announced_listener) {
        match service.as_str() {
            "wsman" => wsman = Some(addr),
            "admin" => admin = Some(addr),
            _ => {}
        }
    }
    (wsman, admin)
}

#[test]
fn the_dockerfile_labels_the_version_cargo_builds() {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let wanted = format!("ARG VERSION={}\n", env!("CARGO_PKG_VERSION"));
    assert!(dockerfile.contains(&wanted), "Dockerfile lacks {wanted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_serves_a_tofu_device_as_its_user_keeps_the_pin_in_its_volume_and_reports_healthy()
 {
    let build = Command::new(repo_path("scripts/container-build.sh"))
        .env("IMAGE", "localhost/amtgw-test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&build.stdout);
    assert!(
        build.status.success(),
        "scripts/container-build.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let tag = stdout.lines().last().unwrap().to_owned();
    assert_eq!(
        tag,
        format!("localhost/amtgw-test:{}", env!("CARGO_PKG_VERSION"))
    );

    // What the Dockerfile promises a runtime.
    let user: String = serde_json::from_str(&inspect(&tag, ".Config.User")).unwrap();
    assert_eq!(user, "65532:65532");
    let env: Vec<String> = serde_json::from_str(&inspect(&tag, ".Config.Env")).unwrap();
    assert!(
        env.contains(&"STATE_DIRECTORY=/var/lib/amtgw".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"AMTGW_CONFIG=/etc/amtgw/amtgw.toml".to_owned()),
        "{env:?}"
    );
    let volumes: serde_json::Value =
        serde_json::from_str(&inspect(&tag, ".Config.Volumes")).unwrap();
    assert!(volumes.get("/var/lib/amtgw").is_some(), "{volumes}");
    let health: serde_json::Value =
        serde_json::from_str(&inspect(&tag, ".Config.Healthcheck")).unwrap();
    assert_eq!(
        health["Test"],
        serde_json::json!(["CMD", "/amtgw", "health"])
    );
    let labels: serde_json::Value = serde_json::from_str(&inspect(&tag, ".Config.Labels")).unwrap();
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(&inspect(&tag, ".Config.Entrypoint")).unwrap();
    let cmd: Vec<String> = serde_json::from_str(&inspect(&tag, ".Config.Cmd")).unwrap();
    let argv: Vec<&str> = entrypoint.iter().chain(&cmd).map(String::as_str).collect();
    assert_eq!(argv, ["/amtgw", "run"]);

    let container = ContainerRoot::create(&tag);
    let root = &container.root;
    // The configuration as a read-only mount would give it: root's, not writable by the user.
    let sim = start_sim("sim").await;
    let etc = root.join("etc/amtgw");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("amtgw.toml"), config(&sim, "127.0.0.1:0")).unwrap();

    let mut gateway =
        Spawned::start(&mut container.command(&user, &env, &[("RUST_LOG", "info")], &argv));
    gateway.expect("\"listening\"").await;
    let (wsman, admin) = listening(&gateway.transcript());
    let (wsman, admin) = (wsman.unwrap(), admin.unwrap());

    // A console through the gateway: the device is learned on first use...
    let body = curl_get_settings(wsman).await;
    assert_general_settings(&body, "sim", "the image's gateway");
    // ...and its pin kept in the state volume, owned by the image's user.
    let store = root.join("var/lib/amtgw/amtgw-pins.toml");
    let text = std::fs::read_to_string(&store)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", store.display(), gateway.transcript()));
    assert!(text.contains("sim"), "{text}");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), 65532);
    assert!(!etc.join("amtgw-pins.toml").exists());

    // The image's HEALTHCHECK, as the runtime runs it (the same user and environment), asking
    // the admin listener named by the configuration.
    let health_config = Path::new("/etc/amtgw/health.toml");
    std::fs::write(
        root.join(health_config.strip_prefix("/").unwrap()),
        config(&sim, &admin.to_string()),
    )
    .unwrap();
    let check: Vec<&str> = health["Test"].as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let out = container
        .command(
            &user,
            &env,
            &[("AMTGW_CONFIG", health_config.to_str().unwrap())],
            &check,
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "health check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("/healthz at {admin}: ok\n")
    );
}
