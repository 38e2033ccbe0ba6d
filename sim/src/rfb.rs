//! The simulated host's screen: an RFB 3.8 server, spoken inside a KVM redirection session once
//! the device has answered KVM start with 0x41 (amt-protocol.md §5, KVM). Security type None,
//! as AMT offers there (the redirection layer has already authenticated the console); RAW
//! encoding in whatever true-colour pixel format the viewer asks for.
//!
//! The picture is a test pattern that moves on with every update the device sends (a device-wide
//! counter, so two sessions one after the other never show the same frame): a screenshot proves
//! a live session, not a cached image.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::DeviceState;

pub(crate) const WIDTH: u16 = 640;
pub(crate) const HEIGHT: u16 = 400;
const VERSION: &[u8; 12] = b"RFB 003.008\n";
const SECURITY_NONE: u8 = 1;
/// A viewer must get through the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Incremental update requests are answered at most this often: a viewer asks again as soon as
/// it has drawn a frame, and each frame here is a full 1 MB screen.
const FRAME_PERIOD: Duration = Duration::from_millis(250);
const MAX_CUT_TEXT: usize = 1024 * 1024;
/// Width of the bar that moves across the screen by this much per frame.
const BAR_WIDTH: u16 = 16;

const SET_PIXEL_FORMAT: u8 = 0;
const SET_ENCODINGS: u8 = 2;
const FRAMEBUFFER_UPDATE_REQUEST: u8 = 3;
const KEY_EVENT: u8 = 4;
const POINTER_EVENT: u8 = 5;
const CLIENT_CUT_TEXT: u8 = 6;
const FRAMEBUFFER_UPDATE: u8 = 0;
const ENCODING_RAW: i32 = 0;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RfbError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("viewer idle during the RFB handshake")]
    HandshakeTimeout,
    #[error("connection closed mid-message")]
    Truncated,
    #[error("not an RFB 3.x version: {0:?}")]
    Version(String),
    #[error("security type {0} chosen, only None (1) is offered")]
    SecurityType(u8),
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    #[error("pixel format not supported: {0}")]
    PixelFormat(&'static str),
    #[error("cut text of {0} bytes, limit {MAX_CUT_TEXT}")]
    CutTextTooLarge(usize),
}

impl RfbError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Truncated => "truncated_message",
            Self::Version(_) => "rfb_version",
            Self::SecurityType(_) => "rfb_security_type",
            Self::UnknownMessage(_) => "unknown_message",
            Self::PixelFormat(_) => "pixel_format",
            Self::CutTextTooLarge(_) => "message_too_large",
        }
    }
}

/// How the viewer wants pixels (RFB's PIXEL_FORMAT); only true colour is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelFormat {
    bits_per_pixel: u8,
    depth: u8,
    big_endian: bool,
    red_max: u16,
    green_max: u16,
    blue_max: u16,
    red_shift: u8,
    green_shift: u8,
    blue_shift: u8,
}

impl PixelFormat {
    /// What ServerInit announces: 32 bpp, depth 24, little-endian, 8 bits per channel.
    const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    fn to_bytes(self) -> [u8; 16] {
        let [rm0, rm1] = self.red_max.to_be_bytes();
        let [gm0, gm1] = self.green_max.to_be_bytes();
        let [bm0, bm1] = self.blue_max.to_be_bytes();
        [
            self.bits_per_pixel,
            self.depth,
            u8::from(self.big_endian),
            1, // true colour
            rm0,
            rm1,
            gm0,
            gm1,
            bm0,
            bm1,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
            0,
            0,
            0,
        ]
    }

    fn parse(b: &[u8]) -> Result<PixelFormat, RfbError> {
        let b: &[u8; 16] = b
            .try_into()
            .map_err(|_| RfbError::PixelFormat("not 16 bytes"))?;
        if b[3] == 0 {
            return Err(RfbError::PixelFormat("colour map"));
        }
        if !matches!(b[0], 8 | 16 | 32) {
            return Err(RfbError::PixelFormat("bits per pixel not 8, 16 or 32"));
        }
        let format = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if [format.red_shift, format.green_shift, format.blue_shift]
            .iter()
            .any(|&shift| shift >= format.bits_per_pixel)
        {
            return Err(RfbError::PixelFormat("shift beyond the pixel"));
        }
        Ok(format)
    }

    fn push(self, (r, g, b): (u8, u8, u8), out: &mut Vec<u8>) {
        let scale = |value: u8, max: u16| u32::from(value) * u32::from(max) / 255;
        let pixel = (scale(r, self.red_max) << self.red_shift)
            | (scale(g, self.green_max) << self.green_shift)
            | (scale(b, self.blue_max) << self.blue_shift);
        let bytes = usize::from(self.bits_per_pixel / 8);
        if self.big_endian {
            out.extend_from_slice(&pixel.to_be_bytes()[4 - bytes..]);
        } else {
            out.extend_from_slice(&pixel.to_le_bytes()[..bytes]);
        }
    }
}

