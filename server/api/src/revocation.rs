//! `mintgate.v1.Revocation`: Revoke, CheckStatus and the WatchRevocations feed.

use std::sync::Arc;

use mintgate_domain::ports::Clock;
use mintgate_domain::service::{EXPIRY_SKEW, Mintgate, RevokeIdentityInput, RevokeInput};
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{Error, InputError};
use mintgate_proto::fanout::frame::Message;
use mintgate_proto::fanout::{WatchRevocationsFrame, revocation_server};
use mintgate_proto::v1;
use prost::Message as _;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::convert;
use crate::provisioning::open_request;
use crate::registry::{LOG_BATCH, Published, RevocationHub, StreamPermit};
use crate::server::{caller, connection};
use crate::status::to_status;

type Item = Result<WatchRevocationsFrame, Status>;

/// How long a connection that revoked its own certificate stays open to receive the answer.
const OWN_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) struct RevocationService<S> {
    pub(crate) app: Arc<Mintgate<S>>,
    pub(crate) hub: Arc<RevocationHub>,
    pub(crate) clock: Arc<dyn Clock>,
}

#[tonic::async_trait]
impl<S: CertificateStore> revocation_server::Revocation for RevocationService<S> {
    #[tracing::instrument(name = "Revoke", skip_all, fields(request_id, caller))]
    async fn revoke(
        &self,
        request: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let connection = connection(&request);
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let status = |e: Error| to_status(&e, "Revoke", &rid);
        // Revoking the certificate this very connection runs on: answer before the cut.
        let own = connection.filter(|_| {
            mintgate_domain::Serial::parse_hex(&body.serial).is_ok_and(|s| s == caller.serial)
        });
        if let Some(id) = own {
            self.hub.defer_cut(id);
        }
        let input = RevokeInput {
            request_id: body.request_id,
            serial: body.serial,
            reason: convert::revocation_reason(body.reason).map_err(|e| status(e.into()))?,
        };
        let result = self.app.revoke(&caller, input).await;
        if let Some(id) = own {
            self.hub.cut_deferred(id, OWN_ANSWER_GRACE);
        }
        let record = result.map_err(status)?;
        // Answer once this server refuses the certificate: its handshakes fail and its open
        // connections are being closed.
        self.hub.applied_through(record.seq).await;
        Ok(Response::new(v1::RevokeResponse {
            revocation: Some(convert::revocation_event(&record)),
        }))
    }

