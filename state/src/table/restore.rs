//! Applying records read back from a changelog: one batch
//! ([`TablePartition::restore`]) or the whole tail
//! ([`TablePartition::restore_from`]).
//!
//! Invariants: a record at or below the latest version is a duplicate and
//! skipped; the next version must be `latest + 1` (a gap is an error); each
//! batch is one atomic store write carrying its records, their changelog
//! offsets and the checkpoint, and readers see a batch only once its write
//! has landed.
//!
//! A restore from a changelog overlaps reading and preparing the next
//! batch with the store write of the previous one, which runs on a helper
//! thread that lives as long as the restore. Batches still land one at a
//! time and in order.
//!
//! Those batches are written without the store's write-ahead log
//! ([`KvStore::write_unlogged`]), and a flush of them starts once at the
//! end, whatever the outcome: each batch carries its own checkpoint, so a
//! crash before the flush completes leaves the partition at an earlier
//! whole batch (or where the restore started), and the next restore reads
//! the rest again. The store waits for that flush before its next logged
//! write (the partition's first commit), so a commit can never be recovered
//! on top of restored batches a crash lost.

use std::sync::mpsc;
use std::time::Instant;

use crate::changelog::{ChangeRecord, ChangelogReader, RestoreProgress};
use crate::store::{KvStore, StoreResult};
use crate::types::{ChangelogPosition, InputOffset, Offset};
use crate::{Error, Result};

use super::{Checkpoint, RestoreStep, TablePartition};

/// One batch of a restore, prepared against the checkpoint it follows.
struct Planned<B> {
    /// The write and the checkpoint it leaves, `None` when there is nothing
    /// to write.
    write: Option<(B, Checkpoint)>,
    /// The records the write applies.
    fresh: Vec<ChangeRecord>,
    step: RestoreStep,
}

/// Where a restore's store writes are made: a helper thread fed one batch
/// at a time, or (if no thread could be started) the restoring thread.
struct Writer<B> {
    batches: Option<mpsc::SyncSender<B>>,
    results: Option<mpsc::Receiver<StoreResult<()>>>,
    /// The result of a write made on the restoring thread.
    made: Option<StoreResult<()>>,
    /// The write not yet landed: the checkpoint it leaves, its records.
    inflight: Option<(Checkpoint, usize)>,
    /// Whether any unlogged write was made (so a flush is due).
    wrote: bool,
}

impl<B> Writer<B> {
    /// The result of the write in flight, once it is made.
    fn wait(&mut self) -> StoreResult<()> {
        if let Some(r) = self.made.take() {
            return r;
        }
        self.results
            .as_ref()
            .and_then(|rx| rx.recv().ok())
            .unwrap_or_else(|| {
                Err(crate::store::StoreError {
                    kind: crate::store::StoreErrorKind::Other,
                    message: "the restore write thread stopped".into(),
                })
            })
    }
}

impl<S: KvStore> TablePartition<S> {
    /// Applies records read back from the changelog, in order. Records at or
    /// below the latest version are skipped (a changelog may repeat records
    /// after a retried produce); a gap in versions is an error.
    pub fn restore(&mut self, records: Vec<(Offset, ChangeRecord)>) -> Result<RestoreStep> {
        self.check_restorable()?;
        self.needs_restore = false;
        let planned = self.plan_restore(&self.checkpoint, records)?;
        if let Some((batch, checkpoint)) = planned.write {
            self.shared
                .store
                .write(batch)
                .map_err(|e| self.shared.store_err(e, None))?;
            self.refresh_cache(&planned.fresh);
            self.publish(checkpoint);
        }
        Ok(planned.step)
    }

    /// Replays the changelog from the checkpoint to its end, in batches of
    /// `batch` records, reporting progress after each.
    ///
    /// Each batch's store write runs on a helper thread while the next
    /// batch is read and prepared; batches still land one at a time, in
    /// order, and a failure leaves the partition at the last batch that
    /// landed.
    pub fn restore_from(
        &mut self,
        log: &mut dyn ChangelogReader,
        batch: usize,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreProgress> {
        self.check_restorable()?;
        self.needs_restore = false;
        let shared = self.shared.clone();
        std::thread::scope(|scope| {
            let (batches, rx) = mpsc::sync_channel::<S::Batch>(1);
            let (tx, results) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("strata-restore".into())
                .spawn_scoped(scope, move || {
                    for b in rx {
                        if tx.send(shared.store.write_unlogged(b)).is_err() {
                            break;
                        }
                    }
                });
            let mut w = match spawned {
                Ok(_) => Writer {
                    batches: Some(batches),
                    results: Some(results),
                    made: None,
                    inflight: None,
                    wrote: false,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "no restore write thread; writing on this one");
                    Writer {
                        batches: None,
                        results: None,
                        made: None,
                        inflight: None,
                        wrote: false,
                    }
                }
            };
            let r = self.restore_loop(log, batch.max(1), progress, &mut w);
            // Whatever happened, the write in flight lands (or fails)
            // before the partition is used again.
            let landed = self.land(&mut w);
            let wrote = w.wrote;
            // Closing the channel ends the thread; the scope joins it.
            drop(w);
            // The batches were not logged: start flushing them now, even
            // after a failure (earlier batches stay published). The store
            // waits for this flush before its next logged write, so a
            // commit is never recovered on top of batches a crash lost.
            let flushed = if wrote {
                self.shared
                    .store
                    .start_flush()
                    .map_err(|e| self.shared.store_err(e, None))
            } else {
                Ok(())
            };
            let mut p = r?;
            p.applied += landed? as u64;
            flushed?;
            progress(&p);
            Ok(p)
        })
    }

