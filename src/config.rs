//! The node's home directory and its `meshd.toml`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7464";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} holds no meshd node: run `meshd init` first, or point --home / MESHD_HOME at the node's home")]
    NotInitialised(PathBuf),
    #[error("{0} already holds a meshd node; refusing to overwrite it (remove it yourself if you really mean to)")]
    AlreadyInitialised(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("'{0}' is not a HOST:PORT address such as 0.0.0.0:7464")]
    Listen(String),
}

/// Where a node keeps everything: `--home`, `MESHD_HOME`, or `~/.openclaw/meshd`.
#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(dir: PathBuf) -> Home {
        Home { dir }
    }

    pub fn default_dir() -> PathBuf {
        dirs::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".openclaw")
            .join("meshd")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("meshd.toml")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("store")
    }
    pub fn control_socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn is_initialised(&self) -> bool {
        self.config_path().exists() || self.key_path().exists()
    }

    pub fn require_initialised(&self) -> Result<(), ConfigError> {
        if self.config_path().exists() && self.key_path().exists() {
            Ok(())
        } else {
            Err(ConfigError::NotInitialised(self.dir.clone()))
        }
    }

    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.require_initialised()?;
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })
    }

    pub fn write_new_config(&self, name: &str, listen: &str) -> Result<(), ConfigError> {
        let path = self.config_path();
        let text = config_template(name, listen);
        write_file(&path, &text)
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ConfigError> {
    fs::write(path, text).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::Listen(text.to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A name for people; peers identify the node by its id.
    pub name: String,
    /// The QUIC address the daemon listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

fn config_template(name: &str, listen: &str) -> String {
    let name = toml::Value::String(name.to_string());
    let listen = toml::Value::String(listen.to_string());
    format!(
        "# meshd node configuration. Written by `meshd init`; edit freely, then restart meshd.\n\
         # The node's identity lives beside this file (node.key, node.crt): keep node.key private.\n\
         \n\
         [node]\n\
         # A name for people; peers pin this node by its id (`meshd id`), not by its name.\n\
         name = {name}\n\
         # The UDP address meshd listens on for QUIC connections from peers.\n\
         listen = {listen}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back() {
        let config: Config =
            toml::from_str(&config_template("nas \"one\"", "127.0.0.1:1")).unwrap();
        assert_eq!(config.node.name, "nas \"one\"");
        assert_eq!(config.node.listen, "127.0.0.1:1");
    }

    #[test]
    fn listen_must_be_host_and_port() {
        assert!(parse_listen("0.0.0.0:7464").is_ok());
        assert!(parse_listen("localhost").is_err());
    }
}
