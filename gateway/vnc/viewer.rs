//! The viewer's side of the VNC bridge (downstream): the gateway is the RFB server a standard
//! VNC viewer talks to. It authenticates the viewer itself (VNC Authentication with the
//! configured password, or None where config allows it) before any device is contacted, and
//! later hands the viewer the device's ServerInit as its own.
//!
//! RFB 3.3, 3.7 and 3.8 viewers are served (RFC 6143 and its appendix on the older versions):
//! old viewers such as vncsnapshot still speak 3.3.

use std::io;
use std::time::Duration;

use des::Des;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt as _, KeyInit as _};
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::reason::Reason;

const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";
const SECURITY_NONE: u8 = 1;
const SECURITY_VNC_AUTH: u8 = 2;
const CHALLENGE_LEN: usize = 16;
/// VNC Authentication keys DES with the first 8 bytes of the password: more are ignored.
pub(crate) const PASSWORD_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewerError {
    #[error("the viewer gave the wrong VNC password")]
    AuthFailed,
    #[error("the viewer does not speak RFB: its version was {0:?}")]
    NotRfb(String),
    #[error("the viewer chose security type {chosen}, the gateway offers only {offered}")]
    SecurityType { chosen: u8, offered: u8 },
    #[error("the viewer did not finish the RFB handshake within {0:?}")]
    Timeout(Duration),
    #[error("the viewer closed the connection during the RFB handshake")]
    Closed,
    #[error("viewer connection: {0}")]
    Io(io::Error),
    #[error("no random numbers for the VNC challenge")]
    Random,
}

impl ViewerError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ViewerError::AuthFailed => "auth_failed",
            ViewerError::NotRfb(_) => "not_rfb",
            ViewerError::SecurityType { .. } => "security_type",
            ViewerError::Timeout(_) => "timeout",
            ViewerError::Closed => "closed",
            ViewerError::Io(_) => "io",
            ViewerError::Random => "random",
        }
    }

    pub(crate) fn reason(&self) -> Reason {
        match self {
            ViewerError::AuthFailed => Reason::VncAuthFailed,
            ViewerError::NotRfb(_) | ViewerError::SecurityType { .. } => Reason::BadRequest,
            ViewerError::Timeout(_) => Reason::ConsoleTimeout,
            ViewerError::Closed => Reason::ConsoleClosed,
            ViewerError::Io(_) => Reason::ConsoleReset,
            // Not the viewer's fault, but nothing reached a device either.
            ViewerError::Random => Reason::BadRequest,
        }
    }
}

impl From<io::Error> for ViewerError {
    fn from(error: io::Error) -> ViewerError {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            ViewerError::Closed
        } else {
            ViewerError::Io(error)
        }
    }
}

/// The RFB minor version the viewer and the gateway agreed on (3.3, 3.7 or 3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Minor(u8);

/// A viewer through the security handshake and ClientInit, waiting for ServerInit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Viewer {
    pub(crate) minor: Minor,
    /// ClientInit's shared flag, passed on to the device.
    pub(crate) shared: bool,
}

/// The response a viewer must give to `challenge` for `password`: RFB's DES, keyed with the
/// password's first 8 bytes (zero-padded), each byte's bits reversed.
pub(crate) fn vnc_auth_response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; 16] {
    let mut key = [0u8; PASSWORD_BYTES];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(GenericArray::from_slice(&key));
    let mut response = *challenge;
    for block in response.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    response
}

/// A password file as `vncpasswd` writes it and viewers' `-passwd` options read it: the
/// password's first 8 bytes, zero-padded, DES-encrypted under VNC's fixed key (RFB's DES, key
/// bytes bit-reversed). Obfuscation, not protection: the demo writes one for its printed
/// command.
pub fn vncpasswd_file_contents(password: &str) -> [u8; 8] {
    const FIXED_KEY: [u8; 8] = [23, 82, 107, 6, 35, 78, 88, 7];
    let mut block = [0u8; 8];
    for (b, p) in block.iter_mut().zip(password.as_bytes()) {
        *b = *p;
    }
    let mut doubled = [0u8; CHALLENGE_LEN];
    doubled[..8].copy_from_slice(&block);
    let encrypted = vnc_auth_response(&FIXED_KEY, &doubled);
    let mut out = [0u8; 8];
    out.copy_from_slice(&encrypted[..8]);
    out
}

