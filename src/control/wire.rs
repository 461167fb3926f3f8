//! The commands as they travel over the control socket: one JSON `Request` line in, one
//! `Reply` line out. The list below is the whole command set; each entry names a type that
//! implements `Command`, so a command cannot join the set without declaring its effects.

use serde::{Deserialize, Serialize};

use super::{
    backup, bridge, cache, doc, doctor, invite, mem, peers, search, skill, status, store, sync,
    Command, CommandError, Context, Effects,
};

/// A command's reply as it travels: its own reply as JSON, or why there is none.
pub type Reply = Result<serde_json::Value, CommandError>;

macro_rules! command_set {
    ($($variant:ident => $command:ty,)*) => {
        /// Any command, tagged by `op` on the wire.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Request {
            $($variant($command),)*
        }

        impl Request {
            /// What running this request may change.
            pub fn effects(&self) -> Effects {
                match self {
                    $(Request::$variant(_) => <$command as Command>::EFFECTS,)*
                }
            }

            /// Runs the request and encodes its reply for the socket.
            pub fn execute(self, node: &Context) -> Reply {
                match self {
                    $(Request::$variant(command) => encode(command.execute(node)),)*
                }
            }

            /// How long a client waits for the daemon's answer (`Command::patience`).
            pub fn patience(&self) -> std::time::Duration {
                match self {
                    $(Request::$variant(command) => command.patience(),)*
                }
            }

            /// Whether the request only reads the store: it writes nothing there or anywhere
            /// else, so a process that ends after it need not close the store.
            pub fn is_lookup(&self) -> bool {
                matches!(
                    self,
                    Request::MemGet(_)
                        | Request::MemLs(_)
                        | Request::MemHistory(_)
                        | Request::SkillGet(_)
                        | Request::SkillLs(_)
                )
            }

            /// The command's type name (`MemPut`), for logs and test messages.
            pub fn op(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => stringify!($variant),)*
                }
            }
        }

        $(impl From<$command> for Request {
            fn from(command: $command) -> Request {
                Request::$variant(command)
            }
        })*
    };
}

command_set! {
    MemPut => mem::MemPut,
    MemGet => mem::MemGet,
    MemLs => mem::MemLs,
    MemRm => mem::MemRm,
    SkillPut => skill::SkillPut,
    SkillGet => skill::SkillGet,
    SkillLs => skill::SkillLs,
    SkillRm => skill::SkillRm,
    DocExport => doc::DocExport,
    PeersAdd => peers::PeersAdd,
    PeersLs => peers::PeersLs,
    PeersRm => peers::PeersRm,
    PeersPending => peers::PeersPending,
    PeersDiscover => peers::PeersDiscover,
    PeersApprove => peers::PeersApprove,
    PeersDeny => peers::PeersDeny,
    Invite => invite::Invite,
    Join => invite::Join,
    Status => status::Status,
    Sync => sync::Sync,
    BridgeIngest => bridge::BridgeIngest,
    BridgeEmit => bridge::BridgeEmit,
    BridgeRespond => bridge::BridgeRespond,
    BridgeSyncAnswer => bridge::BridgeSyncAnswer,
    BridgeSyncSummary => bridge::BridgeSyncSummary,
    StoreImport => store::StoreImport,
    StoreExport => store::StoreExport,
    CacheWrite => cache::CacheWrite,
    Backup => backup::Backup,
    Restore => backup::Restore,
    DocImport => doc::DocImport,
    Search => search::Search,
    Doctor => doctor::Doctor,
    MemHistory => mem::MemHistory,
}

fn encode<T: Serialize>(reply: Result<T, CommandError>) -> Reply {
    reply.and_then(|value| {
        serde_json::to_value(value)
            .map_err(|e| CommandError::failed(format!("cannot encode the reply: {e}")))
    })
}

/// Reads a reply as the reply of command `C`.
pub fn decode<C: Command>(reply: Reply) -> Result<C::Reply, DecodeError> {
    let value = reply.map_err(DecodeError::Command)?;
    serde_json::from_value(value).map_err(DecodeError::Shape)
}

/// A reply that is not the one asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Command(CommandError),
    #[error("the daemon answered in a shape this meshd does not understand ({0}); is the running daemon a different version? restart it")]
    Shape(serde_json::Error),
}
