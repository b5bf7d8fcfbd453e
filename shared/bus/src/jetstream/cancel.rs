//! Cancellations over NATS: a gateway tells its region's nodes that an invocation was
//! cancelled with one core-NATS message on `fnmesh.v1.<region>.cancel`
//! ([`subjects::bus_cancel`]; every node subscribes, no queue group). The body is the id; the
//! message is signed with the gateway's work key over the cancel subject and the id (the
//! subject is in the signed envelope, so a cancellation can never pass for work, nor work for
//! a cancellation), valid for [`CANCEL_MAX_AGE`]. Nodes act only on messages a trusted
//! gateway signed; anything else is dropped and counted. NATS permissions let only gateways
//! publish there, and the edge's leaf link carries none.

use std::time::Duration;

use async_nats::header::HeaderMap;
use chrono::Utc;
use futures::StreamExt as _;

use super::{backend, JetStreamBus};
use crate::{BusError, CancelFeed};
use fnmesh_core::signing::{Envelope, Limits, Rejection, SIGNATURE_HEADER};
use fnmesh_core::subjects;
use fnmesh_core::InvocationId;

/// How long a cancellation message stays valid after it is signed (a replay of an old one is
/// refused past it).
pub(super) const CANCEL_MAX_AGE: Duration = Duration::from_secs(60);

impl JetStreamBus {
    /// [`crate::Bus::cancel`].
    pub(super) async fn send_cancel(&self, id: &InvocationId) -> Result<(), BusError> {
        let subject = subjects::bus_cancel(&self.inner.prefix);
        let body = id.to_string();
        let msg_id = subjects::invocation_msg_id(id);
        let limits = Limits {
            expires_at: Utc::now()
                .timestamp()
                .saturating_add(CANCEL_MAX_AGE.as_secs() as i64),
            max_attempts: 1,
        };
        let envelope = Envelope {
            subject: &subject,
            reply: None,
            msg_id: &msg_id,
            body: body.as_bytes(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            self.inner
                .signatures
                .signer
                .sign(&envelope, limits)
                .as_str(),
        );
        self.inner
            .client
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| backend("publishing a cancellation", e))
    }

    /// [`crate::Bus::follow_cancellations`].
    pub(super) async fn cancellations(&self) -> Result<CancelFeed, BusError> {
        let subject = subjects::bus_cancel(&self.inner.prefix);
        let subscriber = self
            .inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| backend("following cancellations", e))?;
        let bus = self.clone();
        let feed = subscriber.filter_map(move |message| {
            let checked = bus.check_cancel(&subject, message.headers.as_ref(), &message.payload);
            let bus = bus.clone();
            async move {
                match checked {
                    Ok(id) => Some(id),
                    Err(reason) => {
                        tracing::warn!(reason = reason.as_str(), "cancellation refused");
                        bus.inner.signatures.rejections.count(reason);
                        None
                    }
                }
            }
        });
        Ok(Box::pin(feed))
    }

    /// The id a cancellation message names, if a trusted gateway signed it and it has not
    /// expired.
    fn check_cancel(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<InvocationId, Rejection> {
        let id: InvocationId = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(Rejection::Invalid)?;
        let msg_id = subjects::invocation_msg_id(&id);
        let envelope = Envelope {
            subject,
            reply: None,
            msg_id: &msg_id,
            body: payload,
        };
        let header = headers
            .and_then(|h| h.get(SIGNATURE_HEADER))
            .map(|v| v.as_str());
        let limits = self.inner.signatures.trusted.verify(header, &envelope, 1)?;
        if limits.expired(Utc::now()) {
            return Err(Rejection::Invalid);
        }
        Ok(id)
    }
}