/// Serves the viewer's handshake up to its ClientInit: version, security (VNC Authentication
/// with `password`, or None when there is none), the security result. The password itself is
/// never sent or logged; a wrong answer gets RFB's failure and [`ViewerError::AuthFailed`].
pub(crate) async fn handshake<S>(
    viewer: &mut S,
    password: Option<&str>,
    limit: Duration,
) -> Result<Viewer, ViewerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, handshake_steps(viewer, password))
        .await
        .map_err(|_| ViewerError::Timeout(limit))?
}

async fn handshake_steps<S>(viewer: &mut S, password: Option<&str>) -> Result<Viewer, ViewerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    viewer.write_all(SERVER_VERSION).await?;
    viewer.flush().await?;
    let mut version = [0u8; 12];
    viewer.read_exact(&mut version).await?;
    let minor = parse_version(&version)?;
    let offered = if password.is_some() {
        SECURITY_VNC_AUTH
    } else {
        SECURITY_NONE
    };
    if minor >= Minor(7) {
        viewer.write_all(&[1, offered]).await?;
        viewer.flush().await?;
        let mut chosen = [0u8; 1];
        viewer.read_exact(&mut chosen).await?;
        if chosen[0] != offered {
            fail(viewer, minor, "security type not offered").await;
            return Err(ViewerError::SecurityType {
                chosen: chosen[0],
                offered,
            });
        }
    } else {
        // 3.3: the server decides.
        viewer.write_all(&u32::from(offered).to_be_bytes()).await?;
    }
    if let Some(password) = password {
        let mut challenge = [0u8; CHALLENGE_LEN];
        aws_lc_rs::rand::fill(&mut challenge).map_err(|_| ViewerError::Random)?;
        viewer.write_all(&challenge).await?;
        viewer.flush().await?;
        let mut response = [0u8; CHALLENGE_LEN];
        viewer.read_exact(&mut response).await?;
        let expected = vnc_auth_response(password.as_bytes(), &challenge);
        if !bool::from(expected.ct_eq(&response)) {
            fail(viewer, minor, "authentication failed").await;
            return Err(ViewerError::AuthFailed);
        }
        viewer.write_all(&0u32.to_be_bytes()).await?;
    } else if minor >= Minor(8) {
        // 3.8 sends a SecurityResult for None too; 3.3 and 3.7 do not.
        viewer.write_all(&0u32.to_be_bytes()).await?;
    }
    viewer.flush().await?;
    let mut client_init = [0u8; 1];
    viewer.read_exact(&mut client_init).await?;
    Ok(Viewer {
        minor,
        shared: client_init[0] != 0,
    })
}

