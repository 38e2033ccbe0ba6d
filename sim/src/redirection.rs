//! The device's redirection protocol endpoint (16995 twin): session start,
//! USERPASS and digest authentication, a simulated serial console over SOL
//! and a minimal RFB handshake for KVM (IDE-R is refused). Byte layouts follow amt-protocol.md §5; every reply is written and
//! flushed on its own because amtterm 1.4 discards whatever else arrives in
//! the same `read()` after 0x14, 0x21 and 0x23 (§9).

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Interval, MissedTickBehavior};

use super::DeviceState;
use super::digest::{DigestFields, QOP_AUTH, REDIRECTION_METHOD, REDIRECTION_URI};
use super::host::{BootSource, HostStatus, PowerState};
use super::rfb::{self, RfbError};

const START_REDIRECTION_SESSION: u8 = 0x10;
const START_REDIRECTION_SESSION_REPLY: u8 = 0x11;
const END_REDIRECTION_SESSION: u8 = 0x12;
const AUTHENTICATE_SESSION: u8 = 0x13;
const AUTHENTICATE_SESSION_REPLY: u8 = 0x14;
const START_SOL: u8 = 0x20;
const START_SOL_REPLY: u8 = 0x21;
const END_SOL: u8 = 0x22;
const END_SOL_REPLY: u8 = 0x23;
const KEEP_ALIVE_PING: u8 = 0x24;
const KEEP_ALIVE_PONG: u8 = 0x25;
/// Sent by MeshCommander, MeshCentral and DMT right after 0x21; its meaning is
/// undocumented, so it is accepted and ignored.
const SOL_SETTINGS_UNKNOWN: u8 = 0x27;
const SOL_DATA_TO_HOST: u8 = 0x28;
const SOL_DATA_FROM_HOST: u8 = 0x2A;
const SOL_HEARTBEAT: u8 = 0x2B;
/// Starts IDE-R (18 bytes) or, in a KVM session, KVM (8 bytes).
const IDER_OR_KVM_START: u8 = 0x40;
const KVM_START_REPLY: u8 = 0x41;
const KVM_START_LEN: usize = 8;

const STATUS_SUCCESS: u8 = 0;
const STATUS_FAILURE: u8 = 1;
const STATUS_TYPE_UNKNOWN: u8 = 1;
/// StartRedirectionSessionReply while the device's one KVM session is taken.
const STATUS_BUSY: u8 = 2;
const STATUS_NOT_SUPPORTED: u8 = 2;
/// StartRedirectionSessionReply for a session type the device has switched off (KVM disabled
/// through CIM_KVMRedirectionSAP).
const STATUS_UNSUPPORTED: u8 = 3;

const AUTH_QUERY: u8 = 0;
const AUTH_USERPASS: u8 = 1;
const AUTH_DIGEST: u8 = 4;

/// amtterm reads the 0x11 reply as exactly this many bytes, so the OEM
/// length (last byte) stays 0.
const START_REDIRECTION_SESSION_REPLY_LEN: usize = 13;
const START_SOL_REPLY_LEN: usize = 23;
const AUTH_HEADER_LEN: usize = 9;
const SOL_DATA_HEADER_LEN: usize = 10;

const MAX_MESSAGE: usize = 64 * 1024;

/// Before SOL runs nothing keeps the connection busy, so a console must make
/// progress within this time.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_AUTH_FAILURES: u32 = 3;
/// amtterm's StartSOL announces MaxTxBuffer 1000; stay within it.
const MAX_SOL_CHUNK: usize = 1000;
const MAX_LINE: usize = 256;
/// Console output right after 0x21 would be lost if amtterm read it together
/// with the reply (§9), so the first output waits a moment.
const FIRST_OUTPUT_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedirectionError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("console idle during session setup")]
    SetupTimeout,
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("message {0:#04x} before authentication")]
    NotAuthenticated(u8),
    #[error("message {0:#04x} not valid in this state")]
    UnexpectedMessage(u8),
    #[error("message {0:#04x} not supported by the simulator")]
    Unsupported(u8),
    #[error("message declares {0} bytes, limit {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("too many failed authentication attempts")]
    AuthFailed,
    #[error("connection closed mid-message")]
    Truncated,
    #[error("KVM: {0}")]
    Rfb(#[from] RfbError),
}

impl RedirectionError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::SetupTimeout => "setup_timeout",
            Self::UnknownMessage(_) => "unknown_message",
            Self::NotAuthenticated(_) => "not_authenticated",
            Self::UnexpectedMessage(_) => "unexpected_message",
            Self::Unsupported(_) => "unsupported_message",
            Self::TooLarge(_) => "message_too_large",
            Self::Malformed(_) => "malformed_message",
            Self::AuthFailed => "auth_failed",
            Self::Truncated => "truncated_message",
            Self::Rfb(e) => e.kind(),
        }
    }
}

/// Why a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirectionClose {
    /// EndRedirectionSession (0x12).
    Ended,
    /// The console closed between messages.
    ClientClosed,
}

