//! The node's QUIC endpoint: one UDP socket that accepts peers and dials them, every connection
//! mutually authenticated by node id (see [`super::tls`]).
//!
//! Each connection gets its own TLS configuration, which is why [`bind`] returns this module's
//! [`Endpoint`] (the quinn endpoint plus this node's TLS context) rather than a bare
//! `quinn::Endpoint`: dialling needs the expected id and this node's key, accepting needs the
//! peer list and the caller's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, TransportConfig, VarInt};

use super::identity::Identity;
use super::pins::PeerPins;
use super::tls::{peer_node_id, RefusedId, TlsContext, ALPN, JOIN_ALPN};
use super::NetError;
use crate::model::NodeId;

/// Keeps NAT bindings and the idle timer alive while a connection has nothing to say.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A peer silent this long, in ms (six missed keep-alives), is gone; reconnecting is the
/// caller's call.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// How often `connect` looks for the server's confirmation of the handshake.
const CONFIRM_POLL: Duration = Duration::from_millis(5);
/// quinn wants a server name; ours carries no meaning (the expected id is in the verifier) and is
/// not sent (SNI is off).
const SERVER_NAME: &str = "meshd";

/// A bound QUIC endpoint with this node's identity and peer list. Clones share both.
#[derive(Debug, Clone)]
pub struct Endpoint {
    quic: quinn::Endpoint,
    tls: Arc<TlsContext>,
    /// Transport settings and the retry-token key every accepted connection shares.
    server: quinn::ServerConfig,
    transport: Arc<TransportConfig>,
}

impl Endpoint {
    /// The quinn endpoint: wait for peers with `quic().accept()` and hand each to [`accept`].
    pub fn quic(&self) -> &quinn::Endpoint {
        &self.quic
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    pub fn node_id(&self) -> NodeId {
        self.tls.node_id()
    }

    pub fn pins(&self) -> &PeerPins {
        self.tls.pins()
    }

    fn server_config(
        &self,
        remote: Option<SocketAddr>,
    ) -> Result<(quinn::ServerConfig, RefusedId), NetError> {
        let (crypto, refused) = quic_server_crypto(&self.tls, remote)?;
        let mut config = self.server.clone();
        config.crypto = crypto;
        Ok((config, refused))
    }

    fn client_config(
        &self,
        expected: NodeId,
        alpn: &[u8],
    ) -> Result<(quinn::ClientConfig, RefusedId), NetError> {
        let (tls, refused) = self.tls.client_config(expected, alpn)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(no_initial_suite)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        Ok((config, refused))
    }
}

/// Binds `listen` (port 0 picks a free port). Needs a running tokio runtime.
///
/// The endpoint has no default client configuration: every dial goes through [`connect`] with
/// the id it expects. Incoming connections accepted directly with quinn's `Incoming::accept`
/// are still checked against `pins`, only without the caller's address in the pending record.
pub fn bind(identity: &Identity, listen: SocketAddr, pins: PeerPins) -> Result<Endpoint, NetError> {
    let tls = Arc::new(TlsContext::new(identity, pins)?);
    let transport = Arc::new(transport_config());
    let (crypto, _) = quic_server_crypto(&tls, None)?;
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(transport.clone());
    let quic =
        quinn::Endpoint::server(server.clone(), listen).map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
    Ok(Endpoint {
        quic,
        tls,
        server,
        transport,
    })
}

fn quic_server_crypto(
    tls: &TlsContext,
    remote: Option<SocketAddr>,
) -> Result<(Arc<QuicServerConfig>, RefusedId), NetError> {
    let (config, refused) = tls.server_config(remote)?;
    let crypto = QuicServerConfig::try_from(config).map_err(no_initial_suite)?;
    Ok((Arc::new(crypto), refused))
}

/// Cannot happen with the ring provider, which has the suite QUIC's Initial packets need.
fn no_initial_suite(e: NoInitialCipherSuite) -> NetError {
    NetError::Tls(e.to_string())
}

fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    transport
}

