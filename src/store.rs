//! The embedded store: what Control Center must still see while the gateway is
//! down or the bridge restarts — agents, their recent runs, the last gateway
//! session. It is a cache of what the gateway reported, never the source of
//! truth: moving the file away loses history, nothing else.
//!
//! **File:** `state.dir`/[`DB_FILE`] (created 0600; SQLite gives its `-wal`
//! and `-shm` files the same mode). WAL journal, so readers never block the
//! writer nor the writer the readers; `synchronous=NORMAL`, which in WAL mode
//! survives a killed process (`kill -9`) with every committed transaction and
//! a power loss with a consistent database minus the last commits.
//!
//! **Schema:** versioned in code ([`MIGRATIONS`]); `PRAGMA user_version` is
//! the number applied. Each migration runs in one transaction together with
//! its version bump, so a crash mid-migration leaves the previous version.
//!
//! **Writes** come in batches ([`Store::apply`], one transaction each). The
//! registry hands them to [`StoreWriter`], which owns the `Store` on its own
//! thread so the event path never waits on disk.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

mod writer;
pub use writer::{StoreWriter, WriterStats, DEFAULT_MAX_PENDING};

/// The database file in the state directory.
pub const DB_FILE: &str = "bridge.db";
/// Runs kept per agent: the newest by first sighting; older ones are deleted
/// by the batch that adds a newer one.
pub const RUNS_KEPT_PER_AGENT: usize = 50;
/// How long a statement waits for a lock held by another connection (a
/// reader checkpointing, a second process) before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`.
/// Append only: never edit an entry once released.
pub const MIGRATIONS: &[&str] = &[
    // 1: agents, runs, session.
    "CREATE TABLE agents (
        id             TEXT PRIMARY KEY NOT NULL,
        name           TEXT,
        is_default     INTEGER NOT NULL DEFAULT 0,
        gateway        TEXT,
        status         TEXT NOT NULL,
        current_run_id TEXT,
        last_event_at  INTEGER,
        updated_at     INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE runs (
        run_id        TEXT PRIMARY KEY NOT NULL,
        agent_id      TEXT NOT NULL,
        status        TEXT NOT NULL,
        started_at    INTEGER,
        ended_at      INTEGER,
        last_event_at INTEGER,
        summary       TEXT
    ) STRICT;
    CREATE INDEX runs_by_agent ON runs(agent_id);
    CREATE TABLE session (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) STRICT;",
];

/// Why the store cannot be opened, read or written. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}; create it (mode 0700) for the user the bridge runs as, or set state.dir")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot create the store {path}: {source}; check that state.dir is writable by the bridge's user")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("cannot open the store {path}: {source}; check that state.dir is writable and on a local filesystem. The store is only a cache of the gateway's state: moving a damaged file away is safe")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the store {path} cannot use write-ahead logging (journal_mode stays {mode:?}); put state.dir on a local filesystem")]
    NoWal { path: PathBuf, mode: String },
    #[error("the store {path} has schema version {found}, newer than this bridge knows ({known}); run the newer openclaw-bridge, or move the file away to start empty")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("migrating the store {path} to schema version {version} failed: {source}; the file is left at the previous version. Move it away to start empty")]
    Migrate {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the store holds a value it cannot read ({0}); move the store file away: it is rebuilt from the gateway")]
    Corrupt(String),
    #[error("the store writer thread could not start: {0}")]
    Spawn(io::Error),
    #[error("the store writer did not finish its pending writes within {0:?}")]
    Timeout(Duration),
    #[error("the store writer has stopped")]
    WriterStopped,
}

impl StoreError {
    /// The file is damaged or not a database: moving it aside and starting
    /// empty is the fix (the store is a cache of the gateway's state).
    pub fn is_corrupt(&self) -> bool {
        let sqlite_corrupt = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
        };
        match self {
            StoreError::Corrupt(_) => true,
            StoreError::Open { source, .. } | StoreError::Migrate { source, .. } => {
                sqlite_corrupt(source)
            }
            StoreError::Sql(e) => sqlite_corrupt(e),
            _ => false,
        }
    }
}

