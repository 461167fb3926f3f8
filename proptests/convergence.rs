//! Replicas converge: 2 to 5 replicas take random writes, deletes and skill edits, sync in
//! random pairs through a simulated network that drops, duplicates, reorders and delays
//! messages, and restart from their sled files between steps, with Bloom filters forced to
//! high false-positive rates. After a final round over a reliable network, every replica holds
//! the same state, that state is what the conflict rule says, and every acknowledged write is
//! in every replica.
//!
//! `PROPTEST_CASES` raises the case count (default 24, sized for CI).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use automerge::{ChangeHash, ReadDoc};
use meshd::model::{DocId, MemoryEntry, Scope, Stamp};
use meshd::replica::{Replica, SkillWrite};
use meshd::sync::{Access, Config, Message, Session};
use proptest::prelude::*;

const DEFAULT_CASES: u32 = 24;
const KEYS: usize = 4;
const SKILLS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Put {
        at: usize,
        user_scope: bool,
        key: usize,
        value: i64,
    },
    Delete {
        at: usize,
        user_scope: bool,
        key: usize,
    },
    EditSkill {
        at: usize,
        skill: usize,
        edit: Edit,
    },
    DeleteSkill {
        at: usize,
        skill: usize,
    },
    Sync {
        a: usize,
        b: usize,
        net: Net,
    },
    Restart {
        at: usize,
    },
}

#[derive(Debug, Clone)]
enum Edit {
    Insert { pos: usize, word: usize },
    Remove { pos: usize, len: usize },
}

/// How hostile one sync session's network is.
#[derive(Debug, Clone)]
struct Net {
    seed: u64,
    drop_pct: u64,
    dup_pct: u64,
    reorder: bool,
    delay_pct: u64,
    fp_rate: f64,
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let at = 0..n;
    let edit = prop_oneof![
        (0usize..64, 0usize..8).prop_map(|(pos, word)| Edit::Insert { pos, word }),
        (0usize..64, 1usize..6).prop_map(|(pos, len)| Edit::Remove { pos, len }),
    ];
    let net = (
        any::<u64>(),
        prop_oneof![Just(0u64), Just(10), Just(30)],
        prop_oneof![Just(0u64), Just(20)],
        any::<bool>(),
        prop_oneof![Just(0u64), Just(30)],
        prop_oneof![Just(0.01), Just(0.5), Just(0.9)],
    )
        .prop_map(
            |(seed, drop_pct, dup_pct, reorder, delay_pct, fp_rate)| Net {
                seed,
                drop_pct,
                dup_pct,
                reorder,
                delay_pct,
                fp_rate,
            },
        );
    prop_oneof![
        4 => (at.clone(), any::<bool>(), 0..KEYS, -5i64..5).prop_map(|(at, user_scope, key, value)| Op::Put { at, user_scope, key, value }),
        1 => (at.clone(), any::<bool>(), 0..KEYS).prop_map(|(at, user_scope, key)| Op::Delete { at, user_scope, key }),
        2 => (at.clone(), 0..SKILLS, edit).prop_map(|(at, skill, edit)| Op::EditSkill { at, skill, edit }),
        1 => (at.clone(), 0..SKILLS).prop_map(|(at, skill)| Op::DeleteSkill { at, skill }),
        3 => (at.clone(), at.clone(), net).prop_map(|(a, b, net)| Op::Sync { a, b, net }),
        1 => at.prop_map(|at| Op::Restart { at }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<i64>, Vec<Op>)> {
    (2usize..=5).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(-3_000i64..3_000, n),
            proptest::collection::vec(op(n), 1..40),
        )
    })
}

/// A replica with its own skewed view of one shared, advancing clock.
struct Node {
    id: String,
    path: PathBuf,
    skew: i64,
    replica: Option<Replica>,
}

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
    nodes: Vec<Node>,
    model: Model,
}