/// Dials `addr`, which must be the node `expected`, and returns once both sides have
/// authenticated each other, with the peer's id.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<(Connection, NodeId), NetError> {
    // The peer list is the set of nodes this one talks to, in both directions.
    if !endpoint.pins().is_allowed(expected) {
        return Err(NetError::NotPinned { addr, id: expected });
    }
    dial(endpoint, addr, expected, ALPN).await
}

/// Dials `addr`, which must be the node `expected`, for a join exchange (`net::join`):
/// whether or not it is a peer yet, since the ticket names the id. The inviter still proves
/// that id in TLS.
pub async fn dial_to_join(
    endpoint: &Endpoint,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<(Connection, NodeId), NetError> {
    dial(endpoint, addr, expected, JOIN_ALPN).await
}

/// Whether the peer opened `connection` for a join exchange rather than a link.
pub fn is_join(connection: &Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == JOIN_ALPN)
}

async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    expected: NodeId,
    alpn: &[u8],
) -> Result<(Connection, NodeId), NetError> {
    let (config, refused) = endpoint.client_config(expected, alpn)?;
    let ours = endpoint.node_id();
    let failed = |source| match refused.get() {
        Some(presented) => NetError::WrongPeer {
            addr,
            expected,
            presented,
        },
        None => NetError::from_connection(addr, ours, source),
    };
    let connection = endpoint
        .quic
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|source| NetError::Connect { addr, source })?
        .await
        .map_err(failed)?;
    confirmed(&connection).await.map_err(failed)?;
    authenticated(connection, addr)
}

/// Completes an incoming connection and returns it with the peer's id. A peer whose id is not
/// allowed is refused during the handshake and recorded in [`PeerPins::pending`] with its address.
pub async fn accept(
    endpoint: &Endpoint,
    incoming: quinn::Incoming,
) -> Result<(Connection, NodeId), NetError> {
    let addr = incoming.remote_address();
    let (config, refused) = endpoint.server_config(Some(addr))?;
    let ours = endpoint.node_id();
    let failed = |source| match refused.get() {
        Some(id) => NetError::NotAllowed { addr, id },
        None => NetError::from_connection(addr, ours, source),
    };
    let connection = incoming
        .accept_with(Arc::new(config))
        .map_err(failed)?
        .await
        .map_err(failed)?;
    authenticated(connection, addr)
}

fn authenticated(
    connection: Connection,
    addr: SocketAddr,
) -> Result<(Connection, NodeId), NetError> {
    let id = peer_node_id(&connection).ok_or(NetError::NoPeerIdentity { addr })?;
    Ok((connection, id))
}

