//! Publishing a commit: the frames a group committed locally become log record
//! `applied + 1`, created by a create-only PUT. Exactly one writer can create a given
//! record (the single-writer fence). After it lands, the manifest is checked so that a
//! writer stalled across a checkpoint and a GC (a zombie) never acknowledges a record that
//! nobody will read (the zombie fence).

use crate::log_record::{Frame, LogRecord, RecordHead, RecordWriter, Snapshot};
use crate::store::{PutCondition, PutOutcome, StoreError, StoreErrorKind};

use super::{nonce_id, Database, RecordKind, RecordMeta};

/// History entries the zombie fence reads at most to find whose record a checkpoint folded.
const FENCE_ENTRIES_LOOKED_AT: u64 = 8;

/// Whose record a checkpoint folded at some position, as far as the zombie fence can tell.
enum FoldedRecord {
    /// The garbage of the checkpoint that folded it names the record's nonce.
    Nonce(u64),
    /// No checkpoint GC has not collected folded it: the one that did was collected, a
    /// whole retention window after it.
    Collected,
    /// The fence cannot tell: the checkpoint that folded it lies beyond the history entries
    /// the fence reads, an entry is missing, or its garbage keeps no nonces.
    Untold,
}

pub(super) enum Publish {
    Published,
    /// Another writer owns this sequence number (or we were a zombie): catch up and retry.
    Stale,
    /// Could not determine whether the record landed.
    Unknown(String),
    /// The record was never sent (the operation ran out of store calls): nothing committed.
    NotStored(crate::EngineError),
}

/// Where a record stands after an attempt to store it.
pub(super) enum Landing {
    Landed,
    Stale,
    Unknown(String),
    NotStored(crate::EngineError),
}

impl Database {
    /// The commit time of the next record: now, but never before the last applied commit
    /// (isolates' clocks differ; commit times must sort in log order).
    pub(super) fn next_commit_ms(&self) -> u64 {
        (self.now_ms().max(0.0) as u64).max(self.last_commit_ms)
    }

    /// Makes the local database's unshipped frames durable as log record `applied_seq + 1`.
    /// They go from the WAL straight into the record's body.
    pub(super) async fn publish(&mut self) -> Publish {
        let mut nonce = [0u8; 16];
        self.host.fill_random(&mut nonce);
        let (seq, committed_ms) = (self.applied_seq + 1, self.next_commit_ms());
        let encoded = self.local().and_then(|local| {
            let (durable, total) = (local.durable_frames(), local.wal_frames()?);
            let count = u32::try_from(total - durable)
                .map_err(|_| crate::EngineError::Internal(format!("{} frames are too many for one record", total - durable)))?;
            let head = RecordHead { seq, page_size: local.page_size(), nonce, committed_ms };
            let mut writer = RecordWriter::new(head, None, count);
            local.visit_frames(durable + 1, total, |page_no, db_size, page| writer.push_frame(page_no, db_size, page))?;
            Ok((writer.finish(), total))
        });
        let (body, frame_total) = match encoded {
            Ok(encoded) => encoded,
            Err(e) => return Publish::Unknown(e.to_string()),
        };
        let meta = RecordMeta { seq, bytes: body.len() as u64, committed_ms, nonce: nonce_id(&nonce), kind: RecordKind::Frames };
        self.publish_record(meta, body, Some(frame_total)).await
    }

    /// Makes a snapshot record durable as log record `applied_seq + 1` (a restore, an
    /// import, a deletion): fenced like any commit. Once published, the local database is
    /// rebuilt on its image.
    pub(super) async fn publish_snapshot(&mut self, snapshot: Snapshot, frames: Vec<Frame>, page_size: u32) -> Publish {
        let record = self.next_record(page_size, Some(snapshot), frames);
        let body = record.encode();
        let meta = RecordMeta::of(&record, body.len() as u64);
        drop(record);
        self.publish_record(meta, body, None).await
    }

