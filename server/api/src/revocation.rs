//! `mintgate.v1.Revocation`: Revoke, CheckStatus and the WatchRevocations feed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use mintgate_domain::ports::Clock;
use mintgate_domain::service::{EXPIRY_SKEW, Mintgate, RevokeIdentityInput, RevokeInput};
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{Error, InputError};
use mintgate_proto::fanout::frame::Message;
use mintgate_proto::fanout::{WatchRevocationsFrame, revocation_server};
use mintgate_proto::v1;
use prost::Message as _;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::bundle::BundleFeed;
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
    pub(crate) bundle: BundleFeed,
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
        let now = self.clock.now();
        self.app
            .propose_unblock(&caller, &body.request_id, &body.spiffe_id)
            .await
            .map(|p| {
                Response::new(v1::UnblockIdentityResponse {
                    proposal: Some(convert::proposal(&p, p.status(now))),
                })
            })
            .map_err(|e| to_status(&e, "UnblockIdentity", &body.request_id))
    }

    #[tracing::instrument(name = "RevokeIssuer", skip_all, fields(request_id, caller))]
    async fn revoke_issuer(
        &self,
        request: Request<v1::RevokeIssuerRequest>,
    ) -> Result<Response<v1::RevokeIssuerResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let status = |e: Error| to_status(&e, "RevokeIssuer", &body.request_id);
        let reason = convert::revocation_reason(body.reason).map_err(|e| status(e.into()))?;
        let now = self.clock.now();
        self.app
            .propose_revoke_issuer(&caller, &body.request_id, &body.key_id, reason)
            .await
            .map(|p| {
                Response::new(v1::RevokeIssuerResponse {
                    proposal: Some(convert::proposal(&p, p.status(now))),
                })
            })
            .map_err(status)
    }

    type WatchTrustBundleStream =
        Pin<Box<dyn Stream<Item = Result<v1::TrustBundle, Status>> + Send>>;

    #[tracing::instrument(name = "WatchTrustBundle", skip_all, fields(caller))]
    async fn watch_trust_bundle(
        &self,
        request: Request<v1::WatchTrustBundleRequest>,
    ) -> Result<Response<Self::WatchTrustBundleStream>, Status> {
        let caller = caller(&request)?;
        let status = |e: Error| to_status(&e, "WatchTrustBundle", "");
        self.app.authorize_watch(&caller).await.map_err(status)?;
        let permit = self
            .hub
            .acquire_stream(caller.id.as_str())
            .map_err(status)?;
        // The current bundle first, then each change, until the server shuts down.
        let state = (self.bundle.subscribe(), self.hub.clone(), permit);
        let bundles = futures_util::stream::unfold(state, |(mut rx, hub, permit)| async move {
            tokio::select! {
                () = hub.closed() => None,
                changed = rx.changed() => {
                    changed.ok()?;
                    let bundle = (**rx.borrow_and_update()).clone();
                    Some((Ok(bundle), (rx, hub, permit)))
                }
            }
        });
        Ok(Response::new(Box::pin(bundles)))
    }

    #[tracing::instrument(name = "CheckStatus", skip_all, fields(caller))]
    async fn check_status(
        &self,
        request: Request<v1::CheckStatusRequest>,
    ) -> Result<Response<v1::CheckStatusResponse>, Status> {
        let caller = caller(&request)?;
        self.app
            .check_status(&caller, &request.into_inner().serials)
            .await
            .map(|r| Response::new(convert::status_report(r)))
            .map_err(|e| to_status(&e, "CheckStatus", ""))
    }

    type WatchRevocationsStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

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
        self.app.authorize_watch(&caller).await.map_err(status)?;
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
        let mut heartbeat = tokio::time::interval(self.hub.config().heartbeat);
        heartbeat.reset();
        let feed = Feed {
            app: self.app.clone(),
            hub: self.hub.clone(),
            clock: self.clock.clone(),
            span: tracing::Span::current(),
            cursor,
            phase: if cursor < bounds.pruned_through {
                Phase::Snapshot
            } else {
                Phase::CatchUp
            },
            pending: VecDeque::new(),
            live,
            heartbeat,
            ended: false,
            _permit: permit,
        };
        let frames = futures_util::stream::unfold(feed, Feed::next);
        Ok(Response::new(Box::pin(frames)))
    }
}

