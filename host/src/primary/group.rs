//! Group commit of the primary's writes.
//!
//! A durable write pays for syncs: its journal, the folders its blob lands
//! in, its commit. Writes that arrive together share them. A writer queues
//! its prepared write (rows still to write, blob in a temporary object) and
//! waits for the group lock; whoever takes it leads a group of every write
//! queued by then (at most [`GROUP_MAX`]):
//!
//! 1. one transaction; each write's rows in a savepoint of their own, so
//!    that a write refused there (a missing project, a conflict, a bad
//!    value) fails alone and the others go on;
//! 2. the writes' events logged, a multi-row statement per type and kind;
//!    every write's journal and previous content kept, durably, together
//!    (`journal::PendingWrite::begin_all`);
//! 3. every blob moved into place, the folders synced together;
//! 4. one commit; then the journals removed and moved-away blobs deleted.
//!
//! A write alone is a group of one: nobody waits for a group to fill.
//! Two writes of one record or one blob path never share a group (the
//! later one goes into the next), so that each keeps its own journal and
//! its own order. A failure of steps 2 to 4 is every write's of the group
//! ([`IngestError::Group`]): they are undone as a write alone is.
//!
//! Groups are led from a task of their own: a writer that goes away (a
//! client that disconnects) cuts short neither its queued write nor the
//! others' of a group it leads.

