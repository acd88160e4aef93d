//! What the bridge's APIs share, below every transport: the error type with
//! its error object and HTTP status, and the RPC request body. `http` adds
//! the HTTP response; `nats` sends the same objects over request–reply.

mod error;
mod rpc;

pub use error::ApiError;
pub use rpc::{parse_rpc_body, RpcBody};
