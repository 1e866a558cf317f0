//! The TCP port: echoes bytes until the peer closes its write side, then
//! closes its own.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: TcpListener) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            match tokio::io::copy(&mut read, &mut write).await {
                Ok(bytes) => tracing::debug!(%peer, bytes, "tcp echo done"),
                Err(e) => tracing::debug!(%peer, error = %e, "tcp echo failed"),
            }
            let _ = write.shutdown().await;
        });
    }
}
