//! The binary's allocator: jemalloc, tuned at start for a one-shot command and by
//! `for_long_running` for the daemon.

/// jemalloc instead of the system's malloc: under glibc the daemon's threads each took an
/// arena and kept what a large ingest freed (1 GB above idle after 100 000 keys, against
/// 475 MB with jemalloc), and Automerge's many small allocations run faster (docs/benchmarks.md,
/// Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Set for what a one-shot command wants, since jemalloc reads it before `main`: huge pages
/// where the kernel gives them on request, and freed pages kept for jemalloc's default decay.
/// On a million entries, opening the store builds sled's page table (about 100 MB of small
/// allocations), and a `meshd mem get` took 41 ms with huge pages against 58 ms without, and
/// 72 ms when freed pages went back at once (madvise calls while sled opened the store).
/// Four arenas are enough for the daemon's few busy threads and hold less idle memory than one
/// per core times four.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:4,thp:always\0";

/// What the operator can set instead, read by jemalloc at start.
const OPERATOR_CONF: &str = "_RJEM_MALLOC_CONF";

/// For a process that stays up (`meshd run`, `api serve`, `mcp`), where resident memory counts more
/// than a few milliseconds: no huge pages (they held 24 to 28 MB more in an idle daemon), and
/// freed pages go back to the system at once, from a background thread. Documents evicted
/// under the memory budget and loaded again free and take about a megabyte each, and a decay
/// of one second kept 40 to 70 MB of such pages resident under a stream of writes on a million
/// entries (docs/benchmarks.md, Scale, session 16). Left alone when the operator tuned
/// jemalloc through its environment.
pub fn for_long_running() {
    if std::env::var_os(OPERATOR_CONF).is_some() {
        tracing::info!("allocator settings taken from {OPERATOR_CONF}");
        return;
    }
    // SAFETY: a prctl that takes no pointer; it only changes how this process faults pages.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot turn huge pages off for this process; it may hold more memory");
    }
    if let Err(error) = return_freed_pages_at_once() {
        tracing::warn!(%error, "freed memory will go back to the system after jemalloc's default delay");
    }
}

fn return_freed_pages_at_once() -> tikv_jemalloc_ctl::Result<()> {
    use tikv_jemalloc_ctl::raw;
    // SAFETY: each name is a jemalloc setting of the type read or written (bool, unsigned,
    // ssize_t), and the names end with NUL as `raw` requires.
    unsafe {
        raw::write(b"background_thread\0", true)?;
        let arenas: u32 = raw::read(b"arenas.narenas\0")?;
        for decay in ["dirty_decay_ms", "muzzy_decay_ms"] {
            // The default of arenas made from now on, then each arena made so far (jemalloc
            // refuses to tune one not made yet).
            raw::write(format!("arenas.{decay}\0").as_bytes(), 0isize)?;
            for arena in 0..arenas {
                if raw::read(format!("arena.{arena}.initialized\0").as_bytes())? {
                    raw::write(format!("arena.{arena}.{decay}\0").as_bytes(), 0isize)?;
                }
            }
        }
    }
    Ok(())
}