/// Move a damaged store file (and its `-wal`/`-shm`) aside as
/// `bridge.db.corrupt-<unix ms>`, for a post-mortem; the new name.
pub fn move_aside(dir: &Path) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let to = dir.join(format!("{DB_FILE}.corrupt-{stamp}"));
    fs::rename(dir.join(DB_FILE), &to)?;
    for ext in ["-wal", "-shm"] {
        let from = dir.join(format!("{DB_FILE}{ext}"));
        if from.exists() {
            fs::rename(&from, dir.join(format!("{DB_FILE}.corrupt-{stamp}{ext}")))?;
        }
    }
    Ok(to)
}

/// One agent as last seen. Statuses are the registry's lower-case names.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAgent {
    pub id: String,
    pub name: Option<String>,
    pub is_default: bool,
    /// The gateway's `agents.list` row as sent; `Null` when not listed.
    pub gateway: Value,
    /// `idle` or `running`.
    pub status: String,
    pub current_run_id: Option<String>,
    /// Epoch ms of the last event about this agent.
    pub last_event_at: Option<u64>,
    /// Epoch ms this row was written (set by the caller).
    pub updated_at: u64,
}

/// One run. Statuses are the registry's lower-case names.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub run_id: String,
    pub agent_id: String,
    /// `running`, `ok`, `error` or `aborted`.
    pub status: String,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub last_event_at: Option<u64>,
    /// A short summary for display (the final text, an error message).
    pub summary: Option<String>,
}

/// The last gateway session (from hello-ok).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionInfo {
    pub url: String,
    pub server_version: String,
    pub conn_id: Option<String>,
    pub boot_id: Option<String>,
    /// Epoch ms the session started.
    pub connected_since: Option<u64>,
}

/// One change in a batch. Upserts replace the whole row.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    UpsertAgent(StoredAgent),
    /// `agents.list` is authoritative: every other agent goes, with its runs.
    RemoveAgentsExcept {
        ids: Vec<String>,
    },
    UpsertRun(StoredRun),
    /// Replaces the stored session entirely.
    SetSession(SessionInfo),
}