    pub(super) fn next_record(&self, page_size: u32, snapshot: Option<Snapshot>, frames: Vec<Frame>) -> LogRecord {
        let mut nonce = [0u8; 16];
        self.host.fill_random(&mut nonce);
        LogRecord { seq: self.applied_seq + 1, page_size, nonce, committed_ms: self.next_commit_ms(), snapshot, frames }
    }

    /// Stores a record's `body` (which `meta` describes) and runs the fences. `local_frames`: the record holds the local
    /// database's unshipped frames, which end at this WAL frame (they become durable in
    /// place); `None`: the record is applied to the local database once published.
    async fn publish_record(&mut self, meta: RecordMeta, body: Vec<u8>, local_frames: Option<u64>) -> Publish {
        let seq = meta.seq;
        let key = self.layout.log_key(seq);

        let put_started = self.now_ms();
        match self.store_record(&key, &body).await {
            Landing::Landed => {}
            Landing::Stale => return Publish::Stale,
            Landing::Unknown(why) => return Publish::Unknown(why),
            Landing::NotStored(e) => return Publish::NotStored(e),
        }
        // The fence: the record must be one that readers will read. A PUT that landed while
        // time proves the key was never used before (see `time_proves_absence`) created it
        // first, so it is not a zombie's: no manifest check, the commit costs one round trip.
        let base_before = self.base.generation;
        let by_time = local_frames.is_some() && self.time_proves_absence();
        let checked = if by_time { Ok(true) } else { self.check_manifest(seq).await };
        let read_uncovered = !by_time && matches!(checked, Ok(true));
        let outcome = match checked {
            Ok(true) if self.base.generation == base_before && local_frames.is_some() => {
                let Ok(local) = self.local_mut() else {
                    return Publish::Unknown("the local database was lost after the record landed".into());
                };
                local.mark_durable(local_frames.expect("checked"));
                self.note_applied(meta, local_frames.expect("checked"));
                Publish::Published
            }
            // A snapshot record, or a newer checkpoint that does not cover `seq` was
            // published meanwhile and local state was rebased onto it (dropping the
            // unshipped frames): the record is durable and will be read, so apply it.
            Ok(true) => match self.apply_encoded(&body).await {
                Ok(()) => Publish::Published,
                Err(e) => {
                    self.local = None;
                    Publish::Unknown(format!("log record {seq} is durable but could not be applied: {e}"))
                }
            },
            // A checkpoint covers `seq`. Either this writer was a zombie (the record at
            // `seq` was folded and collected, and its PUT re-created the key: nobody will
            // read it), or another isolate read this record and folded it into a
            // checkpoint between the PUT and this check (it is durable and read). The
            // checkpoint's garbage entry tells them apart by the folded record's nonce;
            // once the entry is collected, time does: collecting it takes a whole retention
            // window after the checkpoint, so if less than half a window passed since the
            // PUT, the record folded was not this one. If neither can tell, the outcome is
            // unknown: taking our own folded record for a zombie's would run it twice.
            Ok(false) => {
                let folded = match self.folded_record(seq).await {
                    Ok(folded) => folded,
                    Err(e) => return Publish::Unknown(format!("log record {seq} was folded, and whose it was is unknown: {e}")),
                };
                let zombie = match folded {
                    FoldedRecord::Nonce(folded) => folded != meta.nonce,
                    FoldedRecord::Collected if self.now_ms() - put_started < self.collection_delay_ms() / 2.0 => true,
                    FoldedRecord::Collected => {
                        return Publish::Unknown(format!(
                            "a checkpoint covered log record {seq}, and collected it, before its writer could tell whose it was"
                        ))
                    }
                    FoldedRecord::Untold => {
                        return Publish::Unknown(format!(
                            "a checkpoint covered log record {seq}, and more checkpoints followed it than the writer reads to tell whose it was"
                        ))
                    }
                };
                if zombie {
                    let _ = self.store.delete(&key).await;
                    Publish::Stale
                } else {
                    Publish::Published
                }
            }
            Err(crate::EngineError::Storage(e)) => Publish::Unknown(format!("record stored but the fence check failed: {e}")),
            Err(e) => Publish::Unknown(e.to_string()),
        };
        if let Publish::Published = outcome {
            // Every record before `seq` was applied here, and `seq` was free when the PUT
            // began: the state was current then (GC's bound, `proven_current_for_gc`).
            self.validated_ms = self.validated_ms.max(put_started);
            if read_uncovered {
                // The manifest read after the PUT found no checkpoint covering it.
                self.manifest_proof_ms = self.manifest_proof_ms.max(put_started);
            }
        }
        outcome
    }

