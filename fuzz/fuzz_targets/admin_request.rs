//! The admin HTTP listener: arbitrary bytes from a client, over one connection (an in-memory
//! duplex stream into `admin::serve_connection`, hyper's HTTP/1 parser and every endpoint,
//! with a bearer token and a tofu device configured). The connection must end, without a
//! panic, soon after the client stops sending, and whatever comes back is HTTP.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use amtgw::AdminLimits;
use amtgw::admin::{AdminState, serve_connection};
use amtgw::config::{Config, Environment};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The token seeds present (`Authorization: Bearer fuzz-admin-token`).
const TOKEN: &str = "fuzz-admin-token";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: Arc<AdminState>,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("admin-token"), TOKEN).expect("token file");
    let toml = r#"
[admin]
listen = "127.0.0.1:0"
token_file = "admin-token"

[gateway]
pin_store = "pins.toml"

[[devices]]
name = "amt-tofu"
host = "192.0.2.10"
listen = "127.0.0.2"
trust = "tofu"

[[devices]]
name = "amt-pin"
host = "192.0.2.11"
listen = "127.0.0.3"
trust = "pin"
pins = ["cert-sha256:7732ca35d959c35dc893899e414d2ef6e476c9afca869aa0e5b1daed1c31c511"]
"#;
    let config = Config::from_toml_with_env("fuzz", dir.path(), toml, &Environment::empty())
        .expect("the fixture config is valid");
    let limits = AdminLimits {
        header_read_timeout: Duration::from_secs(2),
        connection_lifetime: Duration::from_secs(5),
        ..AdminLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let state = runtime
        .block_on(AdminState::standalone(config, limits))
        .expect("admin state");
    Fixture {
        runtime,
        state,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let state = fixture.state.clone();
    let response = fixture.runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let served = tokio::spawn(serve_connection(
            server,
            peer,
            state,
            CancellationToken::new(),
        ));
        let (mut reader, mut writer) = tokio::io::split(&mut client);
        let send = async {
            // The server may close first (a malformed head): then writing fails, as it may.
            let _ = writer.write_all(data).await;
            let _ = writer.shutdown().await;
        };
        let mut response = Vec::new();
        let receive = reader.read_to_end(&mut response);
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            let ((), read) = tokio::join!(send, receive);
            let _ = read;
            served.await
        })
        .await;
        match ended {
            Ok(Ok(())) => response,
            Ok(Err(e)) => panic!("the connection task failed: {e}"),
            Err(_) => panic!("the connection did not end within 20 s of the client's close"),
        }
    });
    assert!(
        response.is_empty() || response.starts_with(b"HTTP/1."),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
});
