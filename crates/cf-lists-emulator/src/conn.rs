//! The TCP side of injected faults: a listener that resets fresh connections
//! (`reset_next_connections`), and streams that a request can kill so that its connection
//! closes without a response (`reset_next_requests`, `lose_next_write_responses`).
//!
//! axum gives handlers no access to the connection, so each accepted stream carries a
//! [`KillSwitch`] that axum hands to every request of that connection as
//! `ConnectInfo<KillSwitch>`. Once killed, every read or write on the stream fails and the
//! socket is closed with a reset: hyper drops the connection before a byte of the response
//! leaves.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::state::{lock, Shared};

/// Kills one connection; cloned into every request it carries.
#[derive(Clone, Debug, Default)]
pub(crate) struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub(crate) fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, FaultyListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, FaultyListener>) -> KillSwitch {
        stream.io().kill.clone()
    }
}

/// A `TcpListener` that drops the connections `reset_next_connections` asks for.
pub(crate) struct FaultyListener {
    inner: TcpListener,
    shared: Shared,
}

impl FaultyListener {
    pub(crate) fn new(inner: TcpListener, shared: Shared) -> FaultyListener {
        FaultyListener { inner, shared }
    }
}

impl Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FaultyStream, SocketAddr) {
        loop {
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            let reset = {
                let mut state = lock(&self.shared);
                let reset = state.faults.reset_connections.take().is_some();
                state.counters.faults_injected += u64::from(reset);
                reset
            };
            if !reset {
                let kill = KillSwitch::default();
                return (
                    FaultyStream {
                        inner: stream,
                        kill,
                    },
                    addr,
                );
            }
            tracing::debug!(%addr, "injected fault: connection reset at accept");
            // A zero linger turns the close into a reset; failing that, a plain close.
            let _ = stream.set_zero_linger();
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A `TcpStream` that fails every operation once its [`KillSwitch`] is set.
pub(crate) struct FaultyStream {
    inner: TcpStream,
    kill: KillSwitch,
}

impl FaultyStream {
    /// `Err` once killed, after arranging for the socket to close with a reset.
    fn check(&self) -> io::Result<()> {
        if !self.kill.killed() {
            return Ok(());
        }
        let _ = self.inner.set_zero_linger();
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection killed by an injected fault",
        ))
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
