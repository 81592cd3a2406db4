//! Authentication through a terminated session. The proxy never needs a password: the
//! client's authentication messages pass to the server, with two exceptions that channel
//! binding forces.
//!
//! - `SCRAM-SHA-256-PLUS` binds the authentication to the TLS connection it runs on, and a
//!   terminated session has two. The server's offer of it is withheld, so a client with
//!   `channel_binding=prefer` (libpq's default) picks plain `SCRAM-SHA-256`.
//! - Such a client, over TLS, then says "I support channel binding but think you do not"
//!   (the `y` flag). PostgreSQL takes that for a downgrade attack when its own connection is
//!   TLS, and refuses it. So with `server_sslmode = "prefer"` the session's server
//!   connection is made again in clear before the client's first SCRAM message goes on (the
//!   client has seen nothing of the first one but its mechanism list); with `require` or
//!   stricter the client is told what to change.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::cluster::BackendId;
use crate::config::ServerSslMode;
use crate::proxy::datapath::DataPath;
use crate::proxy::wire;

use super::negotiate::SQLSTATE_INVALID_AUTHORIZATION;
use super::sasl::{sasl_mechanisms, says_binding_unsupported};
use super::server::{ServerLeg, ServerStream};

/// SCRAM messages are small; a longer one is no message of the authentication.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// What became of the session's server connection.
pub enum Outcome {
    /// Go on with this server connection; the client's message (if one was read) went to it.
    Go { server: ServerStream, forwarded: Option<Vec<u8>> },
    /// The client was answered (an error) and the session ends.
    Ended(String),
}

/// After the server's first answer `first`: when it asked for SASL over a TLS server
/// connection, reads the client's first SCRAM message and deals with its `y` flag (see the
/// module's doc). `startup`: the client's StartupMessage, to open the connection again.
pub async fn channel_binding<C>(
    client: &mut C,
    server: ServerStream,
    first: &[u8],
    startup: &[u8],
    dp: &DataPath,
    backend: BackendId,
    deadline: Instant,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if !server.is_tls() || sasl_mechanisms(first).is_none() {
        return Outcome::Go { server, forwarded: None };
    }
    let msg = match tokio::time::timeout_at(deadline, read_message(client)).await {
        Ok(Ok(m)) => m,
        _ => return Outcome::Ended("the client went away during authentication".into()),
    };
    if !says_binding_unsupported(&msg) {
        return forward(server, msg, dp).await;
    }
    let b = dp.backend(backend);
    if b.sslmode != ServerSslMode::Prefer {
        let why = format!(
            "SCRAM authentication cannot cross pgfailover's TLS termination for a client that supports channel binding: PostgreSQL refuses such a client over \
             the proxy's own TLS connection (server_sslmode = \"{}\"). Connect with channel_binding=disable, or use tls.mode = \"passthrough\"",
            b.sslmode.as_str()
        );
        return refuse(client, &why).await;
    }
    tracing::debug!(backend = %b.name, "SCRAM from a client that supports channel binding: its server connection is made again in clear (server_sslmode = prefer)");
    let mut plain = match ServerLeg::connect_plain(dp, backend).await {
        Ok(s) => s,
        Err(e) => return refuse(client, &format!("could not connect to {} again for SCRAM in clear: {e}", b.name)).await,
    };
    let answer = async {
        plain.write_all(startup).await?;
        read_message(&mut plain).await
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(a)) if sasl_mechanisms(&a).is_some_and(|m| m.contains(&&b"SCRAM-SHA-256"[..])) => {
            dp.metrics.add_bytes(true, startup.len() as u64);
            forward(plain, msg, dp).await
        }
        // An error (no pg_hba.conf entry without encryption, ...) is the client's answer.
        Ok(Ok(a)) if a.first() == Some(&b'E') => {
            let _ = client.write_all(&a).await;
            let _ = client.shutdown().await;
            Outcome::Ended(format!("{} refused the session in clear", b.name))
        }
        Ok(Ok(_)) => refuse(client, &format!("{} asks for another authentication over a connection without TLS than over TLS", b.name)).await,
        Ok(Err(e)) => refuse(client, &format!("{} did not answer in clear: {e}", b.name)).await,
        Err(_) => refuse(client, &format!("{} did not answer in clear in time", b.name)).await,
    }
}

async fn forward(mut server: ServerStream, msg: Vec<u8>, dp: &DataPath) -> Outcome {
    let sent = async {
        server.write_all(&msg).await?;
        server.flush().await
    };
    match sent.await {
        Ok(()) => {
            dp.metrics.add_bytes(true, msg.len() as u64);
            Outcome::Go { server, forwarded: Some(msg) }
        }
        Err(e) => Outcome::Ended(format!("the server connection failed: {e}")),
    }
}

async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, why: &str) -> Outcome {
    let msg = wire::error_response("FATAL", SQLSTATE_INVALID_AUTHORIZATION, why, None);
    let _ = client.write_all(&msg).await;
    let _ = client.shutdown().await;
    Outcome::Ended(why.to_string())
}

/// One whole typed message.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_AUTH_MESSAGE).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a message of length {len} during authentication")));
    }
    let mut msg = vec![0u8; len + 1];
    msg[..5].copy_from_slice(&head);
    s.read_exact(&mut msg[5..]).await?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::super::sasl::says_binding_unsupported;

    #[test]
    fn the_y_flag_is_read_from_the_initial_response() {
        let initial = |data: &str| {
            let mut body = b"SCRAM-SHA-256\0".to_vec();
            body.extend_from_slice(&(data.len() as u32).to_be_bytes());
            body.extend_from_slice(data.as_bytes());
            let mut msg = vec![b'p'];
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(&body);
            msg
        };
        assert!(says_binding_unsupported(&initial("y,,n=,r=abc")));
        assert!(!says_binding_unsupported(&initial("n,,n=,r=abc")));
        assert!(!says_binding_unsupported(&initial("p=tls-server-end-point,,n=,r=abc")));
        assert!(!says_binding_unsupported(b"p\0\0\0\x08md5"));
    }
}