    fn restore_loop(
        &mut self,
        log: &mut dyn ChangelogReader,
        batch: usize,
        progress: &mut dyn FnMut(&RestoreProgress),
        w: &mut Writer<S::Batch>,
    ) -> Result<RestoreProgress> {
        let started = Instant::now();
        let mut p = RestoreProgress {
            position: self
                .checkpoint
                .changelog
                .map(|c| Offset(c.0.0 + 1))
                .unwrap_or(Offset(0)),
            end_estimate: log.end_estimate(),
            ..Default::default()
        };
        // The checkpoint the partition will have once the write in flight
        // has landed: the next batch is planned against it.
        let mut base = self.checkpoint.clone();
        loop {
            let b = log.read(p.position, batch)?;
            if let Some((last, _)) = b.records.last() {
                p.position = Offset(last.0 + 1);
            }
            p.read += b.records.len() as u64;
            let done = b.end || b.records.is_empty();
            let planned = self.plan_restore(&base, b.records)?;
            p.applied += self.land(w)? as u64;
            if let Some((write, checkpoint)) = planned.write {
                base = checkpoint.clone();
                // Refreshed before the write lands: if it fails, `land`
                // clears the cache.
                self.refresh_cache(&planned.fresh);
                w.inflight = Some((checkpoint, planned.fresh.len()));
                w.wrote = true;
                match &w.batches {
                    Some(tx) => {
                        if let Err(mpsc::SendError(write)) = tx.send(write) {
                            // The thread is gone: write here instead.
                            w.made = Some(self.shared.store.write_unlogged(write));
                        }
                    }
                    None => w.made = Some(self.shared.store.write_unlogged(write)),
                }
            }
            p.rate = p.read as f64 / started.elapsed().as_secs_f64().max(1e-9);
            p.eta = p.end_estimate.filter(|_| p.rate > 0.0).map(|end| {
                std::time::Duration::from_secs_f64(
                    end.0.saturating_sub(p.position.0) as f64 / p.rate,
                )
            });
            if done {
                return Ok(p);
            }
            progress(&p);
        }
    }

    /// Waits for the write in flight, if any, and publishes its
    /// checkpoint; the records it applied.
    fn land(&mut self, w: &mut Writer<S::Batch>) -> Result<usize> {
        let Some((checkpoint, applied)) = w.inflight.take() else {
            return Ok(0);
        };
        match w.wait() {
            Ok(()) => {
                self.publish(checkpoint);
                Ok(applied)
            }
            Err(e) => {
                self.clear_cache();
                Err(self.shared.store_err(e, None))
            }
        }
    }

    fn check_restorable(&self) -> Result<()> {
        if !self.staging.is_empty() || self.prepared.is_some() {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: "restore while mutations are staged or a commit is prepared".into(),
            });
        }
        Ok(())
    }

    /// Checks `records` against `base` (skipping duplicates, refusing gaps)
    /// and builds the write that applies them.
    fn plan_restore(
        &self,
        base: &Checkpoint,
        records: Vec<(Offset, ChangeRecord)>,
    ) -> Result<Planned<S::Batch>> {
        let mut step = RestoreStep::default();
        let mut latest = base.version;
        let mut fresh: Vec<ChangeRecord> = Vec::with_capacity(records.len());
        let mut offsets: Vec<Offset> = Vec::with_capacity(records.len());
        let end = records.last().map(|(o, _)| ChangelogPosition(*o));
        // Input positions implied by the restored records' lineage (a short
        // list: one entry per input topic).
        let mut inputs: Vec<InputOffset> = base.inputs.clone();
        for (off, r) in records {
            if r.version <= latest {
                step.skipped += 1;
                continue;
            }
            if r.version != latest.next() {
                return Err(Error::Changelog {
                    location: self.shared.loc(),
                    message: format!(
                        "record at offset {} has {} but {} was expected: versions are missing from the changelog \
                         (truncated, or written by two owners); rebuild the table from its inputs",
                        off.0,
                        r.version,
                        latest.next()
                    ),
                    source: None,
                });
            }
            if let Some(l) = &r.lineage {
                let next = Offset(l.offset.0 + 1);
                match inputs
                    .iter_mut()
                    .find(|i| i.partition == l.partition && i.topic == l.topic)
                {
                    Some(i) => i.next = i.next.max(next),
                    None => inputs.push(InputOffset {
                        topic: l.topic.clone(),
                        partition: l.partition,
                        next,
                    }),
                }
            }
            latest = r.version;
            fresh.push(r);
            offsets.push(off);
        }
        inputs.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        step.applied = fresh.len();
        // Skipped duplicates still move the changelog position on, so the
        // next restore does not read them again.
        let write = (!fresh.is_empty() || end > base.changelog)
            .then(|| self.build_write(base, &fresh, None, &offsets, &inputs, end));
        Ok(Planned { write, fresh, step })
    }
}