use super::events;
use super::ingest::{IngestError, Staged, StagedWrite, WriteOutcome, journal_error, stage};
use super::journal::PendingWrite;
use crate::catalog::InstalledType;
use crate::db::Db;
use crate::plugin::{BlobPath, Value};
use crate::site::{EventSignal, Site};
use crate::storage::{BlobStore, FinishedTemp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Most writes in one group: enough to share the syncs of a burst, few
/// enough that the group's transaction stays short.
pub const GROUP_MAX: usize = 128;

/// A write ready for its group: the type's live version, its columns and
/// its blob in a temporary object (on stable storage).
pub struct Write {
    /// Held until the write is answered: a hot swap does not move the
    /// type's blobs under it (`Catalog::writing`).
    pub writing: tokio::sync::OwnedRwLockReadGuard<()>,
    pub it: Arc<InstalledType>,
    pub writer: HashMap<String, Value>,
    pub derived: HashMap<String, Value>,
    pub temp: FinishedTemp,
}

/// Where a write's outcome goes.
type Answer = oneshot::Sender<Result<WriteOutcome, IngestError>>;

/// A staged write on its way to the commit: its type, rows, blob, answer,
/// and its hold on the type's version.
type Done = (
    Arc<InstalledType>,
    StagedWrite,
    crate::storage::Written,
    Answer,
    tokio::sync::OwnedRwLockReadGuard<()>,
);

struct Queued {
    write: Write,
    done: Answer,
}

/// The queue and the lock of a site's group commit (in `Site::write_group`).
#[derive(Default)]
pub struct WriteGroup {
    queue: Mutex<VecDeque<Queued>>,
    leader: tokio::sync::Mutex<()>,
    /// The writes' tasks, for a test to stop them as a crash would.
    #[cfg(test)]
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// What a group needs of the site, owned, for its own task.
struct Context {
    db: Db,
    blobs: BlobStore,
    events: EventSignal,
    file_store: i64,
}

/// Writes `write` in a group with whatever other writes wait, and answers
/// when its group committed or failed.
pub async fn submit(site: &Site, write: Write) -> Result<WriteOutcome, IngestError> {
    let group = site.write_group.get_or_default::<WriteGroup>();
    let context = Context {
        db: site.db.clone(),
        blobs: site.blobs.clone(),
        events: site.events.clone(),
        file_store: site.file_store(),
    };
    let (done, answer) = oneshot::channel();
    group.queue().push_back(Queued { write, done });
    // In a task of its own: a queued write is written even if its writer
    // goes away, and so are the writes of a group it leads.
    let task = tokio::spawn(lead_until_answered(group.clone(), context, answer));
    #[cfg(test)]
    group.tasks.lock().unwrap().push(task.abort_handle());
    task.await.unwrap_or_else(|_| Err(IngestError::Interrupted))
}

/// Waits for `answer`; leads a group whenever the lock is free and the
/// answer has not come yet.
async fn lead_until_answered(
    group: Arc<WriteGroup>,
    context: Context,
    mut answer: oneshot::Receiver<Result<WriteOutcome, IngestError>>,
) -> Result<WriteOutcome, IngestError> {
    loop {
        // The answer as soon as a group sends it; the lock, to lead one,
        // only while it has not come.
        let _lead = tokio::select! {
            biased;
            outcome = &mut answer => return outcome.unwrap_or_else(|_| Err(IngestError::Interrupted)),
            lead = group.leader.lock() => lead,
        };
        match answer.try_recv() {
            Ok(outcome) => return outcome,
            Err(oneshot::error::TryRecvError::Closed) => return Err(IngestError::Interrupted),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let writes: Vec<Queued> = {
            let mut queue = group.queue();
            let take = queue.len().min(GROUP_MAX);
            queue.drain(..take).collect()
        };
        let later = run(&context, writes).await;
        let mut queue = group.queue();
        for write in later.into_iter().rev() {
            queue.push_front(write);
        }
    }
}

impl WriteGroup {
    /// Stops every write in progress where it is, as the process dying
    /// would (a test's crash).
    #[cfg(test)]
    pub fn abort_all(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A staged write and what it still needs.
struct Ready {
    queued: Queued,
    staged: StagedWrite,
}

/// Runs one group; returns the writes put off to the next one.
async fn run(context: &Context, writes: Vec<Queued>) -> Vec<Queued> {
    let mut tx = match context.db.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            fail_all(writes.into_iter().map(|q| q.done), error.into());
            return Vec::new();
        }
    };
    let mut later = Vec::new();
    let mut ready: Vec<Ready> = Vec::with_capacity(writes.len());
    let mut ids: HashSet<(String, i64)> = HashSet::new();
    let mut paths: HashSet<(String, BlobPath)> = HashSet::new();
    let mut writes = writes.into_iter();
    while let Some(queued) = writes.next() {
        if let Err(error) = tx.execute("SAVEPOINT geohost_write", &[]).await {
            let rest = ready.into_iter().map(|r| r.queued);
            let all: Vec<Queued> = rest.chain([queued]).chain(writes).collect();
            fail_all(all.into_iter().map(|q| q.done), error.into());
            return later;
        }
        let name = queued.write.it.name().to_string();
        let taken = |id: Option<i64>, path: Option<&BlobPath>| {
            id.is_some_and(|id| ids.contains(&(name.clone(), id)))
                || path.is_some_and(|path| paths.contains(&(name.clone(), path.clone())))
        };
        let write = &queued.write;
        let staged = stage(
            &mut tx,
            &write.it,
            &write.writer,
            &write.derived,
            &write.temp.written(),
            context.file_store,
            taken,
        )
        .await;
        let end = match &staged {
            Ok(Staged::Ready(_)) => "RELEASE SAVEPOINT geohost_write",
            _ => "ROLLBACK TO SAVEPOINT geohost_write",
        };
        if let Err(error) = tx.execute(end, &[]).await {
            let rest = ready.into_iter().map(|r| r.queued);
            let all: Vec<Queued> = rest.chain([queued]).chain(writes).collect();
            fail_all(all.into_iter().map(|q| q.done), error.into());
            return later;
        }
        match staged {
            Ok(Staged::Ready(staged)) => {
                ids.insert((name.clone(), staged.id));
                paths.insert((name.clone(), staged.path.clone()));
                if let Some(old) = &staged.old_path {
                    paths.insert((name, old.clone()));
                }
                ready.push(Ready { queued, staged });
            }
            Ok(Staged::Later) => later.push(queued),
            Err(error) => {
                let _ = queued.done.send(Err(error));
            }
        }
    }
    if ready.is_empty() {
        if let Err(error) = tx.rollback().await {
            tracing::warn!(%error, "cannot end an empty write group");
        }
        return later;
    }
    commit(context, tx, ready).await;
    later
}

/// Steps 2 to 4 of the module docs for the staged writes of a group.
async fn commit(context: &Context, mut tx: crate::db::Tx, ready: Vec<Ready>) {
    let mut temps = Vec::with_capacity(ready.len());
    let mut done: Vec<Done> = Vec::with_capacity(ready.len());
    for Ready { queued, staged } in ready {
        let Queued {
            write,
            done: answer,
        } = queued;
        let written = write.temp.written();
        temps.push(write.temp);
        done.push((write.it, staged, written, answer, write.writing));
    }
    let published = match publish(&mut tx, &done).await {
        Ok(published) => published,
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "cannot roll back a failed write group");
            }
            fail_all(done.into_iter().map(|d| d.3), error.into());
            return;
        }
    };
    let journaled: Vec<(&str, &BlobPath, &str)> = done
        .iter()
        .map(|(it, staged, written, ..)| (it.name(), &staged.path, written.sha256.as_str()))
        .collect();
    let pending = match PendingWrite::begin_all(&mut tx, &context.blobs, &journaled).await {
        Ok(pending) => pending,
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "cannot roll back a failed write group");
            }
            fail_all(done.into_iter().map(|d| d.3), journal_error(error));
            return;
        }
    };
    // The blobs into place, then the commit that points at them.
    let promotions = temps
        .into_iter()
        .zip(&done)
        .map(|(temp, (it, staged, ..))| (temp, it.name(), &staged.path))
        .collect();
    let placed = FinishedTemp::promote_all(promotions).await;
    let committed = match placed {
        Ok(()) => tx.commit().await.map_err(IngestError::from),
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "cannot roll back a failed write group");
            }
            Err(error.into())
        }
    };
    if let Err(error) = committed {
        futures::future::join_all(pending.into_iter().map(|p| p.abandon(&context.db))).await;
        fail_all(done.into_iter().map(|d| d.3), error);
        return;
    }
    // Committed: what the writes kept to undo them goes, and so do the
    // blobs they moved away from.
    let cleanups = pending.into_iter().map(PendingWrite::finish);
    futures::future::join_all(cleanups).await;
    let moved_away = done.iter().filter_map(|(it, staged, ..)| {
        let old = staged.old_path.as_ref()?;
        let id = staged.id;
        Some(async move {
            if let Err(error) = context.blobs.delete(it.name(), old).await {
                tracing::warn!(r#type = it.name(), id, %error, "could not remove the previous blob");
            }
        })
    });
    futures::future::join_all(moved_away).await;
    for (it, staged, written, answer, _writing) in done {
        context.events.record_written();
        tracing::info!(
            r#type = it.name(),
            id = staged.id,
            created = staged.created,
            size = written.size,
            "record written"
        );
        let _ = answer.send(Ok(staged.outcome(&it, written)));
    }
    if published {
        context.events.notify();
    }
}