/// The open database. One connection; not `Sync` — give it to a
/// [`StoreWriter`], and open a second `Store` for reads elsewhere.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const UPSERT_AGENT: &str = "INSERT INTO agents
    (id, name, is_default, gateway, status, current_run_id, last_event_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT(id) DO UPDATE SET name = excluded.name, is_default = excluded.is_default,
      gateway = excluded.gateway, status = excluded.status,
      current_run_id = excluded.current_run_id, last_event_at = excluded.last_event_at,
      updated_at = excluded.updated_at";
// ON CONFLICT keeps the rowid, which orders runs by first sighting.
const UPSERT_RUN: &str = "INSERT INTO runs
    (run_id, agent_id, status, started_at, ended_at, last_event_at, summary)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT(run_id) DO UPDATE SET agent_id = excluded.agent_id, status = excluded.status,
      started_at = excluded.started_at, ended_at = excluded.ended_at,
      last_event_at = excluded.last_event_at, summary = excluded.summary";
const PRUNE_RUNS: &str = "DELETE FROM runs WHERE agent_id = ?1 AND rowid NOT IN
    (SELECT rowid FROM runs WHERE agent_id = ?1 ORDER BY rowid DESC LIMIT ?2)";

impl Store {
    /// Open (or create) `dir`/[`DB_FILE`], creating `dir` (0700) if missing,
    /// and bring the schema up to date. An empty file is a new database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(DB_FILE);
        // Create it ourselves so it (and the WAL SQLite derives from it) is 0600.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(StoreError::CreateFile { path, source }),
        }
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Changing the journal mode takes an exclusive lock: only when needed,
        // so opening beside a busy writer works.
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(open_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::NoWal { path, mode });
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Bound the WAL file left after a checkpoint.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(open_err)?;
        let mut store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as u32;
        let open_err = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        // Read first: an up-to-date file needs no write lock.
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if found == known {
            return Ok(());
        }
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        // Re-read under the lock: another process may have migrated meanwhile.
        let found: u32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        if found > known {
            return Err(StoreError::TooNew { path, found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as u32 + 1;
            let err = |source| StoreError::Migrate {
                path: path.clone(),
                version,
                source,
            };
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
        }
        tx.commit().map_err(|source| StoreError::Migrate {
            path: path.clone(),
            version: known,
            source,
        })
    }

    /// Apply a batch in one transaction: all of it or none of it. Then keep
    /// the newest [`RUNS_KEPT_PER_AGENT`] runs of each agent it touched.
    pub fn apply(&mut self, batch: &[Change]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut touched: BTreeSet<&str> = BTreeSet::new();
            for change in batch {
                match change {
                    Change::UpsertAgent(a) => {
                        let gateway = match &a.gateway {
                            Value::Null => None,
                            v => Some(v.to_string()),
                        };
                        tx.prepare_cached(UPSERT_AGENT)?.execute(params![
                            a.id,
                            a.name,
                            a.is_default,
                            gateway,
                            a.status,
                            a.current_run_id,
                            a.last_event_at,
                            a.updated_at,
                        ])?;
                    }
                    Change::RemoveAgentsExcept { ids } => {
                        let keep = serde_json::to_string(ids)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        tx.execute(
                            "DELETE FROM agents WHERE id NOT IN (SELECT value FROM json_each(?1))",
                            [&keep],
                        )?;
                        tx.execute(
                            "DELETE FROM runs WHERE agent_id NOT IN (SELECT value FROM json_each(?1))",
                            [&keep],
                        )?;
                    }
                    Change::UpsertRun(r) => {
                        tx.prepare_cached(UPSERT_RUN)?.execute(params![
                            r.run_id,
                            r.agent_id,
                            r.status,
                            r.started_at,
                            r.ended_at,
                            r.last_event_at,
                            r.summary,
                        ])?;
                        touched.insert(&r.agent_id);
                    }
                    Change::SetSession(s) => {
                        tx.execute("DELETE FROM session", [])?;
                        let mut put =
                            tx.prepare_cached("INSERT INTO session (key, value) VALUES (?1, ?2)")?;
                        put.execute(["url", &s.url])?;
                        put.execute(["server_version", &s.server_version])?;
                        if let Some(v) = &s.conn_id {
                            put.execute(["conn_id", v])?;
                        }
                        if let Some(v) = &s.boot_id {
                            put.execute(["boot_id", v])?;
                        }
                        if let Some(v) = s.connected_since {
                            put.execute(["connected_since", &v.to_string()])?;
                        }
                    }
                }
            }
            let mut prune = tx.prepare_cached(PRUNE_RUNS)?;
            for agent in touched {
                prune.execute(params![agent, RUNS_KEPT_PER_AGENT])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored agent, by id.
    pub fn load_agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, name, is_default, gateway, status, current_run_id, last_event_at, updated_at
             FROM agents ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                StoredAgent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    is_default: r.get(2)?,
                    gateway: Value::Null,
                    status: r.get(4)?,
                    current_run_id: r.get(5)?,
                    last_event_at: r.get(6)?,
                    updated_at: r.get(7)?,
                },
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut agent, gateway) = row?;
            if let Some(text) = gateway {
                agent.gateway = serde_json::from_str(&text).map_err(|e| {
                    StoreError::Corrupt(format!("agents.gateway of {:?}: {e}", agent.id))
                })?;
            }
            out.push(agent);
        }
        Ok(out)
    }

    /// The newest `limit` runs of an agent, newest (most recently first seen)
    /// first.
    pub fn load_runs(&self, agent_id: &str, limit: usize) -> Result<Vec<StoredRun>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT run_id, agent_id, status, started_at, ended_at, last_event_at, summary
             FROM runs WHERE agent_id = ?1 ORDER BY rowid DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![agent_id, limit], |r| {
            Ok(StoredRun {
                run_id: r.get(0)?,
                agent_id: r.get(1)?,
                status: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                last_event_at: r.get(5)?,
                summary: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last gateway session, if one was ever stored.
    pub fn load_session(&self) -> Result<Option<SessionInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT key, value FROM session")?;
        let mut kv: HashMap<String, String> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(url) = kv.remove("url") else {
            return Ok(None);
        };
        let connected_since =
            match kv.remove("connected_since") {
                None => None,
                Some(v) => Some(v.parse::<u64>().map_err(|e| {
                    StoreError::Corrupt(format!("session.connected_since {v:?}: {e}"))
                })?),
            };
        Ok(Some(SessionInfo {
            url,
            server_version: kv.remove("server_version").unwrap_or_default(),
            conn_id: kv.remove("conn_id"),
            boot_id: kv.remove("boot_id"),
            connected_since,
        }))
    }

    /// `PRAGMA quick_check`: `Ok` when the database is sound.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        let verdict: Option<String> = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .optional()?;
        match verdict.as_deref() {
            Some("ok") => Ok(()),
            other => Err(StoreError::Corrupt(format!(
                "quick_check: {}",
                other.unwrap_or("no answer")
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
