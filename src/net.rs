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