/// One subscriber's feed: replay from the database, then live events and heartbeats.
///
/// It is the response body itself, run by the task hyper keeps for the HTTP/2 stream: a live
/// event wakes that task, which frames it for h2, and nothing else per subscriber. Hyper polls it
/// only while the stream's flow-control window has room, so a subscriber that stops reading
/// holds nothing but this struct (the broadcast ring is shared); when it reads again and is more
/// than `subscriber_buffer` events behind, it is closed with `SUBSCRIBER_TOO_SLOW` and resumes
/// from its cursor.
struct Feed<S> {
    app: Arc<Mintgate<S>>,
    hub: Arc<RevocationHub>,
    clock: Arc<dyn Clock>,
    span: tracing::Span,
    /// Everything up to here has been sent or is in `pending`.
    cursor: i64,
    phase: Phase,
    /// Read from the database, not yet sent (at most one log batch).
    pending: VecDeque<Message>,
    live: broadcast::Receiver<Published>,
    heartbeat: tokio::time::Interval,
    /// The closing status was sent.
    ended: bool,
    _permit: StreamPermit,
}

enum Phase {
    /// The cursor is older than the retained log: send a snapshot first.
    Snapshot,
    /// Replaying the log from the database.
    CatchUp,
    /// Following the hub.
    Live,
}

/// Why a feed stops.
enum Stop {
    /// The server is going away with nothing more to say to this subscriber.
    Gone,
    /// Tell the subscriber why, then stop.
    Fail(Error),
}

impl<S: CertificateStore> Feed<S> {
    /// The next frame, or `None` once the feed has ended.
    async fn next(mut self) -> Option<(Item, Self)> {
        if self.ended {
            return None;
        }
        let span = self.span.clone();
        match self.next_message().instrument(span).await {
            Ok(message) => Some((Ok(response(message)), self)),
            Err(Stop::Gone) => None,
            Err(Stop::Fail(e)) => {
                self.ended = true;
                Some((Err(to_status(&e, "WatchRevocations", "")), self))
            }
        }
    }

    async fn next_message(&mut self) -> Result<Message, Stop> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(message);
            }
            // The database reads are boxed: hyper keeps this future for as long as the stream
            // lives, and unboxed they would size it for a sea-orm query all that time.
            match self.phase {
                Phase::Snapshot => {
                    self.phase = Phase::CatchUp;
                    return Box::pin(self.snapshot()).await;
                }
                Phase::CatchUp => {
                    if !Box::pin(self.read_log()).await? {
                        // Caught up: a heartbeat after the last replayed entry says so.
                        self.phase = Phase::Live;
                        self.pending.push_back(self.heartbeat_message());
                    }
                }
                Phase::Live => return self.follow().await,
            }
        }
    }

    /// Every revoked, unexpired certificate, for a subscriber whose cursor fell below the
    /// retained log. The feed continues after the newest entry the snapshot covers.
    async fn snapshot(&mut self) -> Result<Message, Stop> {
        let store = self.app.store();
        let head = store.revocation_bounds().await.map_err(fail)?.head;
        let entries = store
            .live_revocations(self.clock.now() - EXPIRY_SKEW)
            .await
            .map_err(fail)?;
        let as_of = entries.iter().map(|e| e.seq).fold(head, i64::max);
        self.cursor = as_of;
        Ok(Message::Snapshot(v1::Snapshot {
            entries: entries.iter().map(convert::revocation_event).collect(),
            as_of_seq: as_of,
        }))
    }

    /// Queues the next batch of logged entries after the cursor; whether there may be more.
    async fn read_log(&mut self) -> Result<bool, Stop> {
        let batch = self
            .app
            .store()
            .revocations_after(self.cursor, LOG_BATCH)
            .await
            .map_err(fail)?;
        for entry in &batch {
            self.pending.push_back(event(entry));
            self.cursor = entry.seq;
        }
        Ok(batch.len() as u64 == LOG_BATCH)
    }

    /// The next live event, or a heartbeat when idle.
    async fn follow(&mut self) -> Result<Message, Stop> {
        loop {
            let received = tokio::select! {
                () = self.hub.closed() => return Err(Stop::Fail(Error::ShuttingDown)),
                _ = self.heartbeat.tick() => return Ok(self.heartbeat_message()),
                received = self.live.recv() => received,
            };
            if self.hub.applied() - self.cursor > self.hub.config().subscriber_buffer as i64 {
                self.hub.metrics().subscriber_too_slow();
                return Err(Stop::Fail(Error::SubscriberTooSlow));
            }
            match received {
                Ok(entry) if entry.seq <= self.cursor => {}
                Ok(entry) if entry.seq == self.cursor + 1 => {
                    self.hub.metrics().propagated(entry.applied_at.elapsed());
                    self.cursor = entry.seq;
                    return Ok(Message::Event(entry.encoded));
                }
                // A gap (entries pruned before the hub read them) or our own lag behind the
                // hub's ring: the database has everything.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    Box::pin(self.read_log()).await?;
                    if let Some(message) = self.pending.pop_front() {
                        return Ok(message);
                    }
                }
                Err(RecvError::Closed) => return Err(Stop::Gone),
            }
        }
    }

    fn heartbeat_message(&self) -> Message {
        Message::Heartbeat(v1::Heartbeat {
            head_seq: self.cursor,
            server_time: Some(convert::timestamp(self.clock.now())),
        })
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
