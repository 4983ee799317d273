//! The wire protocol of `proto/`: message types, the two codecs, and the
//! error and close codes. Only this module knows MessagePack.

pub mod codec;
pub mod codes;
pub mod message;
pub mod payload;

pub use codec::{Codec, DecodeError};
pub use codes::{CloseCode, ErrorCode};
pub use message::{ClientOp, Limits, ReqId, ServerEvent};
pub use payload::Data;
