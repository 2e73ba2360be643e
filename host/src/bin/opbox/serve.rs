//! `opbox serve`: the host on its listeners until a signal stops it; and
//! what `opbox dev` shares with it (binding a listener, the signals).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use opbox::{Host, HostConfig};

/// How long open requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A listener on `addr`, and the address it got (the port, when `addr`
/// asked for any).
pub(crate) async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    Ok((listener, local))
}

pub(crate) async fn serve(
    mut config: HostConfig,
    listen: Option<SocketAddr>,
    tcp_listen: Option<SocketAddr>,
    plugins: Vec<PathBuf>,
) -> Result<()> {
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if tcp_listen.is_some() {
        config.tcp_listen = tcp_listen;
    }
    config.plugin_dirs.extend(plugins);
    if config.envelope.tls.is_some() && config.tcp_listen.is_none() && config.quic_listen.is_none()
    {
        bail!(
            "`[envelope] tls` is set but neither `tcp_listen` nor `quic_listen` is, so the listeners it is for are off: \
             set one (WebSockets use `[gateway] tls`)"
        );
    }
    let addr = config.listen;
    let tcp_addr = config.tcp_listen;
    let quic_addr = config.quic_listen;
    if quic_addr.is_some() && config.envelope.tls.is_none() {
        bail!("`quic_listen` needs a certificate: set `[envelope] tls` (QUIC is always encrypted)");
    }
    let metrics_addr = config.metrics_listen;
    let scheme = if config.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let tcp_tls = if config.envelope.tls.is_some() {
        " (TLS)"
    } else {
        ""
    };
    opbox::net::raise_fd_limit(&config.connection());
    let signals = Signals::new()?;
    let host = Host::start(config).await?;
    let (listener, local) = bind(addr).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.changed().await;
        }
    };
    let mut tcp_server = None;
    if let Some(tcp_addr) = tcp_addr {
        let (tcp, local) = bind(tcp_addr).await?;
        tracing::info!("opbox envelopes on tcp://{local}{tcp_tls}");
        tcp_server = Some(tokio::spawn({
            let host = host.clone();
            let stopped = stopped();
            async move { host.serve_tcp(tcp, stopped).await }
        }));
    }
    if let Some(quic_addr) = quic_addr {
        let socket = std::net::UdpSocket::bind(quic_addr)
            .with_context(|| format!("cannot listen on udp://{quic_addr}"))?;
        let local = socket.local_addr()?;
        tracing::info!("opbox envelopes on quic://{local}");
        tokio::spawn({
            let host = host.clone();
            let stopped = stopped();
            async move {
                if let Err(e) = host.serve_quic(socket, stopped).await {
                    tracing::error!("{e}");
                }
            }
        });
    }
    if let Some(metrics_addr) = metrics_addr {
        let (metrics, local) = bind(metrics_addr).await?;
        tracing::info!("opbox metrics on http://{local}/metrics");
        tokio::spawn({
            let host = host.clone();
            let stopped = stopped();
            async move { host.serve_metrics(metrics, stopped).await }
        });
    }
    tracing::info!("opbox serving on {scheme}://{local}");
    let server = tokio::spawn({
        let host = host.clone();
        let stopped = stopped();
        async move { host.serve(listener, stopped).await }
    });
    signals.stop(|| host.reload_tls()).await;
    tracing::info!(
        "shutting down; open calls have {} s to finish, subscriptions end with UNAVAILABLE",
        SHUTDOWN_GRACE.as_secs()
    );
    // New calls are refused and subscriptions end; running calls go on.
    host.dispatcher().drain();
    let _ = stop_tx.send(true);
    let finished = async {
        host.dispatcher().idle().await;
        // The other hosts of a cluster stop listing this one's operations.
        if let Some(cluster) = host.cluster() {
            cluster.left().await;
        }
        if let Some(tcp_server) = tcp_server {
            let _ = tcp_server.await;
        }
        server.await
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, finished).await {
        Ok(joined) => joined.context("the server task failed")?,
        Err(_) => tracing::warn!("open calls did not finish in time; exiting"),
    }
    Ok(())
}

/// The signals that stop the host (Ctrl-C, SIGTERM), and SIGHUP, which
/// reloads the listeners' TLS certificates (by default it would end the
/// process). Registered when made, before the host says it serves, so that
/// none arriving after that line is missed or takes its default action.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watch = |kind| signal(kind).context("cannot watch for signals");
            Ok(Self {
                interrupt: watch(SignalKind::interrupt())?,
                terminate: watch(SignalKind::terminate())?,
                hangup: watch(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the first signal to stop; calls `hangup` at each SIGHUP.
    pub(crate) async fn stop(mut self, hangup: impl Fn()) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!(
                        "SIGHUP: reloading TLS certificates; the rest of the configuration needs a restart"
                    );
                    hangup();
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
