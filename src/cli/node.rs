//! `meshd init` and `meshd id`.

use anyhow::Context;
use clap::Args;
use meshd::api;
use meshd::bridge::signing::public_key_pem;
use meshd::config::{self, ConfigError, Home};
use meshd::net::identity::Identity;
use meshd::replica::Replica;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A name for people [default: this machine's host name]
    #[arg(long)]
    name: Option<String>,
    /// The UDP address to listen on for peers
    #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_LISTEN)]
    listen: String,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Print {"node_id","name","listen"} as JSON
    #[arg(long)]
    json: bool,
    /// Print only the node's public key as SPKI PEM, for the trusted keys of reference
    /// (JavaScript) nodes that verify this node's signed bridge messages
    #[arg(long, conflicts_with = "json")]
    public_pem: bool,
}

pub fn init(home: &Home, args: InitArgs) -> anyhow::Result<()> {
    config::parse_listen(&args.listen)?;
    if home.is_initialised() {
        return Err(ConfigError::AlreadyInitialised(home.dir.clone()).into());
    }
    let name = args.name.unwrap_or_else(default_name);
    create_home(&home.dir)?;
    let identity = Identity::generate()?;
    identity.save(&home.key_path(), &home.cert_path())?;
    Replica::open(&home.store_path(), identity.signing_key()?)?;
    home.write_new_config(&name, &args.listen)?;
    api::token::load_or_create(&home.api_token_path())?;
    println!("{}", identity.node_id);
    eprintln!(
        "created node '{name}' in {}\nstart it with `meshd run`, then pair: `meshd invite` here and `meshd join TICKET` on the other node (or `meshd peers add` with the id above on both)",
        home.dir.display()
    );
    Ok(())
}

/// Creates the home private to its user (0700): it holds the store and the node's key. A
/// directory that exists already (a service manager's, say) keeps its mode.
fn create_home(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let existed = dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !existed {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "meshd".to_string())
}

pub fn id(home: &Home, args: IdArgs) -> anyhow::Result<()> {
    let config = home.load_config()?;
    let identity = Identity::load(&home.key_path(), &home.cert_path())?;
    if args.public_pem {
        print!("{}", public_key_pem(&identity.signing_key()?));
    } else if args.json {
        let json = serde_json::json!({
            "node_id": identity.node_id.to_string(),
            "name": config.node.name,
            "listen": config.node.listen,
        });
        println!("{json}");
    } else {
        println!("{}", identity.node_id);
        println!("name: {}", config.node.name);
        println!("listen: {}", config.node.listen);
    }
    Ok(())
}
