//! The reference servers' environment variables that name where meshd serves and what it
//! writes, read over meshd.toml so that meshd can run under a unit file written for
//! `api-server.js` or `webhook-server.js`: `PORT` / `MESH_STORE_PORT` (the API's port) and
//! `MESH_STORE_DB_PATH` (the SQLite file, kept as `[store] mirror`). The API's credentials,
//! rate limits and body limits are per route group and resolved with the API's settings
//! (`api::ApiSettings`). docs/compatibility.md, "Environment variables", has the table.

use std::path::PathBuf;

use super::{parse_listen, Config, ConfigError};

/// Overrides `config` with the variables `env` sets; an empty variable counts as unset.
pub fn apply(config: &mut Config, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    // As in api-server.js, `PORT` wins over `MESH_STORE_PORT`.
    let port = ["PORT", "MESH_STORE_PORT"]
        .into_iter()
        .find_map(|name| var(name).map(|value| (name, value)));
    if let Some((name, value)) = port {
        config.api.listen = with_port(&config.api.listen, name, &value)?;
    }
    if let Some(path) = var("MESH_STORE_DB_PATH") {
        config.store.mirror = Some(PathBuf::from(path));
    }
    Ok(())
}

/// The configured address on another port: the host stays (loopback unless meshd.toml says
/// otherwise), where the reference listened on every interface.
fn with_port(listen: &str, name: &str, value: &str) -> Result<String, ConfigError> {
    let port = value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|&port| port > 0)
        .ok_or_else(|| ConfigError::Environment {
            name: name.to_string(),
            value: value.to_string(),
            expected: "a TCP port number from 1 to 65535",
        })?;
    let mut addr = parse_listen(listen)?;
    addr.set_port(port);
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).unwrap();
        apply(&mut config, |var| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| value.to_string())
        })?;
        Ok(config)
    }

    const PLAIN: &str = "[node]\nname = \"a\"\n";

    #[test]
    fn port_and_db_path_come_from_the_reference_variables() {
        let env = [
            ("MESH_STORE_PORT", "4090"),
            ("MESH_STORE_DB_PATH", "/srv/mesh-store.sqlite"),
        ];
        let config = applied(PLAIN, &env).unwrap();
        assert_eq!(config.api.listen, "127.0.0.1:4090");
        assert_eq!(
            config.store.mirror,
            Some(PathBuf::from("/srv/mesh-store.sqlite"))
        );
    }

    #[test]
    fn port_wins_over_mesh_store_port_and_over_the_file_keeping_its_host() {
        let file = "[node]\nname = \"a\"\n[api]\nlisten = \"0.0.0.0:5000\"\n\
                    [store]\nmirror = \"/file.sqlite\"\n";
        let env = [("PORT", "4077"), ("MESH_STORE_PORT", "4090")];
        let config = applied(file, &env).unwrap();
        assert_eq!(config.api.listen, "0.0.0.0:4077");
        assert_eq!(config.store.mirror, Some(PathBuf::from("/file.sqlite")));
        let untouched = applied(file, &[("PORT", " ")]).unwrap();
        assert_eq!(untouched.api.listen, "0.0.0.0:5000");
    }

    #[test]
    fn a_port_that_is_not_one_is_an_error_naming_the_variable() {
        for value in ["http", "0", "70000"] {
            let error = applied(PLAIN, &[("PORT", value)]).unwrap_err().to_string();
            assert!(error.contains("PORT") && error.contains(value), "{error}");
        }
    }
}
