//! Arbitrary bytes as a target's answer to `GET /` (or `HEAD /` when the
//! first byte is odd; the head taken as bytes, `ResponseHeads::Raw`, when
//! its second bit is set): a loopback backend writes them and closes, and
//! `h1_upstream` parses the head and reads the body. Besides "never
//! panics, never hangs", it checks that a body never yields more bytes
//! than the target sent, and that a connection only goes back to the pool
//! when the response ended cleanly (a body read to its end without error).
#![no_main]

use bulkhead_proxy::h1_upstream::Pool;
use bulkhead_proxy::raw_head::ResponseHeads;
use bulkhead_proxy::upstream::ProxyBody;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

struct Backend {
    rt: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        Backend { rt, listener, addr }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, answer)) = data.split_first() else {
        return;
    };
    let b = backend();
    b.rt.block_on(async {
        let answer = answer.to_vec();
        let sent = answer.len();
        let serve = async {
            let (mut s, _) = b.listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
        };
        let pool = Arc::new(Pool::new(&b.addr.to_string(), Duration::from_secs(60), 4));
        let method = if flags & 1 == 1 { "HEAD" } else { "GET" };
        let heads = if flags & 2 == 2 {
            ResponseHeads::Raw
        } else {
            ResponseHeads::Map
        };
        let req = http::Request::builder()
            .method(method)
            .uri("/")
            .header("host", "fuzz.test")
            .body(ProxyBody::default())
            .expect("request");
        let exchange = async {
            let Ok(resp) = pool.send(req, b"", Duration::from_secs(1), heads).await else {
                return;
            };
            let collected = resp.into_body().collect().await;
            match collected {
                Ok(body) => assert!(body.to_bytes().len() <= sent, "more body than sent"),
                Err(_) => assert_eq!(pool.idle_count(), 0, "a failed body was pooled"),
            }
        };
        let both = async { tokio::join!(serve, exchange) };
        tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("the exchange hung");
    });
});
