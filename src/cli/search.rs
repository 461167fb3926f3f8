//! `meshd search`: find memory and skills by their words (and meaning, with an embedding
//! endpoint).

use clap::{Args, ValueEnum};
use meshd::config::Home;
use meshd::control::Search;
use meshd::search::{ItemKind, Mode, Target};

use super::execute;

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in plain words (e.g. "dark mode preference")
    query: String,
    /// Only memory of this scope: mesh, node, user:<id>, node:<id>, or user:* for every user
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    /// Search skills (name, description, content) instead of memory
    #[arg(long, conflicts_with = "scope")]
    skills: bool,
    /// Search memory and skills together
    #[arg(long, conflicts_with_all = ["scope", "skills"])]
    all: bool,
    /// At most this many results (1 to 100)
    #[arg(long, default_value_t = 10, value_name = "N")]
    limit: usize,
    /// How to rank [default: hybrid with an embedding endpoint, else fts]
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Print the results as JSON: {mode, hits: [{kind, scope, key, snippet, score}]}
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// BM25 over the words
    Fts,
    /// Similarity of embeddings (needs MESH_EMBEDDING_URL or [search] embedding_url)
    Semantic,
    /// Both, fused by reciprocal rank
    Hybrid,
}

pub fn run(home: &Home, args: SearchArgs) -> anyhow::Result<()> {
    let target = match (args.skills, args.all) {
        (true, _) => Target::Skills,
        (_, true) => Target::All,
        _ => Target::Memory,
    };
    let mode = args.mode.map(|mode| match mode {
        ModeArg::Fts => Mode::Fts,
        ModeArg::Semantic => Mode::Semantic,
        ModeArg::Hybrid => Mode::Hybrid,
    });
    let search = Search {
        query: args.query,
        scope: args.scope,
        target,
        limit: Some(args.limit),
        mode,
    };
    let results = execute(home, search)?;
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    if results.hits.is_empty() {
        eprintln!("nothing found");
    }
    for hit in &results.hits {
        let place = match (hit.kind, &hit.scope) {
            (ItemKind::Skill, _) => format!("skill {}", hit.key),
            (ItemKind::Memory, Some(scope)) => format!("{scope}\t{}", hit.key),
            (ItemKind::Memory, None) => hit.key.clone(),
        };
        println!("{place}\t{}", hit.snippet);
    }
    if results.not_embedded > 0 {
        eprintln!(
            "{} entries are not embedded yet and are missing from the semantic ranking",
            results.not_embedded
        );
    }
    Ok(())
}