impl RedirectionClose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ended => "session_ended",
            Self::ClientClosed => "client_closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionType {
    Sol,
    Ider,
    Kvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initial,
    Started(SessionType),
    Authenticated(SessionType),
    Sol,
}

impl Phase {
    fn authenticated(self) -> bool {
        matches!(self, Phase::Authenticated(_) | Phase::Sol)
    }
}

/// Total length of the message at the start of `buf`, or `None` while its
/// header or declared payload has not fully arrived.
fn message_len(buf: &[u8], phase: Phase) -> Result<Option<usize>, RedirectionError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let fixed = |len: usize| Ok((buf.len() >= len).then_some(len));
    match kind {
        START_REDIRECTION_SESSION => fixed(8),
        END_REDIRECTION_SESSION => fixed(4),
        START_SOL => fixed(24),
        END_SOL | KEEP_ALIVE_PING | SOL_HEARTBEAT => fixed(8),
        SOL_SETTINGS_UNKNOWN => fixed(14),
        AUTHENTICATE_SESSION => {
            let Some(len) = buf.get(5..9) else {
                return Ok(None);
            };
            let data_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let total = AUTH_HEADER_LEN.saturating_add(data_len);
            if total > MAX_MESSAGE {
                return Err(RedirectionError::TooLarge(total));
            }
            fixed(total)
        }
        SOL_DATA_TO_HOST => {
            let Some(len) = buf.get(8..10) else {
                return Ok(None);
            };
            fixed(SOL_DATA_HEADER_LEN + usize::from(u16::from_le_bytes([len[0], len[1]])))
        }
        IDER_OR_KVM_START if phase == Phase::Authenticated(SessionType::Kvm) => {
            fixed(KVM_START_LEN)
        }
        // IDE-R sessions open and authenticate, but IDE-R itself is not
        // simulated.
        IDER_OR_KVM_START => Err(RedirectionError::Unsupported(kind)),
        other => Err(RedirectionError::UnknownMessage(other)),
    }
}

/// Splits `[len]bytes [len]bytes ...` as used by AuthenticateSession data.
fn length_prefixed(mut data: &[u8]) -> Result<Vec<String>, RedirectionError> {
    let mut fields = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len);
        let field = rest
            .get(..len)
            .ok_or(RedirectionError::Malformed("auth field overruns data"))?;
        fields.push(String::from_utf8_lossy(field).into_owned());
        data = &rest[len..];
    }
    Ok(fields)
}

fn push_length_prefixed(out: &mut Vec<u8>, value: &str) {
    // Realm, nonce and qop are short device-chosen ASCII; truncation cannot
    // happen, but never emit a length byte that lies.
    let bytes = &value.as_bytes()[..value.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn auth_reply(status: u8, auth_type: u8, data: &[u8]) -> Vec<u8> {
    let mut reply = vec![AUTHENTICATE_SESSION_REPLY, status, 0, 0, auth_type];
    reply.extend_from_slice(&(data.len() as u32).to_le_bytes());
    reply.extend_from_slice(data);
    reply
}

/// The simulated host's serial console: echoes what is typed and answers
/// each line, so a test (or a person) can see input arrive and output return.
/// It follows the host's power: a boot prints the firmware's line and a fresh
/// login prompt, a power-down says so, and while the host is not running
/// nothing answers.
struct Console {
    line: Vec<u8>,
    running: bool,
    boots: u64,
}

impl Console {
    fn new(host: &HostStatus) -> Self {
        Self {
            line: Vec::new(),
            running: host.power == PowerState::On,
            boots: host.boots,
        }
    }

    fn banner(name: &str) -> Vec<u8> {
        format!("\r\n{name} (simulated Intel AMT host) ttyS0\r\n\r\n{name} login: ").into_bytes()
    }

    /// What the console prints when the session starts: the prompt, if the host runs.
    fn greeting(&self, name: &str) -> Vec<u8> {
        if self.running {
            Self::banner(name)
        } else {
            Vec::new()
        }
    }

    /// What the console prints after the host's state changed.
    fn host_changed(&mut self, host: &HostStatus, name: &str) -> Vec<u8> {
        let was_running = self.running;
        self.running = host.power == PowerState::On;
        if host.boots != self.boots {
            self.boots = host.boots;
            self.line.clear();
            let mut out =
                format!("\r\n{name}: BIOS POST, booting from {}\r\n", host.last_boot).into_bytes();
            if host.last_boot == BootSource::Pxe {
                out.extend_from_slice(b"PXE: no boot file offered; falling back to local disk\r\n");
            }
            out.extend_from_slice(&Self::banner(name));
            return out;
        }
        if was_running && !self.running {
            self.line.clear();
            let what = match host.power {
                PowerState::Off => "reboot: Power down",
                _ => "PM: suspend entry",
            };
            return format!("\r\n{name}: {what}\r\n").into_bytes();
        }
        Vec::new()
    }

    fn feed(&mut self, data: &[u8], name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.running {
            // Nothing reads the serial port of a host that is off or asleep.
            return out;
        }
        for &b in data {
            match b {
                // amtterm turns Enter into CR; LF alone is ignored so CRLF
                // senders get one answer per line.
                b'\r' => {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    out.extend_from_slice(b"\r\n");
                    if !line.is_empty() {
                        out.extend_from_slice(
                            format!("{name}: received \"{line}\"\r\n").as_bytes(),
                        );
                    }
                    out.extend_from_slice(format!("{name} login: ").as_bytes());
                }
                0x08 | 0x7f if self.line.pop().is_some() => {
                    out.extend_from_slice(b"\x08 \x08");
                }
                0x20..=0x7e if self.line.len() < MAX_LINE => {
                    self.line.push(b);
                    out.push(b);
                }
                _ => {}
            }
        }
        out
    }
}

struct Session<'a, S> {
    stream: S,
    ctx: &'a DeviceState,
    buf: Vec<u8>,
    phase: Phase,
    /// Sequence number of device-originated SOL messages.
    seq: u32,
    auth_failures: u32,
    console: Console,
    heartbeat: Option<Interval>,
    /// The host's state, watched during SOL; `None` if its sender were gone.
    host: Option<tokio::sync::watch::Receiver<HostStatus>>,
    /// This session holds the device's one KVM session (released when it ends).
    holds_kvm: bool,
}

impl<S> Drop for Session<'_, S> {
    fn drop(&mut self) {
        if self.holds_kvm {
            self.ctx.kvm_busy.store(false, Ordering::Release);
        }
    }
}