impl World {
    fn new(skews: &[i64]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicU64::new(1_700_000_000_000));
        let mut nodes: Vec<Node> = skews
            .iter()
            .enumerate()
            .map(|(i, &skew)| Node {
                id: format!("node{i}"),
                path: dir.path().join(format!("node{i}")),
                skew,
                replica: None,
            })
            .collect();
        for node in &mut nodes {
            node.replica = Some(open(node, &clock));
        }
        World {
            _dir: dir,
            clock,
            nodes,
            model: Model::default(),
        }
    }

    fn replica(&mut self, at: usize) -> &mut Replica {
        self.nodes[at].replica.as_mut().unwrap()
    }

    fn tick(&self) {
        self.clock.fetch_add(7, Ordering::SeqCst);
    }

    fn run(&mut self, op: &Op) {
        self.tick();
        match op {
            Op::Put {
                at,
                user_scope,
                key,
                value,
            } => {
                let scope = scope(*user_scope);
                let replica = self.replica(*at);
                let entry = replica
                    .put_memory(&scope, &format!("k{key}"), serde_json::json!(value))
                    .expect("valid write");
                let hash = last_local(replica, &DocId::Memory(scope));
                self.model.memory(entry, hash);
            }
            Op::Delete {
                at,
                user_scope,
                key,
            } => {
                let scope = scope(*user_scope);
                let key = format!("k{key}");
                let replica = self.replica(*at);
                if replica.delete_memory(&scope, &key).expect("valid delete") {
                    let (tombstone, _) = replica.memory_versions(&scope, &key).unwrap();
                    let hash = last_local(replica, &DocId::Memory(scope));
                    self.model.memory(tombstone, hash);
                }
            }
            Op::EditSkill { at, skill, edit } => {
                let name = format!("skill{skill}");
                let replica = self.replica(*at);
                let current = replica
                    .get_skill(&name)
                    .map(|s| s.content)
                    .unwrap_or_default();
                let content = edit.apply(&current);
                let written = replica
                    .put_skill(SkillWrite {
                        name,
                        content,
                        ..SkillWrite::default()
                    })
                    .expect("valid skill");
                let hash = last_local(replica, &DocId::Skills);
                self.model
                    .skill(written.name.clone(), SkillVersion::of(&written), hash);
            }
            Op::DeleteSkill { at, skill } => {
                let name = format!("skill{skill}");
                let replica = self.replica(*at);
                if replica.delete_skill(&name).expect("valid delete") {
                    let (winner, _) = replica.skill_versions(&name).unwrap();
                    let hash = last_local(replica, &DocId::Skills);
                    self.model.skill(name, SkillVersion::of(&winner), hash);
                }
            }
            Op::Sync { a, b, net } if a != b => self.sync(*a, *b, Some(net)),
            Op::Sync { .. } => {}
            Op::Restart { at } => {
                let node = &mut self.nodes[*at];
                node.replica = None; // sled holds a lock on its files until dropped
                node.replica = Some(open(node, &self.clock));
            }
        }
    }

    /// One session between `a` (initiator) and `b`. With a network profile, messages may be
    /// lost, doubled, held back or reordered, and the session may end unfinished; without one
    /// the network is reliable and both sides must finish.
    fn sync(&mut self, a: usize, b: usize, net: Option<&Net>) {
        let config = Config {
            false_positive_rate: net.map_or(0.01, |n| n.fp_rate),
        };
        let mut sessions = [
            Session::new(self.nodes[b].id.clone(), Access::full(), config.clone()),
            Session::new(self.nodes[a].id.clone(), Access::full(), config),
        ];
        let (left, right) = self.nodes.split_at_mut(a.max(b));
        let (na, nb) = if a < b {
            (&mut left[a], &mut right[0])
        } else {
            (&mut right[0], &mut left[b])
        };
        let stores = [na.replica.as_mut().unwrap(), nb.replica.as_mut().unwrap()];
        let mut wire = Wire::new(net);
        for message in sessions[0].start(stores[0]).unwrap() {
            wire.send(1, message);
        }
        let mut delivered = 0;
        while let Some((to, frame)) = wire.next() {
            delivered += 1;
            assert!(delivered < 20_000, "the sessions do not stop talking");
            let message = Message::decode(&frame).expect("frames from a sane peer decode");
            let replies = sessions[to]
                .handle(stores[to], message)
                .expect("a sane peer's messages are accepted");
            for reply in replies {
                wire.send(1 - to, reply);
            }
        }
        if net.is_none() {
            assert!(
                sessions[0].is_done(stores[0]),
                "initiator not done after a reliable round"
            );
            assert!(
                sessions[1].is_done(stores[1]),
                "responder not done after a reliable round"
            );
        }
    }

    /// The final round: everything flows into node 0, then out to every other node.
    fn final_round(&mut self) {
        for i in 1..self.nodes.len() {
            self.sync(i, 0, None);
        }
        for i in 1..self.nodes.len() {
            self.sync(0, i, None);
        }
    }
}