    #[tracing::instrument(name = "RevokeIdentity", skip_all, fields(request_id, caller))]
    async fn revoke_identity(
        &self,
        request: Request<v1::RevokeIdentityRequest>,
    ) -> Result<Response<v1::RevokeIdentityResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let status = |e: Error| to_status(&e, "RevokeIdentity", &rid);
        let input = RevokeIdentityInput {
            request_id: body.request_id,
            spiffe_id: body.spiffe_id,
            reason: convert::revocation_reason(body.reason).map_err(|e| status(e.into()))?,
            block: body.block,
        };
        let done = self
            .app
            .revoke_identity(&caller, input)
            .await
            .map_err(status)?;
        if let Some(last) = done.revocations.last() {
            self.hub.applied_through(last.seq).await;
        }
        Ok(Response::new(v1::RevokeIdentityResponse {
            revocations: done
                .revocations
                .iter()
                .map(convert::revocation_event)
                .collect(),
            blocked: done.blocked,
        }))
    }

    #[tracing::instrument(name = "UnblockIdentity", skip_all, fields(request_id, caller))]
    async fn unblock_identity(
        &self,
        request: Request<v1::UnblockIdentityRequest>,
    ) -> Result<Response<v1::UnblockIdentityResponse>, Status> {
        let (caller, body) = open_request(request)?;
        self.app
            .unblock_identity(&caller, &body.request_id, &body.spiffe_id)
            .await
            .map(|was_blocked| Response::new(v1::UnblockIdentityResponse { was_blocked }))
            .map_err(|e| to_status(&e, "UnblockIdentity", &body.request_id))
    }

    #[tracing::instrument(name = "CheckStatus", skip_all, fields(caller))]
    async fn check_status(
        &self,
        request: Request<v1::CheckStatusRequest>,
    ) -> Result<Response<v1::CheckStatusResponse>, Status> {
        caller(&request)?;
        self.app
            .check_status(&request.into_inner().serials)
            .await
            .map(|r| Response::new(convert::status_report(r)))
            .map_err(|e| to_status(&e, "CheckStatus", ""))
    }

    type WatchRevocationsStream = ReceiverStream<Item>;

    #[tracing::instrument(name = "WatchRevocations", skip_all, fields(caller))]
    async fn watch_revocations(
        &self,
        request: Request<v1::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let caller = caller(&request)?;
        let cursor = request.into_inner().cursor;
        let status = |e: Error| to_status(&e, "WatchRevocations", "");
        if cursor < 0 {
            return Err(status(InputError::CursorInvalid.into()));
        }
        let permit = self
            .hub
            .acquire_stream(caller.id.as_str())
            .map_err(status)?;
        // Subscribe before reading the log: whatever commits from here on arrives on the feed.
        let live = self.hub.subscribe();
        let bounds = self
            .app
            .store()
            .revocation_bounds()
            .await
            .map_err(|e| status(e.into()))?;
        if cursor > bounds.head {
            return Err(status(Error::CursorAhead {
                cursor,
                head: bounds.head,
            }));
        }
        // One slot stays free for the message that closes a subscriber that fell behind.
        let (tx, rx) = mpsc::channel(self.hub.config().subscriber_buffer + 1);
        let feed = Feed {
            app: self.app.clone(),
            hub: self.hub.clone(),
            clock: self.clock.clone(),
            tx,
            cursor,
            _permit: permit,
        };
        tokio::spawn(
            feed.run(live, bounds.pruned_through)
                .instrument(tracing::Span::current()),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One subscriber's feed: replay from the database, then live events and heartbeats.
struct Feed<S> {
    app: Arc<Mintgate<S>>,
    hub: Arc<RevocationHub>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Item>,
    /// Everything up to here has been sent.
    cursor: i64,
    _permit: StreamPermit,
}

/// Why a feed stops.
enum Stop {
    /// The subscriber went away, or the server is shutting down.
    Gone,
    /// Tell the subscriber why, then stop.
    Fail(Error),
}

impl<S: CertificateStore> Feed<S> {
    async fn run(mut self, live: broadcast::Receiver<Published>, pruned_through: i64) {
        // The database reads are boxed: the task lives as long as the stream, and unboxed they
        // would size its allocation for a sea-orm query for all of that time.
        let result = async {
            if self.cursor < pruned_through {
                Box::pin(self.snapshot()).await?;
            }
            Box::pin(self.replay(true)).await?;
            self.heartbeat().await?;
            self.follow(live).await
        }
        .await;
        if let Err(Stop::Fail(e)) = result {
            // The reserved slot: this fits even when the buffer is full.
            let _ = self.tx.try_send(Err(to_status(&e, "WatchRevocations", "")));
        }
    }

    /// Every revoked, unexpired certificate, for a subscriber whose cursor fell below the
    /// retained log. The feed continues after the newest entry the snapshot covers.
    async fn snapshot(&mut self) -> Result<(), Stop> {
        let store = self.app.store();
        let head = store.revocation_bounds().await.map_err(fail)?.head;
        let entries = store
            .live_revocations(self.clock.now() - EXPIRY_SKEW)
            .await
            .map_err(fail)?;
        let as_of = entries.iter().map(|e| e.seq).fold(head, i64::max);
        let snapshot = v1::Snapshot {
            entries: entries.iter().map(convert::revocation_event).collect(),
            as_of_seq: as_of,
        };
        self.send(Message::Snapshot(snapshot)).await?;
        self.cursor = as_of;
        Ok(())
    }

    /// Sends every logged entry after the cursor: `waiting` for room in the subscriber's buffer
    /// (catch-up), or closing it as too slow when full (while live).
    async fn replay(&mut self, waiting: bool) -> Result<(), Stop> {
        loop {
            let batch = self
                .app
                .store()
                .revocations_after(self.cursor, LOG_BATCH)
                .await
                .map_err(fail)?;
            let full = batch.len() as u64 == LOG_BATCH;
            for entry in &batch {
                if waiting {
                    self.send(event(entry)).await?;
                } else {
                    self.offer(event(entry))?;
                }
                self.cursor = entry.seq;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Live events as the hub applies them, and heartbeats when idle. Never waits for the
    /// subscriber: if its buffer is full it is closed as too slow.
    async fn follow(&mut self, mut live: broadcast::Receiver<Published>) -> Result<(), Stop> {
        let mut heartbeat = tokio::time::interval(self.hub.config().heartbeat);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = self.tx.closed() => return Err(Stop::Gone),
                () = self.hub.closed() => return Err(Stop::Fail(Error::ShuttingDown)),
                _ = heartbeat.tick() => self.offer(self.heartbeat_message())?,
                received = live.recv() => match received {
                    Ok(entry) if entry.seq <= self.cursor => {}
                    Ok(entry) if entry.seq == self.cursor + 1 => {
                        self.offer(Message::Event(entry.encoded))?;
                        self.hub.metrics().propagated(entry.applied_at.elapsed());
                        self.cursor = entry.seq;
                    }
                    // A gap (entries pruned before the hub read them) or our own lag behind
                    // the hub: the database has everything.
                    Ok(_) | Err(RecvError::Lagged(_)) => Box::pin(self.replay(false)).await?,
                    Err(RecvError::Closed) => return Err(Stop::Gone),
                },
            }
        }
    }

    /// Catch-up while live: like [`Feed::replay`], but a full buffer closes the subscriber.
    fn heartbeat_message(&self) -> Message {
        Message::Heartbeat(v1::Heartbeat {
            head_seq: self.cursor,
            server_time: Some(convert::timestamp(self.clock.now())),
        })
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        self.send(self.heartbeat_message()).await
    }

    /// Waits for room; two slots, so the reserved one stays free.
    async fn send(&self, message: Message) -> Result<(), Stop> {
        let mut permits = tokio::select! {
            permits = self.tx.reserve_many(2) => permits.map_err(|_| Stop::Gone)?,
            () = self.hub.closed() => return Err(Stop::Gone),
        };
        if let Some(permit) = permits.next() {
            permit.send(Ok(response(message)));
        }
        Ok(())
    }

    /// Sends without waiting; a subscriber whose buffer is full is too slow.
    fn offer(&self, message: Message) -> Result<(), Stop> {
        match self.tx.try_reserve_many(2) {
            Ok(mut permits) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(response(message)));
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.hub.metrics().subscriber_too_slow();
                Err(Stop::Fail(Error::SubscriberTooSlow))
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(Stop::Gone),
        }
    }
}

fn response(message: Message) -> WatchRevocationsFrame {
    WatchRevocationsFrame {
        message: Some(message),
    }
}

/// An entry read from the log, encoded for this subscriber (live entries come encoded).
fn event(entry: &mintgate_domain::model::RevocationRecord) -> Message {
    Message::Event(convert::revocation_event(entry).encode_to_vec().into())
}

fn fail(e: mintgate_domain::store::StoreError) -> Stop {
    Stop::Fail(e.into())
}
