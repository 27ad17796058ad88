//! Messages on QUIC streams: a length prefix checked before the body is read.

use baton_protocol::wire::{frame_len, Message};

use super::NetError;

pub async fn write_msg(send: &mut quinn::SendStream, msg: &Message) -> Result<(), NetError> {
    let frame = msg.encode_frame()?;
    send.write_all(&frame).await?;
    Ok(())
}

/// The next message, or `None` when the peer finished the stream between messages.
pub async fn read_msg(recv: &mut quinn::RecvStream) -> Result<Option<Message>, NetError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Read(e.to_string())),
    }
    let n = frame_len(prefix)?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| NetError::Read(e.to_string()))?;
    Ok(Some(Message::decode_body(&body)?))
}
