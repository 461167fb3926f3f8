//! Pairing by invite: `meshd invite` makes a one-time ticket, `meshd join TICKET` on another
//! node pairs the two both ways. The ticket format and the proof are `ticket`; the invites a
//! node made are `store`; the exchange over QUIC is `net::join`.

pub mod store;
pub mod ticket;

pub use store::{HeldJoin, Invite, InviteError, Invites, Redeemed, Refusal};
pub use ticket::{proof, InviteId, InviteSecret, Ticket, TicketError};
