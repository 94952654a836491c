//! Publishing a commit: the frames a group committed locally become log record
//! `applied + 1`, created by a create-only PUT. Exactly one writer can create a given
//! record (the single-writer fence). After it lands, the manifest is checked so that a
//! writer stalled across a checkpoint and a GC (a zombie) never acknowledges a record that
//! nobody will read (the zombie fence).

use crate::log_record::{Frame, LogRecord};
use crate::store::{PutCondition, PutOutcome, StoreError};

use super::{nonce_id, Database, RecordMeta};

pub(super) enum Publish {
    Published,
    /// Another writer owns this sequence number (or we were a zombie): catch up and retry.
    Stale,
    /// Could not determine whether the record landed.
    Unknown(String),
}

/// Where a record stands after an attempt to store it.
enum Landing {
    Landed,
    Stale,
    Unknown(String),
}

impl Database {
    /// The commit time of the next record: now, but never before the last applied commit
    /// (isolates' clocks differ; commit times must sort in log order).
    pub(super) fn next_commit_ms(&self) -> u64 {
        (self.now_ms().max(0.0) as u64).max(self.last_commit_ms)
    }

    /// Makes `frames` durable as log record `applied_seq + 1`.
    pub(super) async fn publish(&mut self, frames: Vec<Frame>) -> Publish {
        let (local_page_size, durable) = match self.local() {
            Ok(local) => (local.page_size(), local.durable_frames()),
            Err(e) => return Publish::Unknown(e.to_string()),
        };
        let seq = self.applied_seq + 1;
        let mut nonce = [0u8; 16];
        self.host.fill_random(&mut nonce);
        let frame_total = durable + frames.len() as u64;
        let committed_ms = self.next_commit_ms();
        let body = LogRecord { seq, page_size: local_page_size, nonce, committed_ms, frames }.encode();
        let key = self.layout.log_key(seq);

        let put_started = self.now_ms();
        match self.store_record(&key, &body).await {
            Landing::Landed => {}
            Landing::Stale => return Publish::Stale,
            Landing::Unknown(why) => return Publish::Unknown(why),
        }
        // The fence: the record must be one that readers will read.
        let meta = RecordMeta { seq, bytes: body.len() as u64, committed_ms, nonce: nonce_id(&nonce) };
        let base_before = self.base.generation;
        match self.check_manifest(seq).await {
            Ok(true) if self.base.generation == base_before => {
                let Ok(local) = self.local_mut() else {
                    return Publish::Unknown("the local database was lost after the record landed".into());
                };
                local.mark_durable(frame_total);
                self.note_applied(meta, frame_total);
                Publish::Published
            }
            // A newer checkpoint that does not cover `seq` was published meanwhile and local
            // state was rebased onto it (dropping the unshipped frames): the record is
            // durable and will be read, so apply it on the new base.
            Ok(true) => match LogRecord::decode(&body) {
                Ok(record) => match self.apply_frames(meta, &record.frames, record.page_size) {
                    Ok(()) => Publish::Published,
                    Err(e) => Publish::Unknown(e.to_string()),
                },
                Err(e) => Publish::Unknown(e.to_string()),
            },
            // A checkpoint covers `seq`. Either this writer was a zombie (the record at
            // `seq` was folded and collected, and its PUT re-created the key: nobody will
            // read it), or another isolate read this record and folded it into a
            // checkpoint between the PUT and this check (it is durable and read). The
            // checkpoint's garbage entry tells them apart by the folded record's nonce;
            // once the entry is collected, time does: collecting it takes a whole retention
            // window after the checkpoint, so if less than half a window passed since the
            // PUT, the record folded was not this one.
            Ok(false) => {
                let zombie = match self.folded_nonce(seq) {
                    Some(folded) => folded != meta.nonce,
                    None if self.now_ms() - put_started < self.config.gc_retention_ms / 2.0 => true,
                    None => {
                        return Publish::Unknown(format!(
                            "a checkpoint covered log record {seq}, and collected it, before its writer could tell whose it was"
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
        }
    }

    /// The nonce id of record `seq` as the base manifest's checkpoints folded it, if an
    /// entry of its garbage still says.
    fn folded_nonce(&self, seq: u64) -> Option<u64> {
        self.base.garbage.iter().find_map(|g| g.folded_nonce(seq))
    }

    /// PUTs `body` create-only at `key`, resolving ambiguous failures by reading back
    /// (the nonce makes our bytes unique): ours → landed, someone else's → stale,
    /// absent → PUT again.
    async fn store_record(&self, key: &str, body: &[u8]) -> Landing {
        let mut last_error: Option<StoreError> = None;
        for attempt in 1..=self.config.put_resolve_attempts.max(1) {
            match self.store.put(key, body.to_vec(), PutCondition::CreateOnly).await {
                Ok(PutOutcome::Stored(_)) => return Landing::Landed,
                Ok(PutOutcome::PreconditionFailed) if attempt == 1 => return Landing::Stale,
                // An earlier attempt failed ambiguously: the record there may be ours.
                Ok(PutOutcome::PreconditionFailed) => match self.read_back(key, body).await {
                    Ok(Some(true)) => return Landing::Landed,
                    Ok(_) => return Landing::Stale,
                    Err(e) => last_error = Some(e),
                },
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
