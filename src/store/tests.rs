use super::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn agent(id: &str, t: u64) -> StoredAgent {
    StoredAgent {
        id: id.into(),
        name: Some(format!("Agent {id}")),
        is_default: id == "main",
        gateway: json!({"id": id, "name": format!("Agent {id}"), "model": {"primary": "m"}}),
        status: "idle".into(),
        current_run_id: None,
        last_event_at: Some(t),
        updated_at: t,
    }
}

fn run(id: &str, agent: &str, status: &str, t: u64) -> StoredRun {
    StoredRun {
        run_id: id.into(),
        agent_id: agent.into(),
        status: status.into(),
        started_at: Some(t),
        ended_at: (status != "running").then_some(t + 5),
        last_event_at: Some(t + 5),
        summary: (status == "error").then(|| "model failed".to_string()),
    }
}

fn session() -> SessionInfo {
    SessionInfo {
        url: "wss://gw.example:18789/".into(),
        server_version: "2026.9.6".into(),
        conn_id: Some("4701281d".into()),
        boot_id: Some("6d6455ab".into()),
        connected_since: Some(1_795_577_919_329),
    }
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    assert!(s.load_agents().unwrap().is_empty());
    assert_eq!(s.load_session().unwrap(), None);
    let mut running = agent("main", 10);
    running.status = "running".into();
    running.current_run_id = Some("r2".into());
    let mut unlisted = agent("ops", 11);
    unlisted.gateway = Value::Null;
    unlisted.name = None;
    s.apply(&[
        Change::UpsertAgent(running.clone()),
        Change::UpsertAgent(unlisted.clone()),
        Change::UpsertRun(run("r1", "main", "error", 1)),
        Change::UpsertRun(run("r2", "main", "running", 2)),
        Change::SetSession(session()),
    ])
    .unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![running.clone(), unlisted]);
    assert_eq!(
        s.load_runs("main", 10).unwrap(),
        vec![
            run("r2", "main", "running", 2),
            run("r1", "main", "error", 1)
        ]
    );
    assert_eq!(s.load_runs("main", 1).unwrap().len(), 1);
    assert_eq!(s.load_session().unwrap(), Some(session()));

    // Upserts replace whole rows; a run keeps its place; the session is replaced.
    s.apply(&[
        Change::UpsertRun(run("r2", "main", "ok", 2)),
        Change::SetSession(SessionInfo {
            conn_id: None,
            connected_since: None,
            ..session()
        }),
    ])
    .unwrap();
    let runs = s.load_runs("main", 10).unwrap();
    assert_eq!(runs[0], run("r2", "main", "ok", 2));
    let sess = s.load_session().unwrap().unwrap();
    assert_eq!(sess.conn_id, None);
    assert_eq!(sess.connected_since, None);
    assert_eq!(sess.boot_id.as_deref(), Some("6d6455ab"));

    // agents.list is authoritative: others go, with their runs.
    s.apply(&[
        Change::UpsertRun(run("x1", "ops", "ok", 3)),
        Change::RemoveAgentsExcept {
            ids: vec!["main".into()],
        },
    ])
    .unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![running]);
    assert!(s.load_runs("ops", 10).unwrap().is_empty());
    assert_eq!(s.load_runs("main", 10).unwrap().len(), 2);
    s.apply(&[Change::RemoveAgentsExcept { ids: vec![] }])
        .unwrap();
    assert!(s.load_agents().unwrap().is_empty());
    assert!(s.load_runs("main", 10).unwrap().is_empty());

    // Survives reopening.
    s.apply(&[Change::UpsertAgent(agent("b", 1))]).unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![agent("b", 1)]);
    s.quick_check().unwrap();
}

#[test]
fn a_failing_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    s.apply(&[Change::UpsertAgent(agent("a", 1))]).unwrap();
    let mut bad = run("r", "a", "ok", 1);
    bad.started_at = Some(u64::MAX); // does not fit SQLite's i64
    let err = s
        .apply(&[Change::UpsertAgent(agent("b", 2)), Change::UpsertRun(bad)])
        .unwrap_err();
    assert!(matches!(err, StoreError::Sql(_)), "{err}");
    assert_eq!(s.load_agents().unwrap(), vec![agent("a", 1)]);
}