    /// What the garbage of the checkpoints GC has not collected says of record `seq`, which
    /// a checkpoint folded: the base manifest's, then the history entries of the few
    /// generations before it.
    async fn folded_record(&self, seq: u64) -> Result<FoldedRecord, crate::EngineError> {
        let told = |g: &crate::manifest::Garbage| g.covers(seq).then(|| g.folded_nonce(seq).map_or(FoldedRecord::Untold, FoldedRecord::Nonce));
        if let Some(told) = self.base.retired.iter().chain(&self.base.garbage).find_map(told) {
            return Ok(told);
        }
        let lowest = self.base.gc_floor.max(1);
        for generation in (lowest..self.base.generation).rev() {
            if generation + FENCE_ENTRIES_LOOKED_AT < self.base.generation {
                return Ok(FoldedRecord::Untold);
            }
            let Some(entry) = self.entry(generation).await? else { return Ok(FoldedRecord::Untold) };
            if let Some(told) = entry.retired.as_ref().and_then(told) {
                return Ok(told);
            }
            if entry.checkpoint_seq < seq {
                // The checkpoint after this one folded `seq` but its garbage does not say so.
                return Ok(FoldedRecord::Untold);
            }
        }
        // Every generation from GC's floor on was read: the checkpoint that folded `seq`
        // lies below it, collected.
        Ok(FoldedRecord::Collected)
    }

    /// PUTs `body` create-only at `key`, resolving ambiguous failures by reading back
    /// (the nonce makes our bytes unique): ours → landed, someone else's → stale,
    /// absent → PUT again.
    pub(super) async fn store_record(&self, key: &str, body: &[u8]) -> Landing {
        let mut last_error: Option<StoreError> = None;
        for attempt in 1..=self.config.put_resolve_attempts.max(1) {
            match self.store.put(key, body, PutCondition::CreateOnly).await {
                Ok(PutOutcome::Stored(_)) => return Landing::Landed,
                Ok(PutOutcome::PreconditionFailed) if attempt == 1 => return Landing::Stale,
                // An earlier attempt failed ambiguously: the record there may be ours.
                Ok(PutOutcome::PreconditionFailed) => match self.read_back(key, body).await {
                    Ok(Some(true)) => return Landing::Landed,
                    Ok(_) => return Landing::Stale,
                    Err(e) => last_error = Some(e),
                },
                // Never sent: known not to have landed (unless an earlier attempt did).
                Err(e) if e.kind == StoreErrorKind::OutOfCalls && attempt == 1 => return Landing::NotStored(e.into()),
                Err(e) => {
                    last_error = Some(e);
                    match self.read_back(key, body).await {
                        Ok(Some(true)) => return Landing::Landed,
                        Ok(Some(false)) => return Landing::Stale,
                        Ok(None) => {} // did not land: PUT again
                        Err(e) => last_error = Some(e),
                    }
                }
            }
        }
        Landing::Unknown(last_error.map(|e| e.to_string()).unwrap_or_else(|| "record not stored".into()))
    }

    /// `Some(true)` if `key` holds exactly `body`, `Some(false)` if it holds something
    /// else, `None` if absent.
    async fn read_back(&self, key: &str, body: &[u8]) -> Result<Option<bool>, StoreError> {
        Ok(self.store.get(key, None).await?.map(|obj| obj.body == body))
    }
}
