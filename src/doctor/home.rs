//! The node home and its secrets: nobody but the node's user may read them.
//!
//! The home holds the store (every memory entry) and the node's private key; a directory
//! other users can enter exposes the store's files, whatever their own modes. Group access
//! to the home is only a warning: the systemd unit gives the home to group `meshd` (0750) on
//! purpose, so that OpenClaw's user can read the caches written inside it.

use std::path::PathBuf;

use super::Check;

const CHECK: &str = "home";

/// The user running the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub name: Option<String>,
}

impl Account {
    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// What a path of the home is for, which says what its mode must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The home directory: 0700 (0750 tolerated, with a warning).
    Home,
    /// The node's private key: 0600, and it must exist.
    Key,
    /// The local API's token: 0600; `meshd run` makes it when missing.
    Token,
    /// The control socket: 0600; there only while the daemon runs.
    Socket,
    /// meshd.toml: 0600 when it holds an API secret, anything otherwise.
    Config { holds_secret: bool },
}

/// A file's mode bits and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    /// The owner's name, when the system knows it.
    pub owner_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFacts {
    pub path: PathBuf,
    pub role: Role,
    /// `None`: the path does not exist.
    pub found: Option<Meta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeFacts {
    pub user: Account,
    /// The home first, then the files in it.
    pub paths: Vec<PathFacts>,
}

/// One line per problem, or one `ok` line.
pub fn check(facts: &HomeFacts) -> Vec<Check> {
    let mut problems = Vec::new();
    let home = facts.paths.iter().find(|p| p.role == Role::Home);
    let home_owner = home.and_then(|p| p.found.as_ref()).map(|m| m.uid);
    if let (Some(home), Some(owner)) = (home, home_owner) {
        if owner != facts.user.uid {
            // Everything else is then checked as seen by the wrong user: say that once.
            return vec![wrong_owner(home, owner, &facts.user, true)];
        }
    }
    for path in &facts.paths {
        match &path.found {
            None => problems.extend(missing(path)),
            Some(meta) if meta.uid != facts.user.uid => {
                problems.push(wrong_owner(path, meta.uid, &facts.user, false))
            }
            Some(meta) => problems.extend(mode_problem(path, meta.mode)),
        }
    }
    if problems.is_empty() {
        return vec![Check::ok(CHECK, all_good(facts))];
    }
    problems
}

fn missing(path: &PathFacts) -> Option<Check> {
    let shown = path.path.display();
    match path.role {
        Role::Home | Role::Key => Some(Check::fail(
            CHECK,
            format!("{shown} does not exist"),
            "point --home or MESHD_HOME at the node's home, or create a node with meshd init",
        )),
        Role::Token => Some(Check::warn(
            CHECK,
            format!("{shown} does not exist yet: web pages cannot use the local API"),
            "start meshd run once: it writes the token (mode 0600)",
        )),
        Role::Socket | Role::Config { .. } => None,
    }
}

fn wrong_owner(path: &PathFacts, owner: u32, user: &Account, whole_home: bool) -> Check {
    let shown = path.path.display();
    let owner_name = path.found.as_ref().and_then(|m| m.owner_name.as_deref());
    let owner_label = match owner_name {
        Some(name) => format!("{name} (uid {owner})"),
        None => format!("uid {owner}"),
    };
    let run_as = owner_name
        .map(|name| format!("run meshd as its owner (sudo -u {name} meshd ...), or "))
        .unwrap_or_default();
    let recursive = if whole_home { "-R " } else { "" };
    let user_name = user.name.clone().unwrap_or_else(|| user.uid.to_string());
    Check::fail(
        CHECK,
        format!(
            "{shown} belongs to {owner_label}, not to {} who runs this",
            user.label()
        ),
        format!("{run_as}chown {recursive}{user_name} {shown}"),
    )
}

fn mode_problem(path: &PathFacts, mode: u32) -> Option<Check> {
    let shown = path.path.display();
    let bits = mode & 0o777;
    match path.role {
        Role::Home if bits & 0o007 != 0 => Some(Check::fail(
            CHECK,
            format!("{shown} is {bits:04o}: other users can enter it and read the store"),
            format!("chmod 700 {shown}"),
        )),
        Role::Home if bits & 0o070 != 0 => Some(Check::warn(
            CHECK,
            format!(
                "{shown} is {bits:04o}: its group can read the store (right only when that \
                 group is meant to read the caches in it, as with the systemd unit's 0750)"
            ),
            format!("chmod 700 {shown}"),
        )),
        Role::Key | Role::Token | Role::Socket | Role::Config { holds_secret: true }
            if bits & 0o077 != 0 =>
        {
            Some(Check::fail(
                CHECK,
                format!("{shown} is {bits:04o}: {}", exposure(path.role)),
                format!("chmod 600 {shown}"),
            ))
        }
        _ => None,
    }
}

fn exposure(role: Role) -> &'static str {
    match role {
        Role::Key => "other users can read the node's private key, which is its identity",
        Role::Token => "other users can read the local API's token",
        Role::Socket => "other users can send commands to the daemon",
        _ => "other users can read the API secret it holds",
    }
}