#[test]
fn runs_are_bounded_per_agent_newest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    for i in 0..(RUNS_KEPT_PER_AGENT + 20) {
        s.apply(&[Change::UpsertRun(run(
            &format!("r{i}"),
            "a",
            "ok",
            i as u64,
        ))])
        .unwrap();
    }
    let batch: Vec<_> = (0..5)
        .map(|i| Change::UpsertRun(run(&format!("b{i}"), "b", "ok", i)))
        .collect();
    s.apply(&batch).unwrap();
    let runs = s.load_runs("a", 1000).unwrap();
    assert_eq!(runs.len(), RUNS_KEPT_PER_AGENT);
    assert_eq!(runs[0].run_id, format!("r{}", RUNS_KEPT_PER_AGENT + 19));
    assert_eq!(runs.last().unwrap().run_id, "r20");
    assert_eq!(s.load_runs("b", 1000).unwrap().len(), 5);
    // Updating an old run does not make it newer.
    s.apply(&[Change::UpsertRun(run("r20", "a", "error", 20))])
        .unwrap();
    assert_eq!(
        s.load_runs("a", 1000).unwrap().last().unwrap().run_id,
        "r20"
    );
}

#[test]
fn migration_from_an_empty_file_and_reopen_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, b"").unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
    let mode: String = s
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = s
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "NORMAL");
    s.apply(&[Change::UpsertAgent(agent("a", 1))]).unwrap();
    drop(s);
    for _ in 0..2 {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(s.load_agents().unwrap().len(), 1);
    }
    // A brand-new directory: created 0700, file 0600.
    let fresh = dir.path().join("new").join("state");
    let s = Store::open(&fresh).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(s.path()), 0o600);
    assert_eq!(mode(&fresh.join(format!("{DB_FILE}-wal"))), 0o600);
}

#[test]
fn a_newer_schema_or_a_foreign_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.conn
        .pragma_update(None, "user_version", MIGRATIONS.len() as u32 + 1)
        .unwrap();
    drop(s);
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("move the file away"));

    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join(DB_FILE),
        b"this is not a database, it is a text file that is long enough",
    )
    .unwrap();
    let err = Store::open(other.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(DB_FILE) && msg.contains("moving a damaged file away is safe"),
        "{msg}"
    );
}

#[test]
fn a_half_applied_migration_rolls_back() {
    // Simulate a crash inside migration 1: the version stays 0 and a reopen
    // migrates cleanly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        let mut c = Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        drop(tx); // rolled back
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().unwrap(), 1);
    assert!(s.load_agents().unwrap().is_empty());
}

#[test]
fn open_beside_an_uncommitted_writer_then_drop_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Store::open(dir.path()).unwrap();
    first
        .apply(&[
            Change::UpsertAgent(agent("a", 1)),
            Change::UpsertRun(run("r1", "a", "ok", 1)),
        ])
        .unwrap();
    // The first connection now holds the write lock with uncommitted rows.
    first
        .conn
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO agents (id, status, updated_at) VALUES ('ghost', 'idle', 0);
             DELETE FROM runs;",
        )
        .unwrap();
    assert!(dir.path().join(format!("{DB_FILE}-wal")).exists());
    let second = Store::open(dir.path()).unwrap();
    assert_eq!(second.load_agents().unwrap(), vec![agent("a", 1)]);
    assert_eq!(second.load_runs("a", 10).unwrap().len(), 1);
    drop(first); // closes with the transaction open: rolled back
    let third = Store::open(dir.path()).unwrap();
    for s in [&second, &third] {
        assert_eq!(s.load_agents().unwrap(), vec![agent("a", 1)]);
        assert_eq!(s.load_runs("a", 10).unwrap().len(), 1);
        s.quick_check().unwrap();
    }
}