/// Waits until the server confirms the handshake (QUIC HANDSHAKE_DONE), or the connection ends.
///
/// A TLS 1.3 client finishes its side of the handshake before the server has judged the client's
/// certificate, so quinn reports a client connection as established even when the server is
/// about to refuse it. Waiting for HANDSHAKE_DONE, which the server sends only after accepting
/// us, makes a successful `connect` mean both sides authenticated. quinn exposes the frame only
/// in its statistics, hence the poll; it arrives within one round trip.
async fn confirmed(connection: &Connection) -> Result<(), ConnectionError> {
    loop {
        if connection.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        tokio::select! {
            reason = connection.closed() => return Err(reason),
            () = tokio::time::sleep(CONFIRM_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::task::JoinHandle;

    /// Each step takes milliseconds on loopback; a hang should fail, not stall the suite.
    async fn within<T>(step: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), step)
            .await
            .expect("timed out")
    }

    fn node() -> Endpoint {
        let identity = Identity::generate().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        bind(&identity, listen, PeerPins::new()).unwrap()
    }

    fn addr(endpoint: &Endpoint) -> SocketAddr {
        endpoint.local_addr().unwrap()
    }

    /// Accepts the next incoming connection on `server` in the background.
    fn accept_one(server: &Endpoint) -> JoinHandle<Result<(Connection, NodeId), NetError>> {
        let server = server.clone();
        tokio::spawn(async move {
            let incoming = server.quic().accept().await.expect("endpoint open");
            accept(&server, incoming).await
        })
    }

    fn pin_each_other(a: &Endpoint, b: &Endpoint) {
        a.pins().allow(b.node_id());
        b.pins().allow(a.node_id());
    }

    #[tokio::test]
    async fn pinned_peers_exchange_a_message_and_see_each_others_ids() {
        let (a, b) = (node(), node());
        pin_each_other(&a, &b);
        let server = accept_one(&b);
        let (conn, peer) = within(connect(&a, addr(&b), b.node_id())).await.unwrap();
        assert_eq!(peer, b.node_id());
        let (server_conn, server_peer) = within(server).await.unwrap().unwrap();
        assert_eq!(server_peer, a.node_id());

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        let (mut reply, mut request) = within(server_conn.accept_bi()).await.unwrap();
        assert_eq!(within(request.read_to_end(64)).await.unwrap(), b"ping");
        reply.write_all(b"pong").await.unwrap();
        reply.finish().unwrap();
        assert_eq!(within(recv.read_to_end(64)).await.unwrap(), b"pong");
        assert_eq!(peer_node_id(&server_conn), Some(a.node_id()));
    }

    #[tokio::test]
    async fn an_unknown_client_is_refused_and_listed_as_pending() {
        let (a, b) = (node(), node());
        a.pins().allow(b.node_id());
        let server = accept_one(&b);
        let client = within(connect(&a, addr(&b), b.node_id())).await;
        assert!(
            matches!(&client, Err(NetError::RefusedByPeer { ours, .. }) if *ours == a.node_id()),
            "{client:?}"
        );
        let accepted = within(server).await.unwrap();
        assert!(
            matches!(&accepted, Err(NetError::NotAllowed { id, .. }) if *id == a.node_id()),
            "{accepted:?}"
        );
        let pending = b.pins().pending();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].id, a.node_id());
        assert_eq!(pending[0].addr, Some(addr(&a)));
        assert_eq!(pending[0].attempts, 1);
    }

    #[tokio::test]
    async fn a_server_with_another_id_than_the_one_dialled_is_refused() {
        let (a, b) = (node(), node());
        let dialled = Identity::generate().unwrap().node_id;
        a.pins().allow(dialled);
        b.pins().allow(a.node_id());
        let server = accept_one(&b);
        let client = within(connect(&a, addr(&b), dialled)).await;
        assert!(
            matches!(&client, Err(NetError::WrongPeer { expected, presented, .. })
                if *expected == dialled && *presented == b.node_id()),
            "{client:?}"
        );
        let accepted = within(server).await.unwrap();
        assert!(accepted.is_err(), "{accepted:?}");
    }

    #[tokio::test]
    async fn revoking_refuses_new_connections_both_ways() {
        let (a, b) = (node(), node());
        pin_each_other(&a, &b);
        let server = accept_one(&b);
        let (first, _) = within(connect(&a, addr(&b), b.node_id())).await.unwrap();
        let _first_accepted = within(server).await.unwrap().unwrap();

        b.pins().revoke(a.node_id());
        let server = accept_one(&b);
        let client = within(connect(&a, addr(&b), b.node_id())).await;
        assert!(
            matches!(client, Err(NetError::RefusedByPeer { .. })),
            "{client:?}"
        );
        let accepted = within(server).await.unwrap();
        assert!(
            matches!(accepted, Err(NetError::NotAllowed { .. })),
            "{accepted:?}"
        );
        assert!(
            first.close_reason().is_none(),
            "revoke closes nothing by itself"
        );

        a.pins().revoke(b.node_id());
        let client = within(connect(&a, addr(&b), b.node_id())).await;
        assert!(
            matches!(client, Err(NetError::NotPinned { .. })),
            "{client:?}"
        );
    }
}