/// The test pattern's colour at (x, y) in frame `frame`: colour bars, a grey ramp below them, a
/// white bar that moves right by its width per frame, and the frame number in binary (white
/// squares for ones) along the bottom.
fn pattern(x: u16, y: u16, frame: u64) -> (u8, u8, u8) {
    const BARS: [(u8, u8, u8); 8] = [
        (192, 192, 192),
        (192, 192, 0),
        (0, 192, 192),
        (0, 192, 0),
        (192, 0, 192),
        (192, 0, 0),
        (0, 0, 192),
        (16, 16, 16),
    ];
    let bar_x = (frame % u64::from(WIDTH / BAR_WIDTH)) as u16 * BAR_WIDTH;
    if (bar_x..bar_x + BAR_WIDTH).contains(&x) {
        return (255, 255, 255);
    }
    let digits_top = HEIGHT - 40;
    if (digits_top..digits_top + 24).contains(&y) {
        let (digit, within) = (x / 32, x % 32);
        let one = (frame >> (19 - u64::from(digit.min(19)))) & 1 == 1;
        return if (4..28).contains(&within) && (digits_top + 4..digits_top + 20).contains(&y) {
            if one { (255, 255, 255) } else { (64, 64, 64) }
        } else {
            (0, 0, 0)
        };
    }
    if y < HEIGHT * 2 / 3 {
        return BARS[usize::from(x / (WIDTH / 8)).min(7)];
    }
    let grey = (u32::from(x) * 255 / u32::from(WIDTH - 1)) as u8;
    (grey, grey, grey)
}

/// The viewer's side of the stream, with what was read ahead of the RFB part (the redirection
/// layer's buffer) served first.
struct Viewer<'s, S> {
    stream: &'s mut S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Viewer<'_, S> {
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, RfbError> {
        let mut chunk = [0u8; 256];
        while self.buf.len() < n {
            let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| RfbError::HandshakeTimeout)??;
            if read == 0 {
                return Err(RfbError::Truncated);
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), RfbError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

/// Length of the client message at the start of `buf`, `None` while it is incomplete.
fn message_len(buf: &[u8]) -> Result<Option<usize>, RfbError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let fixed = |len: usize| Ok((buf.len() >= len).then_some(len));
    match kind {
        SET_PIXEL_FORMAT => fixed(20),
        SET_ENCODINGS => match buf.get(2..4) {
            Some(count) => fixed(4 + 4 * usize::from(u16::from_be_bytes([count[0], count[1]]))),
            None => Ok(None),
        },
        FRAMEBUFFER_UPDATE_REQUEST => fixed(10),
        KEY_EVENT => fixed(8),
        POINTER_EVENT => fixed(6),
        CLIENT_CUT_TEXT => match buf.get(4..8) {
            Some(len) => {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len > MAX_CUT_TEXT {
                    return Err(RfbError::CutTextTooLarge(len));
                }
                fixed(8 + len)
            }
            None => Ok(None),
        },
        other => Err(RfbError::UnknownMessage(other)),
    }
}

/// One full-screen RAW FramebufferUpdate of the next frame.
fn framebuffer_update(format: PixelFormat, frame: u64) -> Vec<u8> {
    let bytes_per_pixel = usize::from(format.bits_per_pixel / 8);
    let mut out =
        Vec::with_capacity(16 + usize::from(WIDTH) * usize::from(HEIGHT) * bytes_per_pixel);
    out.extend_from_slice(&[FRAMEBUFFER_UPDATE, 0]);
    out.extend_from_slice(&1u16.to_be_bytes());
    for value in [0, 0, WIDTH, HEIGHT] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out.extend_from_slice(&ENCODING_RAW.to_be_bytes());
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            format.push(pattern(x, y, frame), &mut out);
        }
    }
    out
}