fn all_good(facts: &HomeFacts) -> String {
    let modes: Vec<String> = facts
        .paths
        .iter()
        .filter_map(|p| {
            let meta = p.found.as_ref()?;
            let name = match p.role {
                Role::Home => p.path.display().to_string(),
                _ => p.path.file_name()?.to_string_lossy().into_owned(),
            };
            Some(format!("{name} {:04o}", meta.mode & 0o777))
        })
        .collect();
    format!("{}; owned by {}", modes.join(", "), facts.user.label())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const ME: u32 = 1000;

    fn facts(modes: &[(Role, &str, Option<u32>)]) -> HomeFacts {
        HomeFacts {
            user: Account {
                uid: ME,
                name: Some("me".into()),
            },
            paths: modes
                .iter()
                .map(|(role, name, mode)| PathFacts {
                    path: PathBuf::from("/h").join(name),
                    role: *role,
                    found: mode.map(|mode| Meta {
                        mode,
                        uid: ME,
                        owner_name: Some("me".into()),
                    }),
                })
                .collect(),
        }
    }

    fn healthy() -> HomeFacts {
        facts(&[
            (Role::Home, "", Some(0o40700)),
            (Role::Key, "node.key", Some(0o100600)),
            (Role::Token, "api.token", Some(0o100600)),
            (Role::Socket, "control.sock", None),
            (
                Role::Config {
                    holds_secret: false,
                },
                "meshd.toml",
                Some(0o100644),
            ),
        ])
    }

    #[test]
    fn a_private_home_is_one_ok_line() {
        let checks = check(&healthy());
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].status, Status::Ok);
        assert!(
            checks[0].finding.contains("node.key 0600"),
            "{:?}",
            checks[0]
        );
    }

    #[test]
    fn a_readable_key_fails_with_the_exact_chmod() {
        let mut facts = healthy();
        facts.paths[1].found.as_mut().unwrap().mode = 0o100644;
        let checks = check(&facts);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].finding.contains("0644"), "{:?}", checks[0]);
        assert_eq!(checks[0].fix.as_deref(), Some("chmod 600 /h/node.key"));
    }

    #[test]
    fn each_exposed_secret_gets_its_own_line() {
        let mut facts = healthy();
        facts.paths[2].found.as_mut().unwrap().mode = 0o100640;
        facts.paths[3].found = Some(Meta {
            mode: 0o140666,
            uid: ME,
            owner_name: None,
        });
        facts.paths[4].role = Role::Config { holds_secret: true };
        let fixes: Vec<_> = check(&facts).into_iter().filter_map(|c| c.fix).collect();
        assert_eq!(
            fixes,
            [
                "chmod 600 /h/api.token",
                "chmod 600 /h/control.sock",
                "chmod 600 /h/meshd.toml"
            ]
        );
    }

    #[test]
    fn a_config_without_secrets_may_be_readable() {
        assert_eq!(check(&healthy())[0].status, Status::Ok);
    }

    #[test]
    fn a_home_others_can_enter_fails_and_group_access_warns() {
        let mut facts = healthy();
        facts.paths[0].found.as_mut().unwrap().mode = 0o40755;
        let checks = check(&facts);
        assert_eq!(checks[0].status, Status::Fail);
        assert_eq!(checks[0].fix.as_deref(), Some("chmod 700 /h/"));
        facts.paths[0].found.as_mut().unwrap().mode = 0o40750;
        assert_eq!(check(&facts)[0].status, Status::Warn);
    }

    #[test]
    fn a_home_of_another_user_is_one_line_naming_both() {
        let mut facts = healthy();
        for path in &mut facts.paths {
            if let Some(meta) = &mut path.found {
                meta.uid = 998;
                meta.owner_name = Some("meshd".into());
            }
        }
        let checks = check(&facts);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].status, Status::Fail);
        assert!(
            checks[0].finding.contains("meshd (uid 998)"),
            "{:?}",
            checks[0]
        );
        assert!(
            checks[0].finding.contains("me (uid 1000)"),
            "{:?}",
            checks[0]
        );
        let fix = checks[0].fix.as_deref().unwrap();
        assert!(fix.contains("sudo -u meshd meshd"), "{fix}");
        assert!(fix.contains("chown -R me /h/"), "{fix}");
    }

    #[test]
    fn a_missing_token_warns_and_a_missing_socket_is_fine() {
        let mut facts = healthy();
        facts.paths[2].found = None;
        let checks = check(&facts);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].status, Status::Warn);
        assert!(checks[0].fix.as_deref().unwrap().contains("meshd run"));
    }
}
