//! An in-process gRPC feed on 127.0.0.1:0, for tests that drive it with scripted
//! verdicts and real clients. Stopped on drop.
use std::{net::SocketAddr, path::Path, sync::Arc, time::SystemTime};

use faultline::{Feed, FeedLimits, topology::Topology};
use tokio::{net::TcpListener, sync::oneshot};

pub struct FeedServer {
    pub feed: Feed,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl FeedServer {
    /// Serves a feed over the topology in `topology_text` (TOML). Call inside a tokio runtime.
    pub async fn start(topology_text: &str, limits: FeedLimits) -> Self {
        let topology = Topology::parse(Path::new("test-topology.toml"), topology_text)
            .expect("test topology parses");
        let feed = Feed::new("obs".into(), Arc::new(topology), SystemTime::now(), limits);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = feed.clone();
        tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("feed server runs");
        });
        Self {
            feed,
            addr,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