/// "RFB 003.00N\n" to its minor version; versions between the three RFB defines are served as
/// the one below them (RFC 6143 §7.1.1), anything newer as 3.8.
fn parse_version(version: &[u8; 12]) -> Result<Minor, ViewerError> {
    let not_rfb = || ViewerError::NotRfb(String::from_utf8_lossy(version).into_owned());
    let text = std::str::from_utf8(version).map_err(|_| not_rfb())?;
    let numbers = text
        .strip_prefix("RFB ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .ok_or_else(not_rfb)?;
    let (major, minor) = numbers.split_once('.').ok_or_else(not_rfb)?;
    let (major, minor): (u16, u16) = (
        major.parse().map_err(|_| not_rfb())?,
        minor.parse().map_err(|_| not_rfb())?,
    );
    Ok(match (major, minor) {
        (3, 0..=6) => Minor(3),
        (3, 7) => Minor(7),
        (3, _) | (4.., _) => Minor(8),
        _ => return Err(not_rfb()),
    })
}

/// Tells the viewer its handshake failed, as its version expects (3.8 with a reason); best
/// effort, since the connection closes next anyway.
async fn fail<S>(viewer: &mut S, minor: Minor, why: &str)
where
    S: AsyncWrite + Unpin,
{
    let mut message = 1u32.to_be_bytes().to_vec();
    if minor >= Minor(8) {
        message.extend_from_slice(&(why.len() as u32).to_be_bytes());
        message.extend_from_slice(why.as_bytes());
    }
    let _ = viewer.write_all(&message).await;
    let _ = viewer.flush().await;
}

/// Sends the viewer its ServerInit: the device's, as the device sent it.
pub(crate) async fn server_init<S>(viewer: &mut S, init: &[u8]) -> Result<(), ViewerError>
where
    S: AsyncWrite + Unpin,
{
    viewer.write_all(init).await?;
    viewer.flush().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;

    /// Checked against the definition: each 8-byte half of the challenge encrypted with plain
    /// DES under the password's bit-reversed bytes. (The real-viewer check is tests/vnc_bridge.rs,
    /// where vncsnapshot answers the challenge.)
    #[test]
    fn the_response_is_des_of_the_challenge_under_the_bit_reversed_password() {
        let challenge = [7u8; 16];
        let response = vnc_auth_response(b"secret", &challenge);
        let key = [
            b's'.reverse_bits(),
            b'e'.reverse_bits(),
            b'c'.reverse_bits(),
            b'r'.reverse_bits(),
            b'e'.reverse_bits(),
            b't'.reverse_bits(),
            0,
            0,
        ];
        let mut block = GenericArray::clone_from_slice(&challenge[..8]);
        Des::new(GenericArray::from_slice(&key)).encrypt_block(&mut block);
        assert_eq!(&response[..8], block.as_slice());
        assert_eq!(
            response[..8],
            response[8..],
            "ECB: equal blocks, equal output"
        );
        // Only 8 bytes count.
        assert_eq!(
            vnc_auth_response(b"12345678", &challenge),
            vnc_auth_response(b"123456789", &challenge)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(b"RFB 003.008\n").unwrap(), Minor(8));
        assert_eq!(parse_version(b"RFB 003.007\n").unwrap(), Minor(7));
        assert_eq!(parse_version(b"RFB 003.003\n").unwrap(), Minor(3));
        assert_eq!(parse_version(b"RFB 003.005\n").unwrap(), Minor(3));
        assert_eq!(parse_version(b"RFB 004.001\n").unwrap(), Minor(8));
        assert!(matches!(
            parse_version(b"GET / HTTP/1"),
            Err(ViewerError::NotRfb(_))
        ));
    }

    async fn viewer_side(
        minor: &[u8; 12],
        password: &str,
        stream: &mut tokio::io::DuplexStream,
    ) -> u32 {
        let mut version = [0u8; 12];
        stream.read_exact(&mut version).await.unwrap();
        assert_eq!(&version, SERVER_VERSION);
        stream.write_all(minor).await.unwrap();
        if minor == b"RFB 003.003\n" {
            let mut kind = [0u8; 4];
            stream.read_exact(&mut kind).await.unwrap();
            assert_eq!(u32::from_be_bytes(kind), 2);
        } else {
            let mut types = [0u8; 2];
            stream.read_exact(&mut types).await.unwrap();
            assert_eq!(types, [1, SECURITY_VNC_AUTH]);
            stream.write_all(&[SECURITY_VNC_AUTH]).await.unwrap();
        }
        let mut challenge = [0u8; 16];
        stream.read_exact(&mut challenge).await.unwrap();
        stream
            .write_all(&vnc_auth_response(password.as_bytes(), &challenge))
            .await
            .unwrap();
        let mut result = [0u8; 4];
        stream.read_exact(&mut result).await.unwrap();
        let result = u32::from_be_bytes(result);
        if result == 0 {
            stream.write_all(&[1]).await.unwrap();
        }
        result
    }

    #[tokio::test]
    async fn vnc_authentication_for_3_3_and_3_8_viewers() {
        for version in [b"RFB 003.003\n", b"RFB 003.008\n"] {
            let (mut viewer, mut gateway) = tokio::io::duplex(1024);
            let (served, result) = tokio::join!(
                handshake(&mut gateway, Some("s3cret"), Duration::from_secs(5)),
                viewer_side(version, "s3cret", &mut viewer)
            );
            assert_eq!(result, 0);
            assert!(served.unwrap().shared);
        }
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused_with_a_reason() {
        let (mut viewer, mut gateway) = tokio::io::duplex(1024);
        let (served, result) = tokio::join!(
            handshake(&mut gateway, Some("s3cret"), Duration::from_secs(5)),
            viewer_side(b"RFB 003.008\n", "guess", &mut viewer)
        );
        assert_eq!(result, 1);
        let error = served.unwrap_err();
        assert_eq!(error.reason(), Reason::VncAuthFailed);
        drop(gateway);
        let mut reason = Vec::new();
        viewer.read_to_end(&mut reason).await.unwrap();
        assert_eq!(&reason[4..], b"authentication failed");
    }
}