fn open(node: &Node, clock: &Arc<AtomicU64>) -> Replica {
    let clock = clock.clone();
    let skew = node.skew;
    let wall = Box::new(move || clock.load(Ordering::SeqCst).saturating_add_signed(skew));
    Replica::open_with_clock(&node.path, &node.id, wall).expect("replica opens")
}

fn scope(user: bool) -> Scope {
    if user {
        Scope::User("ann".into())
    } else {
        Scope::Mesh
    }
}

fn last_local(replica: &Replica, doc: &DocId) -> ChangeHash {
    replica
        .document(doc)
        .and_then(|d| d.get_last_local_change())
        .expect("the write made a change")
        .hash()
}

impl Edit {
    fn apply(&self, text: &str) -> String {
        const WORDS: [&str; 8] = [
            "alpha ", "beta ", "gamma\n", "delta ", "# h\n", "x", "yz ", "- item\n",
        ];
        let chars: Vec<char> = text.chars().collect();
        match *self {
            Edit::Insert { pos, word } => {
                let pos = pos.min(chars.len());
                let mut out: String = chars[..pos].iter().collect();
                out.push_str(WORDS[word]);
                out.extend(&chars[pos..]);
                out
            }
            Edit::Remove { pos, len } => {
                let pos = pos.min(chars.len());
                let end = (pos + len).min(chars.len());
                chars[..pos].iter().chain(&chars[end..]).collect()
            }
        }
    }
}

/// One acknowledged version of a skill, as the conflict rule sees it.
#[derive(Debug, Clone, PartialEq)]
struct SkillVersion {
    updated_at: Stamp,
    source_node: String,
    deleted: bool,
    content: String,
}

impl SkillVersion {
    fn of(skill: &meshd::model::Skill) -> SkillVersion {
        SkillVersion {
            updated_at: skill.updated_at,
            source_node: skill.source_node.clone(),
            deleted: skill.deleted,
            content: skill.content.clone(),
        }
    }
}

/// The reference: every acknowledged write, and per key the greatest `(updated_at, node)`.
#[derive(Default)]
struct Model {
    memory: BTreeMap<(String, String), MemoryEntry>,
    skills: BTreeMap<String, Vec<(SkillVersion, ChangeHash)>>,
    acknowledged: Vec<(DocId, ChangeHash)>,
}

impl Model {
    fn memory(&mut self, entry: MemoryEntry, hash: ChangeHash) {
        self.acknowledged
            .push((DocId::Memory(entry.scope.clone()), hash));
        let key = (entry.scope.to_string(), entry.key.clone());
        let newer = self.memory.get(&key).is_none_or(|held| {
            (entry.updated_at, entry.node_id.as_str()) > (held.updated_at, held.node_id.as_str())
        });
        if newer {
            self.memory.insert(key, entry);
        }
    }

    fn skill(&mut self, name: String, version: SkillVersion, hash: ChangeHash) {
        self.acknowledged.push((DocId::Skills, hash));
        self.skills.entry(name).or_default().push((version, hash));
    }

    fn live_memory(&self) -> Vec<MemoryEntry> {
        self.memory
            .values()
            .filter(|e| !e.deleted)
            .cloned()
            .collect()
    }
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let replicas: Vec<&Replica> = world
        .nodes
        .iter()
        .map(|n| n.replica.as_ref().unwrap())
        .collect();
    let first = replicas[0];
    for (i, replica) in replicas.iter().enumerate().skip(1) {
        prop_assert_eq!(
            replica.list_memory(None),
            first.list_memory(None),
            "memory of node {}",
            i
        );
        prop_assert_eq!(
            replica.list_skills(),
            first.list_skills(),
            "skills of node {}",
            i
        );
        for doc in first.doc_ids() {
            prop_assert_eq!(
                replica.document(&doc).map(|d| d.get_heads()),
                first.document(&doc).map(|d| d.get_heads()),
                "heads of {} on node {}",
                doc,
                i
            );
        }
    }
    prop_assert_eq!(
        first.list_memory(None),
        world.model.live_memory(),
        "memory against the model"
    );
    for (name, versions) in &world.model.skills {
        check_skill(first, name, versions)?;
    }
    for (i, replica) in replicas.iter().enumerate() {
        for (doc, hash) in &world.model.acknowledged {
            let held = replica
                .document(doc)
                .and_then(|d| d.get_change_by_hash(hash))
                .is_some();
            prop_assert!(
                held,
                "node {} lost acknowledged change {} of {}",
                i,
                hash,
                doc
            );
        }
    }
    Ok(())
}

