//! Socket activation: listeners systemd bound for amtgw (a `.socket` unit's `ListenStream=`) and
//! passed with `LISTEN_FDS`. Each is used for the configured listener on the same address, in
//! place of binding it, so the plain ports (623 too) are open from early boot and stay open
//! across a restart of the service; connections arriving meanwhile wait in the backlog.
//!
//! Matching is by address, not by name: the configuration stays the one description of what
//! amtgw listens on, and a socket it does not describe is an error at start, not a port
//! silently left unserved.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "socket {index} passed by systemd (LISTEN_FDS) is not a TCP listener: {source}; \
         amtgw takes only ListenStream= sockets"
    )]
    NotTcp { index: usize, source: io::Error },
    #[error(
        "systemd passed a socket for {addr} (LISTEN_FDS) that no listener of the configuration \
         uses; add the address to services.<svc>.bind (or admin.listen), or remove it from the \
         .socket unit"
    )]
    Unused { addr: SocketAddr },
}

impl ActivationError {
    pub fn kind(&self) -> &'static str {
        match self {
            ActivationError::NotTcp { .. } => "activation_not_tcp",
            ActivationError::Unused { .. } => "activation_unused",
        }
    }
}

/// Listeners inherited from systemd, by their bound address, until the gateway takes them.
#[derive(Debug, Default)]
pub struct InheritedListeners {
    by_addr: BTreeMap<SocketAddr, std::net::TcpListener>,
}

impl InheritedListeners {
    /// The listeners of `LISTEN_FDS` when `LISTEN_PID` names this process; none otherwise. The
    /// variables are removed, so that no child (and no second call) takes the descriptors too.
    pub fn from_systemd() -> Result<InheritedListeners, ActivationError> {
        let mut passed = listenfd::ListenFd::from_env();
        let mut by_addr = BTreeMap::new();
        for index in 0..passed.len() {
            let (addr, listener) = passed
                .take_tcp_listener(index)
                .and_then(|taken| {
                    taken.ok_or_else(|| io::Error::other("already taken or not a socket"))
                })
                .and_then(|listener| Ok((listener.local_addr()?, listener)))
                .map_err(|source| ActivationError::NotTcp { index, source })?;
            by_addr.insert(addr, listener);
        }
        Ok(InheritedListeners { by_addr })
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// The inherited listener bound to exactly `addr`, ready for tokio. An ephemeral port (0)
    /// never matches: systemd never binds one on amtgw's behalf.
    pub(crate) fn take(&mut self, addr: SocketAddr) -> io::Result<Option<TcpListener>> {
        if addr.port() == 0 {
            return Ok(None);
        }
        let Some(listener) = self.by_addr.remove(&addr) else {
            return Ok(None);
        };
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener).map(Some)
    }

    /// Every inherited listener must have been taken: one left over is a port systemd holds
    /// open that nothing would ever serve.
    pub(crate) fn all_taken(&self) -> Result<(), ActivationError> {
        match self.by_addr.keys().next() {
            Some(&addr) => Err(ActivationError::Unused { addr }),
            None => Ok(()),
        }
    }
}