#[test]
fn files_as_a_killed_process_leaves_them_open_with_committed_data_only() {
    // A copy of the db and its WAL, taken while a writer has committed some
    // batches and has a large uncommitted one in flight (spilled into the
    // WAL), is what `kill -9` leaves on disk.
    let dir = tempfile::tempdir().unwrap();
    let mut live = Store::open(dir.path()).unwrap();
    for i in 0..20 {
        live.apply(&[
            Change::UpsertAgent(agent(&format!("a{i}"), i)),
            Change::UpsertRun(run(&format!("r{i}"), &format!("a{i}"), "ok", i)),
        ])
        .unwrap();
    }
    live.conn
        .execute_batch("PRAGMA cache_size = 2; BEGIN IMMEDIATE;")
        .unwrap();
    for i in 0..2000 {
        live.conn
            .execute(
                "INSERT INTO runs (run_id, agent_id, status, summary) VALUES (?1, 'ghost', 'running', ?2)",
                params![format!("g{i}"), "x".repeat(200)],
            )
            .unwrap();
    }
    let crashed = tempfile::tempdir().unwrap();
    for name in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
        std::fs::copy(dir.path().join(&name), crashed.path().join(&name)).unwrap();
    }
    let wal = std::fs::metadata(crashed.path().join(format!("{DB_FILE}-wal"))).unwrap();
    assert!(wal.len() > 100_000, "the uncommitted batch reached the WAL");
    let s = Store::open(crashed.path()).unwrap();
    s.quick_check().unwrap();
    assert_eq!(s.load_agents().unwrap().len(), 20);
    assert_eq!(s.load_runs("a19", 10).unwrap().len(), 1);
    assert!(s.load_runs("ghost", 10).unwrap().is_empty());
    drop(live);
}

#[test]
fn reads_never_fail_while_a_writer_thread_writes() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    let reader = Store::open(dir.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut last) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) || reads < 50 {
                let agents = reader.load_agents().expect("read during writes");
                if let Some(a) = agents.iter().find(|a| a.id == "main") {
                    let t = a.updated_at;
                    assert!(t >= last, "went back from {last} to {t}");
                    last = t;
                }
                let runs = reader.load_runs("main", 100).expect("read during writes");
                assert!(runs.len() <= RUNS_KEPT_PER_AGENT);
                reader.load_session().expect("read during writes");
                reads += 1;
            }
            (reads, last)
        })
    };
    for i in 1..=400u64 {
        let mut s = session();
        s.connected_since = Some(i);
        assert!(writer.submit(vec![
            Change::UpsertAgent(agent("main", i)),
            Change::UpsertRun(run(&format!("r{i}"), "main", "ok", i)),
            Change::SetSession(s),
        ]));
        if i % 50 == 0 {
            writer.flush(Duration::from_secs(10)).unwrap();
        }
    }
    let stats = writer.close(Duration::from_secs(10)).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (reads, last) = reading.join().unwrap();
    assert!(reads >= 50);
    assert!(last <= 400);
    assert_eq!(stats.write_failures, 0);
    assert_eq!(stats.changes_dropped, 0);
    assert_eq!(stats.changes_written + stats.changes_coalesced, 1200);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![agent("main", 400)]);
    let runs = s.load_runs("main", 1000).unwrap();
    assert_eq!(runs.len(), RUNS_KEPT_PER_AGENT);
    assert_eq!(runs[0].run_id, "r400");
    assert_eq!(
        s.load_session().unwrap().unwrap().connected_since,
        Some(400)
    );
}

/// Holds the database's write lock from another connection for `hold`.
fn block_writes(dir: &Path, hold: Duration) -> std::thread::JoinHandle<()> {
    let blocker = Store::open(dir).unwrap();
    blocker.conn.execute_batch("BEGIN IMMEDIATE;").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        blocker.conn.execute_batch("COMMIT;").unwrap();
    })
}

