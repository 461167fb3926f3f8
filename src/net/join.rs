//! The join exchange, both sides. The joiner dials the inviter named in its ticket (TLS pins
//! that id and proves the joiner's), opens one stream, sends a `JoinRequest` carrying a proof
//! of the ticket's secret bound to both ids, and reads one `JoinReply`. The inviter decides
//! with its invite store; a stranger's connection carries nothing but this one exchange.
//!
//! Frames are a 4-byte big-endian length and JSON, at most `MAX_FRAME` bytes.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::close::CloseCode;
use super::endpoint::{self, Endpoint};
use super::NetError;
use crate::invite::{proof, InviteId, Ticket};
use crate::model::access::Access;

/// How long each side waits for the other's frame; a join is one round trip.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial to one of the ticket's addresses may take before the next is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_FRAME: usize = 16 * 1024;

/// What the joiner sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub invite: InviteId,
    /// `invite::proof` over the invite, the joiner's id and the inviter's.
    pub proof: Vec<u8>,
    /// The UDP port the joiner listens on: the inviter dials it at the address it saw.
    pub listen_port: Option<u16>,
    /// More `HOST:PORT` addresses the joiner can be reached at.
    pub addresses: Vec<String>,
    /// The joiner's own name (`[node] name`), a suggestion for the inviter's peer list.
    pub name: Option<String>,
}

/// What the inviter answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JoinReply {
    Accepted {
        /// What the joiner may read and write at the inviter.
        access: Access,
    },
    Refused {
        reason: String,
    },
    /// Valid, and held for the inviting operator's approval (`meshd peers approve`): once
    /// approved, the inviter adds the joiner and dials it.
    Held {
        /// What the joiner will be able to read and write at the inviter.
        access: Access,
    },
}

/// How a join ended for the joiner.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Paired now, with this access at the inviter.
    Now(Access),
    /// Waits for the inviting operator's approval; this access once approved.
    Held(Access),
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach the inviting node at any address in the ticket ({0}); check that its meshd runs, that this host can reach it over UDP, and that its address did not change (then ask for a new ticket, or use `meshd invite --address HOST:PORT`)")]
    Unreachable(String),
    #[error("the inviting node refused: {0}")]
    Refused(String),
    #[error("the join exchange failed: {0}; try again, and check that both nodes run the same meshd version")]
    Exchange(String),
}

/// Joins: dials the ticket's addresses in order, proves the ticket, returns what this node
/// may do at the inviter, now or once approved.
pub async fn join(
    endpoint: &Endpoint,
    ticket: &Ticket,
    mut request: JoinRequest,
) -> Result<Admitted, JoinError> {
    request.proof = proof(
        &ticket.secret,
        ticket.invite,
        endpoint.node_id(),
        ticket.inviter,
    )
    .to_vec();
    let connection = reach(endpoint, ticket).await?;
    let reply = tokio::time::timeout(EXCHANGE_TIMEOUT, ask(&connection, &request)).await;
    CloseCode::Joined.close(&connection, "join exchange done");
    match reply {
        Err(_) => Err(JoinError::Exchange(format!(
            "no answer within {} s",
            EXCHANGE_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(JoinError::Exchange(e)),
        Ok(Ok(JoinReply::Accepted { access })) => Ok(Admitted::Now(access)),
        Ok(Ok(JoinReply::Held { access })) => Ok(Admitted::Held(access)),
        Ok(Ok(JoinReply::Refused { reason })) => Err(JoinError::Refused(printable(&reason))),
    }
}

async fn reach(endpoint: &Endpoint, ticket: &Ticket) -> Result<Connection, JoinError> {
    let mut failures = Vec::new();
    for address in &ticket.addresses {
        let addrs = match tokio::net::lookup_host(address.as_str()).await {
            Ok(addrs) => addrs.collect::<Vec<_>>(),
            Err(e) => {
                failures.push(format!("{address}: cannot resolve: {e}"));
                continue;
            }
        };
        for addr in addrs {
            match tokio::time::timeout(
                DIAL_TIMEOUT,
                endpoint::dial_to_join(endpoint, addr, ticket.inviter),
            )
            .await
            {
                Ok(Ok((connection, _))) => return Ok(connection),
                Ok(Err(NetError::RefusedByPeer { .. })) => {
                    return Err(JoinError::Refused(
                        "it has no open invite (this ticket was already used or has expired, \
                         or that node's store was reset); ask for a new ticket with \
                         `meshd invite`"
                            .into(),
                    ))
                }
                Ok(Err(e)) => failures.push(dial_failure(addr, &e)),
                Err(_) => failures.push(format!(
                    "{addr}: no answer within {} s",
                    DIAL_TIMEOUT.as_secs()
                )),
            }
        }
    }
    Err(JoinError::Unreachable(failures.join("; ")))
}

fn dial_failure(addr: SocketAddr, error: &NetError) -> String {
    match error {
        NetError::WrongPeer { presented, .. } => {
            format!("{addr}: another node answered there ({presented})")
        }
        other => format!("{addr}: {other}"),
    }
}

async fn ask(connection: &Connection, request: &JoinRequest) -> Result<JoinReply, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, request).await?;
    read_frame(&mut recv).await
}

/// The inviter's side: reads one request from `joiner` (whose id TLS proved), lets `decide`
/// answer it, sends the answer and closes. Returns what was decided, or why nothing was.
pub async fn answer(
    connection: Connection,
    decide: impl FnOnce(JoinRequest) -> JoinReply,
) -> Result<JoinReply, String> {
    let exchange = async {
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let request: JoinRequest = read_frame(&mut recv).await?;
        let reply = decide(request);
        write_frame(&mut send, &reply).await?;
        Ok(reply)
    };
    let outcome = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no join request within {} s",
                EXCHANGE_TIMEOUT.as_secs()
            ))
        });
    if outcome.is_ok() {
        // The joiner closes once it has read the answer; closing first could drop the answer.
        // A joiner that never closes changes nothing: it was answered.
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, connection.closed()).await;
    }
    CloseCode::Joined.close(&connection, "join exchange done");
    outcome
}

async fn write_frame(send: &mut SendStream, value: &impl Serialize) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let length = u32::try_from(body.len()).map_err(|_| "frame too large".to_string())?;
    send.write_all(&length.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(&body).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, String> {
    let mut length = [0u8; 4];
    recv.read_exact(&mut length)
        .await
        .map_err(|e| format!("cannot read the frame: {e}"))?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(format!(
            "a frame of {length} bytes is over the {MAX_FRAME} limit"
        ));
    }
    let mut body = vec![0u8; length];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| format!("cannot read the frame: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed frame: {e}"))
}

/// The other side chooses these bytes: one bounded printable line.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

/// A name a joiner suggested, as this node may keep it: printable, trimmed, bounded.
pub fn suggested_name(name: Option<String>) -> Option<String> {
    let name: String = printable(name?.trim()).chars().take(64).collect();
    (!name.trim().is_empty()).then(|| name.trim().to_string())
}