/// Serves the host's screen until the viewer closes. `read_ahead` is what the redirection layer
/// had already read past the KVM start.
pub(crate) async fn serve<S>(
    stream: &mut S,
    read_ahead: Vec<u8>,
    ctx: &DeviceState,
) -> Result<(), RfbError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut viewer = Viewer {
        stream,
        buf: read_ahead,
    };
    viewer.send(VERSION).await?;
    let version = viewer.take(VERSION.len()).await?;
    if !version.starts_with(b"RFB 003.") {
        return Err(RfbError::Version(
            String::from_utf8_lossy(&version).into_owned(),
        ));
    }
    viewer.send(&[1, SECURITY_NONE]).await?;
    let chosen = viewer.take(1).await?[0];
    if chosen != SECURITY_NONE {
        return Err(RfbError::SecurityType(chosen));
    }
    // SecurityResult OK (3.8 sends it for None too).
    viewer.send(&0u32.to_be_bytes()).await?;
    viewer.take(1).await?; // ClientInit: the shared flag; every session shares here.

    let name = ctx.name.as_bytes();
    let mut init = Vec::with_capacity(24 + name.len());
    init.extend_from_slice(&WIDTH.to_be_bytes());
    init.extend_from_slice(&HEIGHT.to_be_bytes());
    init.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
    init.extend_from_slice(&(name.len() as u32).to_be_bytes());
    init.extend_from_slice(name);
    viewer.send(&init).await?;

    let mut format = PixelFormat::NATIVE;
    let mut incremental_pending = false;
    let mut next_frame = tokio::time::Instant::now();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some(len) = message_len(&viewer.buf)? {
            let message: Vec<u8> = viewer.buf.drain(..len).collect();
            match message[0] {
                SET_PIXEL_FORMAT => format = PixelFormat::parse(&message[4..20])?,
                FRAMEBUFFER_UPDATE_REQUEST if message[1] == 0 => {
                    // A full update is what a viewer asks for first and after a resize: answered
                    // at once.
                    let frame = ctx.frames.fetch_add(1, Ordering::Relaxed);
                    viewer.send(&framebuffer_update(format, frame)).await?;
                    next_frame = tokio::time::Instant::now() + FRAME_PERIOD;
                    incremental_pending = false;
                }
                FRAMEBUFFER_UPDATE_REQUEST => incremental_pending = true,
                // Encodings (RAW is always allowed), keys, pointer and cut text change nothing
                // on a simulated screen.
                _ => {}
            }
        }
        tokio::select! {
            read = viewer.stream.read(&mut chunk) => match read? {
                0 => return Ok(()),
                n => viewer.buf.extend_from_slice(&chunk[..n]),
            },
            () = tokio::time::sleep_until(next_frame), if incremental_pending => {
                let frame = ctx.frames.fetch_add(1, Ordering::Relaxed);
                viewer.send(&framebuffer_update(format, frame)).await?;
                next_frame = tokio::time::Instant::now() + FRAME_PERIOD;
                incremental_pending = false;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;

    #[test]
    fn native_format_round_trips_and_encodes_little_endian_bgrx() {
        let native = PixelFormat::NATIVE;
        assert_eq!(PixelFormat::parse(&native.to_bytes()).unwrap(), native);
        let mut out = Vec::new();
        native.push((1, 2, 3), &mut out);
        assert_eq!(out, [3, 2, 1, 0]);
    }

    #[test]
    fn a_16_bit_big_endian_format_is_honoured() {
        // RGB565, big-endian.
        let mut bytes = [16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0];
        let format = PixelFormat::parse(&bytes).unwrap();
        let mut out = Vec::new();
        format.push((255, 0, 255), &mut out);
        assert_eq!(out, 0xF81Fu16.to_be_bytes());
        bytes[3] = 0;
        assert!(matches!(
            PixelFormat::parse(&bytes),
            Err(RfbError::PixelFormat("colour map"))
        ));
    }

    #[test]
    fn the_pattern_moves_between_frames() {
        let a = framebuffer_update(PixelFormat::NATIVE, 0);
        let b = framebuffer_update(PixelFormat::NATIVE, 1);
        assert_eq!(a.len(), 16 + 640 * 400 * 4);
        assert_ne!(a, b);
        // The bar is white at frame 0's position only in frame 0.
        assert_eq!(pattern(0, 10, 0), (255, 255, 255));
        assert_ne!(pattern(0, 10, 1), (255, 255, 255));
        assert_eq!(pattern(BAR_WIDTH, 10, 1), (255, 255, 255));
    }

    #[test]
    fn client_messages_are_framed_by_type() {
        assert_eq!(message_len(&[3; 9]).unwrap(), None);
        assert_eq!(message_len(&[3; 10]).unwrap(), Some(10));
        assert_eq!(message_len(&[2, 0, 0, 2]).unwrap(), None);
        assert_eq!(
            message_len(&[2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Some(12)
        );
        assert!(matches!(
            message_len(&[6, 0, 0, 0, 255, 255, 255, 255]),
            Err(RfbError::CutTextTooLarge(_))
        ));
        assert!(matches!(
            message_len(&[9]),
            Err(RfbError::UnknownMessage(9))
        ));
    }
}