#[test]
fn submit_never_waits_on_a_stuck_disk_and_coalesces_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    let unblock = block_writes(dir.path(), Duration::from_millis(600));
    let mut slowest = Duration::ZERO;
    for i in 1..=2000u64 {
        let t0 = Instant::now();
        assert!(writer.submit(vec![
            Change::UpsertAgent(agent("main", i)),
            Change::UpsertRun(run(&format!("r{}", i % 10), "main", "running", i)),
        ]));
        slowest = slowest.max(t0.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(250),
        "submit waited {slowest:?}"
    );
    // The writer is stuck on the lock: the pending list holds one change per row.
    assert!(writer.pending() <= 2 + 10 + 2, "{}", writer.pending());
    unblock.join().unwrap();
    writer.flush(Duration::from_secs(10)).unwrap();
    let stats = writer.stats();
    assert_eq!(stats.write_failures, 0, "{:?}", stats.last_error);
    assert!(stats.changes_coalesced > 3000, "{stats:?}");
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![agent("main", 2000)]);
    assert_eq!(s.load_runs("main", 100).unwrap().len(), 10);
    writer.close(Duration::from_secs(10)).unwrap();
}

#[test]
fn over_the_cap_whole_batches_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn_with_limit(Store::open(dir.path()).unwrap(), 5).unwrap();
    let unblock = block_writes(dir.path(), Duration::from_millis(400));
    // The first batch may already be in the stuck transaction; then fill up.
    assert!(writer.submit(vec![Change::UpsertAgent(agent("first", 1))]));
    std::thread::sleep(Duration::from_millis(50));
    let mut accepted = 0;
    for i in 0..20 {
        if writer.submit(vec![Change::UpsertRun(run(&format!("n{i}"), "a", "ok", i))]) {
            accepted += 1;
        }
    }
    // 5 once the writer has taken the first batch (it has, after 50 ms).
    assert!((4..=5).contains(&accepted), "{accepted}");
    assert_eq!(writer.stats().changes_dropped, 20 - accepted);
    unblock.join().unwrap();
    let stats = writer.close(Duration::from_secs(10)).unwrap();
    assert_eq!(stats.write_failures, 0);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.load_runs("a", 100).unwrap().len() as u64, accepted);
}

#[test]
fn a_failed_write_is_counted_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    let mut bad = run("r", "a", "ok", 1);
    bad.ended_at = Some(u64::MAX);
    for _ in 0..3 {
        assert!(writer.submit(vec![Change::UpsertRun(bad.clone())]));
        writer.flush(Duration::from_secs(10)).unwrap();
    }
    assert!(writer.stats().failing);
    assert!(writer.submit(vec![Change::UpsertAgent(agent("a", 1))]));
    let stats = writer.close(Duration::from_secs(10)).unwrap();
    assert!(!stats.failing, "a good write ends the failing state");
    assert_eq!(stats.write_failures, 3);
    assert!(stats.last_error.is_some());
    assert_eq!(stats.transactions, 1);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.load_agents().unwrap(), vec![agent("a", 1)]);
}

#[test]
fn close_writes_everything_pending_and_drop_does_too() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    for i in 0..100 {
        writer.submit(vec![Change::UpsertAgent(agent(&format!("a{i:03}"), i))]);
    }
    writer.close(Duration::from_secs(10)).unwrap();
    assert_eq!(
        Store::open(dir.path())
            .unwrap()
            .load_agents()
            .unwrap()
            .len(),
        100
    );

    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    writer.submit(vec![Change::RemoveAgentsExcept { ids: vec![] }]);
    writer.flush(Duration::from_secs(10)).unwrap();
    drop(writer);
    // The detached thread finishes; poll for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = Store::open(dir.path()).unwrap();
    while !s.load_agents().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn close_times_out_on_a_stuck_disk_without_blocking_forever() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap()).unwrap();
    let unblock = block_writes(dir.path(), Duration::from_millis(800));
    writer.submit(vec![Change::UpsertAgent(agent("a", 1))]);
    let t0 = Instant::now();
    let err = writer.flush(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, StoreError::Timeout(_)));
    assert!(t0.elapsed() < Duration::from_millis(500));
    let err = writer.close(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, StoreError::Timeout(_)));
    unblock.join().unwrap();
}
