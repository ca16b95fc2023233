//! TCP details shared by Baton's gRPC and Flight servers.

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// The connections accepted on `listener`, with Nagle's algorithm off.
///
/// tonic applies its own `tcp_nodelay` only to listeners it binds itself; on a listener
/// handed in, small replies (a task push, a status answer, a Flight batch's trailer) would
/// otherwise wait out the peer's delayed ACK, about 40 ms each.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// The connections accepted on `listener`, as [`incoming`] yields them, handed to
/// whichever server takes them from the returned receiver: several servers may serve
/// one port in turn (a standby scheduler's refusals, then the scheduler once elected).
/// Accepting stops when every receiver is gone.
pub fn handed_over(listener: TcpListener) -> async_channel::Receiver<std::io::Result<TcpStream>> {
    let (sender, receiver) = async_channel::bounded(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(incoming(listener));
        while let Some(connection) = accepted.next().await {
            if sender.send(connection).await.is_err() {
                return;
            }
        }
    });
    receiver
}