/// The skill's version (`updated_at`, `source_node`, `deleted`) is the greatest acknowledged
/// one: tombstones win when newest. When every other write to the skill is in the winning
/// write's past, the content is exactly what that write made; writes made concurrently to one
/// skill object merge their text instead, so only its agreement across replicas is checked,
/// above.
fn check_skill(
    replica: &Replica,
    name: &str,
    versions: &[(SkillVersion, ChangeHash)],
) -> Result<(), TestCaseError> {
    let (expected, winner_hash) = versions
        .iter()
        .max_by(|(a, _), (b, _)| {
            (a.updated_at, a.source_node.as_str()).cmp(&(b.updated_at, b.source_node.as_str()))
        })
        .unwrap();
    let (winner, _) = replica
        .skill_versions(name)
        .expect("a written skill exists");
    prop_assert_eq!(
        (winner.updated_at, &winner.source_node, winner.deleted),
        (expected.updated_at, &expected.source_node, expected.deleted),
        "version of skill {}",
        name
    );
    let doc = replica.document(&DocId::Skills).unwrap();
    let after_winner: HashMap<ChangeHash, ()> = doc
        .get_changes_meta(&[*winner_hash])
        .into_iter()
        .map(|m| (m.hash, ()))
        .collect();
    let all_before = versions
        .iter()
        .all(|(_, hash)| hash == winner_hash || !after_winner.contains_key(hash));
    if all_before {
        prop_assert_eq!(&SkillVersion::of(&winner), expected, "skill {}", name);
    }
    Ok(())
}

/// A seeded network: per message, lose it, double it, hold it back, or let it overtake.
struct Wire {
    queue: VecDeque<(usize, Vec<u8>)>,
    held: Vec<(usize, Vec<u8>)>,
    net: Option<Net>,
    rng: u64,
}

impl Wire {
    fn new(net: Option<&Net>) -> Wire {
        Wire {
            queue: VecDeque::new(),
            held: Vec::new(),
            net: net.cloned(),
            rng: net.map_or(1, |n| n.seed | 1),
        }
    }

    fn roll(&mut self, pct: u64) -> bool {
        // xorshift64: deterministic from the case's seed, so failures replay.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100 < pct
    }

    fn send(&mut self, to: usize, message: Message) {
        let frame = message.encode();
        let Some(net) = self.net.clone() else {
            self.queue.push_back((to, frame));
            return;
        };
        if self.roll(net.drop_pct) {
            return;
        }
        if self.roll(net.dup_pct) {
            self.queue.push_back((to, frame.clone()));
        }
        if self.roll(net.delay_pct) {
            self.held.push((to, frame));
        } else {
            self.queue.push_back((to, frame));
        }
    }

    fn next(&mut self) -> Option<(usize, Vec<u8>)> {
        if self.queue.is_empty() && !self.held.is_empty() {
            // Delayed messages arrive once everything sent after them has.
            self.queue.extend(self.held.drain(..));
        }
        let reorder = self.net.as_ref().is_some_and(|n| n.reorder);
        if reorder && self.queue.len() > 1 {
            let pick = (self.rng as usize) % self.queue.len();
            self.roll(0);
            return self.queue.remove(pick);
        }
        self.queue.pop_front()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_to_the_conflict_rule((n, skews, ops) in scenario()) {
        let mut world = World::new(&skews);
        prop_assert_eq!(world.nodes.len(), n);
        for op in &ops {
            world.run(op);
        }
        world.final_round();
        check(&world)?;
    }
}
