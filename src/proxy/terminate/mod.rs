//! A session under `[tls] mode = "terminate"`: the proxy answers the client's TLS with its own
//! certificate ([`negotiate`]), opens its own connection to the server ([`server`]: TLS as
//! `server_sslmode` says) through the same held, retried opening as a plain session
//! ([`startup::open_with`]), passes the authentication through ([`auth`]), then copies both
//! ways following the framing ([`copy`]). Everything a plain session gets works here:
//! the read port's per-connection bounds and `min_lsn`, the pause, the drain, the 57P01 at
//! a message boundary when the route leaves the server.
//!
//! The certificate is the one of the configuration in force when the client came: a reload
//! (SIGHUP) gives new sessions the new one, and open sessions carry on with theirs.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::CloseReason;

use super::datapath::{DataPath, Port};
use super::framing::{Framer, Side};
use super::placement::Placement;
use super::session;
use super::startup;
use super::wire::{Packet, PROTOCOL_3};

pub mod auth;
pub mod copy;
pub mod negotiate;
pub mod sasl;
pub mod server;

/// Serves one client whose TLS the proxy terminates, until the session ends. The caller has
/// counted it and tuned its socket.
pub async fn serve(tcp: TcpStream, dp: &Arc<DataPath>, port: Port, stopping: &CancellationToken, kill: &CancellationToken, acceptor: TlsAcceptor) {
    let m = &dp.metrics;
    let cfg = dp.config();
    let deadline = tokio::time::Instant::now() + cfg.proxy.startup_timeout;
    let negotiated = tokio::select! {
        r = negotiate::client(tcp, &acceptor, cfg.tls.require_client_tls, deadline) => r,
        _ = kill.cancelled() => {
            m.session_closed(CloseReason::Shutdown);
            return;
        }
    };
    let (mut client, packet) = match negotiated {
        Ok(pair) => pair,
        Err(negotiate::Refusal::Gone(why)) => {
            tracing::debug!(%why, "client gone before its startup");
            m.session_closed(CloseReason::ClientClosed);
            return;
        }
        Err(negotiate::Refusal::Invalid(len)) => {
            tracing::debug!(len, "invalid length of startup packet: connection closed");
            m.session_closed(CloseReason::InvalidStartup);
            return;
        }
        Err(negotiate::Refusal::Refused(why)) => {
            tracing::info!(%why, "client refused");
            m.session_closed(CloseReason::ClientClosed);
            return;
        }
    };
    let tls_client = client.is_tls();
    // Kept to open the server connection again in clear (see `auth`).
    let startup_bytes = match &packet {
        Packet::Untyped { code: PROTOCOL_3, bytes } => bytes.clone(),
        _ => Vec::new(),
    };
    let mut place = Placement::for_port(dp, port);
    let leg = server::ServerLeg { material: cfg.material.clone() };
    let opened = tokio::select! {
        r = startup::open_with(&mut client, Some(packet), dp, &mut place, stopping, &leg) => r,
        _ = kill.cancelled() => {
            m.session_closed(CloseReason::Shutdown);
            return;
        }
    };
    let (server, backend, first) = match opened {
        Ok(o) => (o.server, o.backend, o.first),
        // Under termination a direct-TLS hello is the proxy's own to answer (`negotiate`), so
        // it never comes back from the opening.
        Err(failed) => return session::refuse(&mut client, failed, m, port, tokio::time::Instant::now() + cfg.proxy.startup_timeout).await,
    };
    let _reading = session::read_counted(m, &place, port, backend);
    let mut up = Framer::new(Side::Frontend);
    let (track, down) = session::followed_from(first.as_deref());
    let mut server = match &first {
        Some(first) if tls_client => match auth::channel_binding(&mut client, server, first, &startup_bytes, dp, backend, deadline).await {
            auth::Outcome::Go { server, forwarded } => {
                if let Some(msg) = forwarded {
                    up.feed(&msg, &track);
                }
                server
            }
            auth::Outcome::Ended(why) => {
                tracing::info!(%why, "client refused during authentication");
                m.session_closed(CloseReason::ClientClosed);
                return;
            }
        },
        _ => server,
    };
    let _counted = dp.gate.register(track.clone(), backend);
    let following = copy::Following { track: &track, gate: &dp.gate, backend, up, down };
    let reason = tokio::select! {
        r = copy::splice(&mut client, &mut server, m, Some(following)) => r,
        _ = place.left(backend) => CloseReason::RouteChanged,
        _ = kill.cancelled() => CloseReason::Shutdown,
    };
    if reason == CloseReason::RouteChanged {
        let ended = super::session::end(&mut client, &track, &place, port).await;
        tracing::debug!(backend = %dp.backend(backend).name, ended = ended.as_str(), "session ended: the route moved away");
        m.session_closed(ended);
    } else {
        m.session_closed(reason);
    }
}