enum Event {
    Read(usize),
    Heartbeat,
    HostChanged,
    /// The host's sender is gone (the device is being dropped): stop watching.
    HostGone,
}

/// Serves one console connection until EndRedirectionSession, EOF or a
/// protocol violation.
pub(crate) async fn serve_redirection<S>(
    stream: S,
    ctx: &DeviceState,
) -> Result<RedirectionClose, RedirectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        stream,
        ctx,
        buf: Vec::new(),
        phase: Phase::Initial,
        seq: 0,
        auth_failures: 0,
        console: Console::new(&ctx.host.borrow()),
        heartbeat: None,
        host: Some(ctx.host.subscribe()),
        holds_kvm: false,
    };
    session.run().await
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    async fn run(&mut self) -> Result<RedirectionClose, RedirectionError> {
        let mut chunk = [0u8; 4096];
        loop {
            // Whole messages already buffered are handled before reading, so
            // the buffer never holds more than one message plus one read.
            while let Some(&kind) = self.buf.first() {
                if !self.phase.authenticated()
                    && !matches!(
                        kind,
                        START_REDIRECTION_SESSION | END_REDIRECTION_SESSION | AUTHENTICATE_SESSION
                    )
                {
                    // Checked on the first byte so an unauthenticated peer
                    // cannot make us wait for a large payload.
                    message_len(&self.buf, self.phase)?;
                    return Err(RedirectionError::NotAuthenticated(kind));
                }
                let Some(len) = message_len(&self.buf, self.phase)? else {
                    break;
                };
                let message: Vec<u8> = self.buf.drain(..len).collect();
                if let Some(close) = self.handle(&message).await? {
                    // A clean end (TLS close_notify) so consoles see EOF, not an error.
                    self.stream.shutdown().await?;
                    return Ok(close);
                }
            }

            let host = &mut self.host;
            let event = match self.heartbeat.as_mut() {
                Some(heartbeat) => tokio::select! {
                    n = self.stream.read(&mut chunk) => Event::Read(n?),
                    _ = heartbeat.tick() => Event::Heartbeat,
                    changed = async {
                        match host.as_mut() {
                            Some(host) => host.changed().await.is_ok(),
                            None => std::future::pending().await,
                        }
                    } => if changed { Event::HostChanged } else { Event::HostGone },
                },
                None => Event::Read(
                    tokio::time::timeout(SETUP_TIMEOUT, self.stream.read(&mut chunk))
                        .await
                        .map_err(|_| RedirectionError::SetupTimeout)??,
                ),
            };
            match event {
                Event::HostGone => self.host = None,
                Event::HostChanged => {
                    let output = match self.host.as_mut() {
                        Some(host) => {
                            let status = host.borrow_and_update().clone();
                            self.console.host_changed(&status, &self.ctx.name)
                        }
                        None => Vec::new(),
                    };
                    if !output.is_empty() {
                        self.send_console_output(&output).await?;
                    }
                }
                Event::Heartbeat => {
                    let mut msg = vec![SOL_HEARTBEAT, 0, 0, 0];
                    msg.extend_from_slice(&self.next_seq().to_le_bytes());
                    self.send(&msg).await?;
                }
                Event::Read(0) if self.buf.is_empty() => {
                    crate::answer_close(&mut self.stream).await;
                    return Ok(RedirectionClose::ClientClosed);
                }
                Event::Read(0) => return Err(RedirectionError::Truncated),
                Event::Read(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), RedirectionError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn send_console_output(&mut self, data: &[u8]) -> Result<(), RedirectionError> {
        for piece in data.chunks(MAX_SOL_CHUNK) {
            let mut msg = vec![SOL_DATA_FROM_HOST, 0, 0, 0];
            msg.extend_from_slice(&self.next_seq().to_le_bytes());
            msg.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            msg.extend_from_slice(piece);
            self.send(&msg).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, msg: &[u8]) -> Result<Option<RedirectionClose>, RedirectionError> {
        let kind = msg[0];
        match (kind, self.phase) {
            (END_REDIRECTION_SESSION, _) => return Ok(Some(RedirectionClose::Ended)),
            (START_REDIRECTION_SESSION, Phase::Initial) => {
                let session_type = match &msg[4..8] {
                    b"SOL " => Some(SessionType::Sol),
                    b"IDER" => Some(SessionType::Ider),
                    b"KVMR" => Some(SessionType::Kvm),
                    _ => None,
                };
                let mut reply = [0u8; START_REDIRECTION_SESSION_REPLY_LEN];
                reply[0] = START_REDIRECTION_SESSION_REPLY;
                reply[1] = match session_type {
                    // What a console sees when KVM is disabled (RequestStateChange 3 on
                    // CIM_KVMRedirectionSAP): the session type is refused up front.
                    Some(SessionType::Kvm) if !self.ctx.host.borrow().kvm_enabled => {
                        STATUS_UNSUPPORTED
                    }
                    // One KVM session per device, as AMT has one screen to share.
                    Some(SessionType::Kvm) if self.ctx.kvm_busy.swap(true, Ordering::AcqRel) => {
                        STATUS_BUSY
                    }
                    Some(t) => {
                        self.holds_kvm = t == SessionType::Kvm;
                        self.phase = Phase::Started(t);
                        STATUS_SUCCESS
                    }
                    None => STATUS_TYPE_UNKNOWN,
                };
                self.send(&reply).await?;
            }
            (AUTHENTICATE_SESSION, Phase::Started(session_type)) => {
                self.authenticate(msg, session_type).await?;
            }
            (START_SOL, Phase::Authenticated(SessionType::Sol)) => {
                let mut reply = [0u8; START_SOL_REPLY_LEN];
                reply[0] = START_SOL_REPLY;
                reply[1] = STATUS_SUCCESS;
                self.send(&reply).await?;
                self.phase = Phase::Sol;
                tokio::time::sleep(FIRST_OUTPUT_DELAY).await;
                // Changes before now are in the greeting already.
                if let Some(host) = self.host.as_mut() {
                    let status = host.borrow_and_update().clone();
                    self.console.host_changed(&status, &self.ctx.name);
                }
                let greeting = self.console.greeting(&self.ctx.name);
                if !greeting.is_empty() {
                    self.send_console_output(&greeting).await?;
                }
                let period = self.ctx.heartbeat;
                let mut heartbeat =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.heartbeat = Some(heartbeat);
            }
            (IDER_OR_KVM_START, Phase::Authenticated(SessionType::Kvm)) => {
                self.send(&[KVM_START_REPLY, 0, 0, 0, 0, 0, 0, 0]).await?;
                // From here the socket carries raw RFB (§5 KVM).
                return self.serve_rfb().await.map(Some);
            }
            (END_SOL, Phase::Sol) => {
                let mut reply = [0u8; 8];
                reply[0] = END_SOL_REPLY;
                self.send(&reply).await?;
                self.heartbeat = None;
                self.phase = Phase::Authenticated(SessionType::Sol);
            }
            (KEEP_ALIVE_PING, Phase::Sol) => {
                let mut pong = msg.to_vec();
                pong[0] = KEEP_ALIVE_PONG;
                self.send(&pong).await?;
            }
            // amtterm echoes our heartbeats verbatim; answering them would
            // ping-pong forever. They may also trail an EndSOL.
            (SOL_HEARTBEAT, Phase::Sol | Phase::Authenticated(_)) => {}
            (SOL_SETTINGS_UNKNOWN, Phase::Sol) => {}
            // amtterm's ^] sends EndSOL and then the keys typed with it as SOL data; the
            // session is over, so they are dropped.
            (SOL_DATA_TO_HOST, Phase::Authenticated(SessionType::Sol)) => {}
            (SOL_DATA_TO_HOST, Phase::Sol) => {
                let output = self
                    .console
                    .feed(&msg[SOL_DATA_HEADER_LEN..], &self.ctx.name);
                if !output.is_empty() {
                    self.send_console_output(&output).await?;
                }
            }
            _ => return Err(RedirectionError::UnexpectedMessage(kind)),
        }
        Ok(None)
    }

    async fn authenticate(
        &mut self,
        msg: &[u8],
        session_type: SessionType,
    ) -> Result<(), RedirectionError> {
        let auth_type = msg[4];
        let data = &msg[AUTH_HEADER_LEN..];
        let ok = match auth_type {
            AUTH_QUERY => {
                let reply = auth_reply(STATUS_SUCCESS, AUTH_QUERY, &[AUTH_USERPASS, AUTH_DIGEST]);
                return self.send(&reply).await;
            }
            AUTH_USERPASS => {
                let [user, pass] = <[String; 2]>::try_from(length_prefixed(data)?)
                    .map_err(|_| RedirectionError::Malformed("userpass field count"))?;
                // Constant-time comparison is moot here: USERPASS sends the
                // password in clear anyway.
                user == self.ctx.username && pass == self.ctx.password
            }
            AUTH_DIGEST => {
                let [username, realm, nonce, uri, cnonce, nc, response, qop] =
                    <[String; 8]>::try_from(length_prefixed(data)?)
                        .map_err(|_| RedirectionError::Malformed("digest field count"))?;
                if response.is_empty() {
                    let reply = auth_reply(STATUS_FAILURE, AUTH_DIGEST, &self.challenge());
                    return self.send(&reply).await;
                }
                let fields = DigestFields {
                    username,
                    realm,
                    nonce,
                    uri,
                    cnonce,
                    nc,
                    qop,
                    response,
                };
                self.ctx
                    .verifier()
                    .verify(&fields, REDIRECTION_METHOD, REDIRECTION_URI)
            }
            other => {
                return self
                    .send(&auth_reply(STATUS_NOT_SUPPORTED, other, &[]))
                    .await;
            }
        };
        if ok {
            self.phase = Phase::Authenticated(session_type);
            return self.send(&auth_reply(STATUS_SUCCESS, auth_type, &[])).await;
        }
        self.auth_failures += 1;
        // A digest failure carries a fresh challenge so a console that got the
        // nonce wrong can retry; USERPASS failures carry nothing.
        let data = if auth_type == AUTH_DIGEST {
            self.challenge()
        } else {
            Vec::new()
        };
        self.send(&auth_reply(STATUS_FAILURE, auth_type, &data))
            .await?;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Err(RedirectionError::AuthFailed);
        }
        Ok(())
    }

    /// From here the socket carries raw RFB (§5 KVM): the host's screen, until the viewer
    /// closes.
    async fn serve_rfb(&mut self) -> Result<RedirectionClose, RedirectionError> {
        let read_ahead = std::mem::take(&mut self.buf);
        rfb::serve(&mut self.stream, read_ahead, self.ctx).await?;
        crate::answer_close(&mut self.stream).await;
        Ok(RedirectionClose::ClientClosed)
    }

    fn challenge(&self) -> Vec<u8> {
        let mut data = Vec::new();
        push_length_prefixed(&mut data, &self.ctx.realm);
        push_length_prefixed(&mut data, &self.ctx.nonces.issue());
        push_length_prefixed(&mut data, QOP_AUTH);
        data
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;
    use crate::digest::expected_response;
    use std::sync::Arc;
    use tokio::io::DuplexStream;

    const USER: &str = "admin";
    const PASS: &str = "P@ssw0rd";

    fn device(heartbeat: Duration) -> Arc<DeviceState> {
        Arc::new(DeviceState::new(
            "simhost".into(),
            USER.into(),
            PASS.into(),
            heartbeat,
        ))
    }

    fn spawn(
        ctx: Arc<DeviceState>,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<RedirectionClose, RedirectionError>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve_redirection(server, &ctx).await });
        (client, task)
    }

    async fn read_n(client: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// Reads one whole device message, whatever its type.
    async fn read_message(client: &mut DuplexStream) -> Vec<u8> {
        let mut msg = read_n(client, 4).await;
        let rest = match msg[0] {
            START_REDIRECTION_SESSION_REPLY => START_REDIRECTION_SESSION_REPLY_LEN - 4,
            START_SOL_REPLY => START_SOL_REPLY_LEN - 4,
            END_SOL_REPLY | SOL_HEARTBEAT | KEEP_ALIVE_PONG => 4,
            AUTHENTICATE_SESSION_REPLY => {
                msg.extend(read_n(client, 5).await);
                u32::from_le_bytes(msg[5..9].try_into().unwrap()) as usize
            }
            SOL_DATA_FROM_HOST => {
                msg.extend(read_n(client, 6).await);
                usize::from(u16::from_le_bytes([msg[8], msg[9]]))
            }
            other => panic!("unexpected device message {other:#04x}"),
        };
        msg.extend(read_n(client, rest).await);
        msg
    }

    /// Reads SOL output until `want` has appeared, skipping heartbeats.
    async fn read_console_until(client: &mut DuplexStream, want: &str) -> String {
        let mut text = String::new();
        while !text.contains(want) {
            let msg = read_message(client).await;
            if msg[0] == SOL_DATA_FROM_HOST {
                text.push_str(std::str::from_utf8(&msg[10..]).unwrap());
            }
        }
        text
    }

    fn amtterm_userpass(user: &str, pass: &str) -> Vec<u8> {
        let len = 2 + user.len() + pass.len();
        let mut msg = vec![
            AUTHENTICATE_SESSION,
            0,
            0,
            0,
            AUTH_USERPASS,
            len as u8,
            0,
            0,
            0,
        ];
        msg.push(user.len() as u8);
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        msg
    }

    /// amtterm 1.4's StartSOL: MaxTxBuffer 1000, TxTimeout 100,
    /// HostSessionRxTimeout 10000, Heartbeat 5000.
    fn amtterm_start_sol() -> Vec<u8> {
        let mut msg = vec![START_SOL, 0, 0, 0, 0, 0, 0, 0];
        for v in [1000u16, 100, 0, 10000, 0, 5000] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(msg.len(), 24);
        msg
    }

    fn sol_data(text: &[u8]) -> Vec<u8> {
        let mut msg = vec![SOL_DATA_TO_HOST, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&(text.len() as u16).to_le_bytes());
        msg.extend_from_slice(text);
        msg
    }

    async fn start_session(client: &mut DuplexStream, kind: &[u8; 4]) -> Vec<u8> {
        let mut msg = vec![START_REDIRECTION_SESSION, 0, 0, 0];
        msg.extend_from_slice(kind);
        client.write_all(&msg).await.unwrap();
        read_n(client, START_REDIRECTION_SESSION_REPLY_LEN).await
    }

    #[tokio::test]
    async fn amtterm_1_4_session() {
        let (mut client, task) = spawn(device(Duration::from_secs(60)));

        let reply = start_session(&mut client, b"SOL ").await;
        assert_eq!(reply[0], START_REDIRECTION_SESSION_REPLY);
        assert_eq!(reply[1], STATUS_SUCCESS);
        assert_eq!(reply[12], 0, "OEM length must be 0 for amtterm");

        let userpass = amtterm_userpass(USER, PASS);
        assert_eq!(userpass.len(), 11 + USER.len() + PASS.len());
        client.write_all(&userpass).await.unwrap();
        assert_eq!(
            read_message(&mut client).await,
            [
                AUTHENTICATE_SESSION_REPLY,
                STATUS_SUCCESS,
                0,
                0,
                AUTH_USERPASS,
                0,
                0,
                0,
                0
            ]
        );

        client.write_all(&amtterm_start_sol()).await.unwrap();
        // The reply alone, then the prompt in a later write: with a 64 KiB
        // duplex the reply is all that can be read before the delay.
        let mut first = [0u8; 64];
        let n = client.read(&mut first).await.unwrap();
        assert_eq!(n, START_SOL_REPLY_LEN);
        assert_eq!(&first[..2], &[START_SOL_REPLY, STATUS_SUCCESS]);
        let banner = read_console_until(&mut client, "simhost login: ").await;
        assert!(banner.starts_with("\r\nsimhost"));

        client.write_all(&sol_data(b"root\r")).await.unwrap();
        let echo = read_console_until(&mut client, "simhost login: ").await;
        assert!(echo.starts_with("root\r\n"), "{echo:?}");
        assert!(echo.contains("received \"root\""));

        // ^] in amtterm: EndSOL, wait for its reply, EndRedirectionSession.
        client
            .write_all(&[END_SOL, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(read_message(&mut client).await[0], END_SOL_REPLY);
        client
            .write_all(&[END_REDIRECTION_SESSION, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(task.await.unwrap().unwrap(), RedirectionClose::Ended);
    }

    #[tokio::test]
    async fn heartbeats_are_sent_and_echoes_ignored() {
        let (mut client, _task) = spawn(device(Duration::from_millis(20)));
        start_session(&mut client, b"SOL ").await;
        client
            .write_all(&amtterm_userpass(USER, PASS))
            .await
            .unwrap();
        read_message(&mut client).await;
        client.write_all(&amtterm_start_sol()).await.unwrap();
        read_message(&mut client).await;

        // Echo each heartbeat back like amtterm. Were the device to answer an
        // echo, a sequence number would repeat.
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let msg = read_message(&mut client).await;
            if msg[0] == SOL_HEARTBEAT {
                assert_eq!(msg.len(), 8);
                seqs.push(u32::from_le_bytes(msg[4..8].try_into().unwrap()));
                client.write_all(&msg).await.unwrap();
            }
        }
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
        // A ping is answered with a pong carrying the same sequence number.
        client
            .write_all(&[KEEP_ALIVE_PING, 0, 0, 0, 7, 0, 0, 0])
            .await
            .unwrap();
        loop {
            let msg = read_message(&mut client).await;
            if msg[0] == KEEP_ALIVE_PONG {
                assert_eq!(msg, [KEEP_ALIVE_PONG, 0, 0, 0, 7, 0, 0, 0]);
                break;
            }
        }
    }

    #[tokio::test]
    async fn digest_authentication() {
        let ctx = device(Duration::from_secs(60));
        let (mut client, _task) = spawn(ctx.clone());
        start_session(&mut client, b"SOL ").await;

        client
            .write_all(&[AUTHENTICATE_SESSION, 0, 0, 0, AUTH_QUERY, 0, 0, 0, 0])
            .await
            .unwrap();
        let reply = read_message(&mut client).await;
        assert_eq!(reply[1], STATUS_SUCCESS);
        assert!(reply[9..].contains(&AUTH_USERPASS) && reply[9..].contains(&AUTH_DIGEST));

        let digest_msg = |fields: &[&str]| {
            let mut data = Vec::new();
            for f in fields {
                push_length_prefixed(&mut data, f);
            }
            let mut msg = vec![AUTHENTICATE_SESSION, 0, 0, 0, AUTH_DIGEST];
            msg.extend_from_slice(&(data.len() as u32).to_le_bytes());
            msg.extend_from_slice(&data);
            msg
        };
        // Empty digest: user and URI only, as MeshCommander and amtterm 1.7 send.
        let empty = digest_msg(&[USER, "", "", REDIRECTION_URI, "", "", "", ""]);
        assert_eq!(empty.len(), 9 + USER.len() + REDIRECTION_URI.len() + 8);
        client.write_all(&empty).await.unwrap();
        let reply = read_message(&mut client).await;
        assert_eq!(
            &reply[..5],
            &[
                AUTHENTICATE_SESSION_REPLY,
                STATUS_FAILURE,
                0,
                0,
                AUTH_DIGEST
            ]
        );
        let challenge = length_prefixed(&reply[9..]).unwrap();
        assert_eq!(challenge[0], ctx.realm);
        assert_eq!(challenge[2], "auth");

        let mut fields = DigestFields {
            username: USER.into(),
            realm: challenge[0].clone(),
            nonce: challenge[1].clone(),
            uri: REDIRECTION_URI.into(),
            cnonce: "0123456789abcdef0123456789abcdef".into(),
            nc: "00000002".into(),
            qop: "auth".into(),
            response: String::new(),
        };
        fields.response = expected_response(&fields, "wrong", "POST");
        let f = &fields;
        let attempt = |f: &DigestFields| {
            digest_msg(&[
                &f.username,
                &f.realm,
                &f.nonce,
                &f.uri,
                &f.cnonce,
                &f.nc,
                &f.response,
                &f.qop,
            ])
        };
        client.write_all(&attempt(f)).await.unwrap();
        assert_eq!(read_message(&mut client).await[1], STATUS_FAILURE);

        fields.response = expected_response(&fields, PASS, "POST");
        client.write_all(&attempt(&fields)).await.unwrap();
        assert_eq!(
            read_message(&mut client).await,
            [
                AUTHENTICATE_SESSION_REPLY,
                STATUS_SUCCESS,
                0,
                0,
                AUTH_DIGEST,
                0,
                0,
                0,
                0
            ]
        );
    }

    #[tokio::test]
    async fn wrong_userpass_fails_and_repeated_failures_close() {
        let (mut client, task) = spawn(device(Duration::from_secs(60)));
        start_session(&mut client, b"SOL ").await;
        for _ in 0..MAX_AUTH_FAILURES {
            client
                .write_all(&amtterm_userpass(USER, "nope"))
                .await
                .unwrap();
            assert_eq!(
                read_message(&mut client).await,
                [
                    AUTHENTICATE_SESSION_REPLY,
                    STATUS_FAILURE,
                    0,
                    0,
                    AUTH_USERPASS,
                    0,
                    0,
                    0,
                    0
                ]
            );
        }
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::AuthFailed)
        ));
    }

    #[tokio::test]
    async fn unknown_session_type_gets_13_byte_failure() {
        let (mut client, _task) = spawn(device(Duration::from_secs(60)));
        let reply = start_session(&mut client, b"XXXX").await;
        assert_eq!(
            reply[..2],
            [START_REDIRECTION_SESSION_REPLY, STATUS_TYPE_UNKNOWN]
        );
    }

    #[tokio::test]
    async fn protocol_violations_close_the_connection() {
        let ctx = device(Duration::from_secs(60));
        // Garbage first byte.
        let (mut client, task) = spawn(ctx.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::UnknownMessage(b'G'))
        ));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        // SOL data before authentication, even with a huge declared length.
        let (mut client, task) = spawn(ctx.clone());
        start_session(&mut client, b"SOL ").await;
        client
            .write_all(&[SOL_DATA_TO_HOST, 0, 0, 0])
            .await
            .unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::NotAuthenticated(SOL_DATA_TO_HOST))
        ));

        // An oversized AuthenticateSession.
        let (mut client, task) = spawn(ctx.clone());
        start_session(&mut client, b"SOL ").await;
        client
            .write_all(&[AUTHENTICATE_SESSION, 0, 0, 0, AUTH_USERPASS, 0, 0, 1, 0])
            .await
            .unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::TooLarge(_))
        ));

        // A truncated message waits for more; EOF then is an error.
        let (mut client, task) = spawn(ctx);
        client
            .write_all(&[START_REDIRECTION_SESSION, 0, 0])
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::Truncated)
        ));
    }

    #[tokio::test]
    async fn kvm_start_leads_to_rfb_handshake() {
        let (mut client, task) = spawn(device(Duration::from_secs(60)));
        let mut start = vec![START_REDIRECTION_SESSION, 1, 0, 0];
        start.extend_from_slice(b"KVMR");
        client.write_all(&start).await.unwrap();
        assert_eq!(read_n(&mut client, 13).await[1], STATUS_SUCCESS);
        client
            .write_all(&amtterm_userpass(USER, PASS))
            .await
            .unwrap();
        assert_eq!(read_message(&mut client).await[1], STATUS_SUCCESS);

        client
            .write_all(&[0x40, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(read_n(&mut client, 8).await, [0x41, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_n(&mut client, 12).await, b"RFB 003.008\n");
        client.write_all(b"RFB 003.008\n").await.unwrap();
        assert_eq!(read_n(&mut client, 2).await, [1, 1]);
        client.write_all(&[1]).await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, [0, 0, 0, 0]);
        client.write_all(&[1]).await.unwrap();
        let init = read_n(&mut client, 24).await;
        assert_eq!(u16::from_be_bytes([init[0], init[1]]), 640);
        assert_eq!(u16::from_be_bytes([init[2], init[3]]), 400);
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        assert_eq!(read_n(&mut client, name_len).await, b"simhost");

        // SetEncodings (RAW) is accepted; a full update request gets the whole screen in RAW,
        // and the next one shows a different frame.
        client.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).await.unwrap();
        let mut frames = Vec::new();
        for _ in 0..2 {
            client
                .write_all(&[3, 0, 0, 0, 0, 0, 2, 128, 1, 144])
                .await
                .unwrap();
            let header = read_n(&mut client, 16).await;
            assert_eq!(&header[..4], [0, 0, 0, 1], "one rectangle");
            assert_eq!(&header[8..12], [2, 128, 1, 144], "640x400");
            assert_eq!(&header[12..16], [0, 0, 0, 0], "RAW");
            frames.push(read_n(&mut client, 640 * 400 * 4).await);
        }
        assert_ne!(frames[0], frames[1], "the pattern moves");
        drop(client);
        assert_eq!(task.await.unwrap().unwrap(), RedirectionClose::ClientClosed);
    }

    #[tokio::test]
    async fn kvm_is_refused_while_disabled() {
        let ctx = device(Duration::from_secs(60));
        ctx.host.send_modify(|host| host.kvm_enabled = false);
        let (mut client, _task) = spawn(ctx.clone());
        assert_eq!(
            start_session(&mut client, b"KVMR").await[1],
            STATUS_UNSUPPORTED
        );
        // SOL is another matter.
        let (mut client, _task) = spawn(ctx);
        assert_eq!(start_session(&mut client, b"SOL ").await[1], STATUS_SUCCESS);
    }

    #[tokio::test]
    async fn one_kvm_session_at_a_time() {
        let ctx = device(Duration::from_secs(60));
        let (mut first, first_task) = spawn(ctx.clone());
        assert_eq!(start_session(&mut first, b"KVMR").await[1], STATUS_SUCCESS);
        let (mut second, _task) = spawn(ctx.clone());
        assert_eq!(start_session(&mut second, b"KVMR").await[1], STATUS_BUSY);
        drop(first);
        first_task.await.unwrap().unwrap();
        let (mut third, _task) = spawn(ctx);
        assert_eq!(start_session(&mut third, b"KVMR").await[1], STATUS_SUCCESS);
    }

    #[tokio::test]
    async fn ider_start_is_refused() {
        let (mut client, task) = spawn(device(Duration::from_secs(60)));
        start_session(&mut client, b"IDER").await;
        client
            .write_all(&amtterm_userpass(USER, PASS))
            .await
            .unwrap();
        read_message(&mut client).await;
        client.write_all(&[0x40, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(RedirectionError::Unsupported(0x40))
        ));
    }

    #[test]
    fn console_echo_and_backspace() {
        let mut console = Console::new(&HostStatus::default());
        assert_eq!(console.feed(b"ab\x7f", "h"), b"ab\x08 \x08");
        assert_eq!(console.feed(b"\x7f\x7f", "h"), b"\x08 \x08");
        assert_eq!(console.feed(b"\r", "h"), b"\r\nh login: ");
    }

    #[test]
    fn console_follows_the_host_power() {
        let mut host = HostStatus::default();
        let mut console = Console::new(&host);
        host.request_power(8).unwrap();
        assert_eq!(
            console.host_changed(&host, "h"),
            b"\r\nh: reboot: Power down\r\n"
        );
        // Off: no echo, no prompt for a new session.
        assert!(console.feed(b"x\r", "h").is_empty());
        assert!(console.greeting("h").is_empty());
        host.request_power(2).unwrap();
        let booted = String::from_utf8(console.host_changed(&host, "h")).unwrap();
        assert!(
            booted.starts_with("\r\nh: BIOS POST, booting from the default boot order\r\n")
                && booted.ends_with("h login: "),
            "{booted}"
        );
        assert!(console.host_changed(&host, "h").is_empty(), "reported once");
    }
}
