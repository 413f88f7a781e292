//! The wire codec of the hub's services: prost's, except that a message
//! that does not decode is the sender's fault and says so.
//!
//! tonic's prost codec answers undecodable bytes (truncated fields, wrong
//! wire types, or nesting past prost's limit of 100 messages) with INTERNAL,
//! as gRPC's status-code table lists for "error parsing request proto".
//! We deviate on purpose: INTERNAL is the code for "the server is broken",
//! and an operator alerting on it (the `rpc` metrics count calls by code)
//! would be paged by any client sending garbage. The request is the fault,
//! so the answer is INVALID_ARGUMENT naming the message type that failed. The generated
//! clients use this codec too, where the decoded message is a response;
//! only a hub sending bytes its own prost encoder did not write could make
//! that fail.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Encodes `T`, decodes `U` (the generated code names it per RPC).
#[derive(Debug)]
pub struct HubCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for HubCodec<T, U> {
    fn default() -> Self {
        HubCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for HubCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = HubDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        HubDecoder {
            inner: self.inner.decoder(),
            message: PhantomData,
        }
    }
}

/// prost's decoder with its failures turned into INVALID_ARGUMENT.
#[derive(Debug)]
pub struct HubDecoder<U> {
    inner: ProstDecoder<U>,
    message: PhantomData<fn() -> U>,
}

impl<U: Message + Default> Decoder for HubDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let name = std::any::type_name::<U>();
        let name = name.rsplit("::").next().unwrap_or(name);
        // Count repeated fields on the wire first: a request of 4 MiB can
        // hold 270 000 map entries, which would cost every caller's
        // threads far more to decode than to refuse.
        if let Err(why) = crate::schema::check_repeated(
            name,
            bytes::Buf::chunk(buf),
            crate::schema::MAX_WIRE_ENTRIES,
        ) {
            return Err(Status::invalid_argument(why));
        }
        self.inner.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the message is not a valid {name}: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