/// Logs the events of a group's staged writes, in the group's order within
/// each type and kind (two writes of one record never share a group, so
/// the order across them does not matter). Whether any was logged: events
/// may be off.
async fn publish(tx: &mut crate::db::Tx, done: &[Done]) -> Result<bool, crate::db::DbError> {
    let mut kinds: Vec<((&str, &'static str), Vec<serde_json::Value>)> = Vec::new();
    for (it, staged, ..) in done {
        let kind = (it.name(), staged.event());
        let payload = events::payload(staged.id);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, payloads)) => payloads.push(payload),
            None => kinds.push((kind, vec![payload])),
        }
    }
    let mut published = 0;
    for ((name, event), payloads) in kinds {
        published += events::publish_many(tx, name, event, &payloads).await?;
    }
    Ok(published > 0)
}

/// Answers every write of `answers` with `error`.
fn fail_all(answers: impl ExactSizeIterator<Item = Answer>, error: IngestError) {
    let mut error = shared(error, answers.len());
    for answer in answers {
        let _ = answer.send(Err(error()));
    }
}

/// `error` for one write as it is, or for many as [`IngestError::Group`].
fn shared(error: IngestError, writes: usize) -> impl FnMut() -> IngestError {
    let (mut alone, shared) = if writes == 1 {
        (Some(error), None)
    } else {
        (None, Some(Arc::new(error)))
    };
    move || match alone.take() {
        Some(error) => error,
        None => IngestError::Group(shared.clone().expect("one answer for a write alone")),
    }
}
