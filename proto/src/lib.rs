//! Mintgate's gRPC contract, package `mintgate.v1`, generated at build time.

/// `mintgate.v1`: Provisioning, Revocation, Admin.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mintgate.v1");
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no package: methods are
/// `/SpiffeWorkloadAPI/<Method>`), which the agent serves on a Unix socket.
pub mod spiffe {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The server side of `mintgate.v1.Revocation` as the server implements it: `WatchRevocations`
/// sends [`WatchRevocationsFrame`], which is wire-identical to `v1::WatchRevocationsResponse`
/// but carries each event already encoded. A revocation is thus encoded once, however many
/// subscribers hear it. Clients use `v1::revocation_client` as usual.
pub mod fanout {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/mintgate.v1.Revocation.rs"));

    /// `WatchRevocationsResponse` with the event pre-encoded (a length-delimited field is
    /// encoded the same whether it holds a message or its bytes).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchRevocationsFrame {
        #[prost(oneof = "frame::Message", tags = "1, 2, 3")]
        pub message: Option<frame::Message>,
    }

    pub mod frame {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Message {
            /// An encoded `v1::RevocationEvent`.
            #[prost(bytes = "bytes", tag = "1")]
            Event(prost::bytes::Bytes),
            #[prost(message, tag = "2")]
            Heartbeat(crate::v1::Heartbeat),
            #[prost(message, tag = "3")]
            Snapshot(crate::v1::Snapshot),
        }
    }
}

/// `ProstCodec` with small buffers, for every service here (server and client). tonic gives
/// each call an encode and a decode buffer of 8 KiB by default, and a response stream keeps its
/// encode buffer for as long as it lives. Mintgate's messages are a few hundred bytes to a few
/// KiB: a revocation feed's frames are small and mostly it sits idle (with thousands of
/// subscribers, 7.5 KiB each), and in a renewal storm tens of thousands of calls are open at
/// once. The buffers start at 512 bytes and grow as any `BytesMut` does for what is larger.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(tonic_prost::ProstCodec::new())
    }
}

/// Initial size of a call's encode and decode buffers.
const CALL_BUFFER: usize = 512;
/// tonic's default: encoded bytes gathered before they are handed to HTTP/2.
const YIELD_THRESHOLD: usize = 32 * 1024;

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Self::settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(Self::settings())
    }
}

impl<T, U> LeanCodec<T, U> {
    fn settings() -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(CALL_BUFFER, YIELD_THRESHOLD)
    }
}

/// The encoded `FileDescriptorSet` of `mintgate.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mintgate_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::fanout::{WatchRevocationsFrame, frame};
    use super::v1;

    #[test]
    fn a_frame_encodes_exactly_like_the_response_it_stands_for() {
        let event = v1::RevocationEvent {
            seq: 7,
            serial: "2e70".into(),
            spiffe_id: "spiffe://dev.mintgate.local/workload/web".into(),
            reason: v1::RevocationReason::KeyCompromise.into(),
            revoked_at: Some(prost_types::Timestamp {
                seconds: 1_795_630_261,
                nanos: 0,
            }),
            not_after: None,
            issuer_key_id: "7bfd".into(),
            issuer: false,
        };
        let frame = WatchRevocationsFrame {
            message: Some(frame::Message::Event(event.encode_to_vec().into())),
        };
        let response = v1::WatchRevocationsResponse {
            message: Some(v1::watch_revocations_response::Message::Event(event)),
        };
        assert_eq!(frame.encode_to_vec(), response.encode_to_vec());
        let decoded = v1::WatchRevocationsResponse::decode(frame.encode_to_vec().as_slice());
        assert_eq!(decoded.ok(), Some(response));
    }
}
