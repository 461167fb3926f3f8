//! `meshd invite` and `meshd join`: pairing with one command on each node.

use std::io::IsTerminal;

use clap::Args;
use meshd::config::Home;
use meshd::control::{Invite, Join};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

use super::{execute, format_time};

#[derive(Debug, Args)]
pub struct InviteArgs {
    /// Documents the joining node may read here [default: mesh,skills,user:*,node:*]
    #[arg(long, value_name = "SCOPES")]
    read: Option<String>,
    /// Documents the joining node may change here [default: mesh,skills,user:*,node:*]
    #[arg(long, value_name = "SCOPES")]
    write: Option<String>,
    /// How long the ticket lasts: 30m, 1h, 2d (at most 7d)
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    expires: String,
    /// The name the joining node gets in this node's peer list [default: the name it gives]
    #[arg(long)]
    name: Option<String>,
    /// HOST:PORT the joining node dials (repeat for more) [default: this node's listen
    /// address, or every interface's address with the listen port]
    #[arg(long = "address", value_name = "HOST:PORT")]
    addresses: Vec<String>,
    /// Never print the QR code (it is printed only on a terminal)
    #[arg(long)]
    no_qr: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The ticket `meshd invite` printed on the other node
    ticket: String,
    /// The name to give the inviting node here [default: the name it gives]
    #[arg(long)]
    name: Option<String>,
    /// Documents the inviting node may read here [default: mesh,skills,user:*,node:*]
    #[arg(long, value_name = "SCOPES")]
    read: Option<String>,
    /// Documents the inviting node may change here [default: mesh,skills,user:*,node:*]
    #[arg(long, value_name = "SCOPES")]
    write: Option<String>,
}

pub fn invite(home: &Home, args: InviteArgs) -> anyhow::Result<()> {
    let made = execute(
        home,
        Invite {
            read: args.read,
            write: args.write,
            expires: Some(args.expires),
            name: args.name,
            addresses: args.addresses,
        },
    )?;
    let terminal = std::io::stdout().is_terminal();
    if terminal && !args.no_qr {
        if let Ok(code) = QrCode::new(made.ticket.as_bytes()) {
            println!("{}", code.render::<Dense1x2>().quiet_zone(true).build());
        }
    }
    // The ticket alone on stdout's last line, so scripts can take it.
    println!("{}", made.ticket);
    eprintln!(
        "On the other node run:  meshd join <the ticket above>\n\
         It works once, until {}. The joining node may {} here.\n\
         It dials: {}",
        format_time(made.expires),
        made.offers,
        made.addresses.join(", ")
    );
    Ok(())
}

pub fn join(home: &Home, args: JoinArgs) -> anyhow::Result<()> {
    let joined = execute(
        home,
        Join {
            ticket: args.ticket,
            name: args.name,
            read: args.read,
            write: args.write,
        },
    )?;
    println!("{joined}");
    Ok(())
}
